#!/usr/bin/env python
"""Compare two audit reports measurement by measurement.

    scripts/compare_reports.py OLD_DIR NEW_DIR

Two measurements are the same measurement when they share implementation, loss, format,
regime, origin, case and quantity (and the element, ``index``, of a value). On every one
the two reports share, the status and the ULPs must be identical (NaN equal to NaN); the
script prints how many they share, how many each has alone (by origin), and every
difference (the first 20 of each kind), and exits 1 if there is one. Gradient rows name
the worst element of a row, which is compared whatever its index.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

KEY = ["implementation", "loss", "format", "regime", "origin", "case_id", "quantity"]
SHOWN = 20


def load(folder: Path) -> pd.DataFrame:
    parquet = folder / "measurements.parquet"
    if parquet.exists():
        frame = pd.read_parquet(parquet)
    else:
        from stabcheck.report import load_measurements

        frame = load_measurements(folder / "measurements.csv")
    # a value row is one element (its index); a gradient row is a row's worst element
    frame["element"] = np.where(frame["quantity"] == "value", frame["index"].astype(str), "")
    frame["occurrence"] = frame.groupby([*KEY, "element"]).cumcount()
    return frame


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    old, new = (load(Path(a)) for a in argv)
    key = [*KEY, "element", "occurrence"]
    both = old.merge(new, on=key, suffixes=("_old", "_new"), how="outer", indicator=True)
    shared = both[both["_merge"] == "both"]
    print(f"{len(shared)} measurements shared; {len(old)} in {argv[0]}, {len(new)} in {argv[1]}")
    for side, name in (("left_only", argv[0]), ("right_only", argv[1])):
        alone = both[both["_merge"] == side]
        origin = alone["origin"].value_counts().to_dict()
        print(f"only in {name}: {len(alone)} {origin}")
    failed = False
    for column in ("status", "ulps"):
        a, b = shared[f"{column}_old"], shared[f"{column}_new"]
        same = (a == b) | (a.isna() & b.isna())
        differ = shared[~same]
        print(f"{column}: {len(differ)} differ")
        if len(differ):
            failed = True
            shown = differ[[*KEY, "element", f"{column}_old", f"{column}_new"]].head(SHOWN)
            print(shown.to_string(index=False))
            counts = differ.groupby(["implementation", "format"]).size()
            print(counts.sort_values(ascending=False).head(SHOWN).to_string())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
