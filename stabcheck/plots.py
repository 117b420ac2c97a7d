"""Plots for a report, one PNG per implementation and loss, ``plots/IMPL__LOSS.png``.

Each answers two questions. Where does it fail? A status panel: regimes down, formats
across, values and gradients side by side; a cell's colour is the worst status of its
measurements (by ``SEVERITY``) and its number ``k/n`` says that ``k`` of its ``n``
measurements have that status (an ok cell shows ``n``). From where on? For the findings
whose onset was searched (``sweeps``), up to three onset panels: bits of error along the
searched parameter, one line per format, hard failures on a shaded ceiling band, the onset
marked with its value.

The statuses' colours are Okabe-Ito hues on a ladder of lightness (darker is worse), apart
for colour-blind readers and on greyscale print; each format keeps its colour, marker and
line style in every plot.
"""

from __future__ import annotations

import functools
import io
import textwrap
from collections.abc import Mapping, Set
from typing import TYPE_CHECKING, Any

from stabcheck._files import Writer
from stabcheck.formats import format_names
from stabcheck.measure import OK, SEVERITY

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, SubFigure

STATUS_COLOURS = {  # CIE lightness L* 95, 85, 71, 57, 45, 33, 19, 0
    "ok": "#e8f5e4",  # light green
    "inaccurate": "#e6d93c",  # yellow
    "underflow": "#e69f00",  # orange
    "overflow": "#e0661a",  # vermillion
    "clipped": "#a24a86",  # reddish purple
    "nan": "#004f8a",  # blue
    "error": "#2e2e2e",  # dark grey
    "timeout": "#000000",  # black
}
FORMAT_STYLES = {  # colour, marker, line style
    "float64": ("#0072b2", "o", "-"),
    "float32": ("#d55e00", "s", "--"),
    "float16": ("#009e73", "^", "-."),
    "bfloat16": ("#cc79a7", "D", ":"),
}
OTHER_FORMAT = ("#000000", "x", "-")
HATCHED = {"facecolor": "#d9d9d9", "hatch": "///", "edgecolor": "#808080"}  # unsupported
QUANTITIES = ("value", "gradient", "gradient[linear_weight]", "gradient[linear_bias]")
MAX_ONSETS = 3
FONT = 7  # points
DPI = 100
CELL = (0.62, 0.22)  # inches, width and height of a status cell
ONSET = (3.2, 2.4)  # inches, an onset panel
LEGEND = 1.3  # inches
LEGEND_STYLE = {"fontsize": FONT, "title_fontsize": FONT, "frameon": False}


def plots(
    frame: pd.DataFrame,
    sweeps: pd.DataFrame,
    unsupported: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, Writer]:
    """One PNG per implementation and loss of ``frame`` (the audit's measurements), by file
    name, with onset panels from ``sweeps`` (the findings' onset searches: finding,
    implementation, loss, quantity, format, parameter, x, bits, status, onset; may be
    empty) and the formats of ``unsupported`` (implementation -> format -> why) hatched
    where not measured. Empty without matplotlib or measurements. Drawn on Agg figures of
    their own, so pyplot's state is left alone; the same input gives the same bytes."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    except ImportError:
        return {}
    if frame.empty:
        return {}
    unsupported = unsupported or {}
    measured = set(frame["format"].unique())
    written: dict[str, Writer] = {}
    for (impl, loss), group in frame.groupby(["implementation", "loss"], sort=False):
        found = sweeps if sweeps.empty else sweeps[
            (sweeps["implementation"] == impl) & (sweeps["loss"] == loss)]  # fmt: skip
        skipped = set(unsupported.get(impl, {})) - set(group["format"].unique())
        fig = figure(group, found, _ordered(measured | skipped, format_names()), skipped)
        png = io.BytesIO()
        FigureCanvasAgg(fig)
        fig.savefig(png, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
        written[f"plots/{_safe(impl)}__{_safe(loss)}.png"] = (
            functools.partial(_write_bytes, png.getvalue()), True)  # fmt: skip
    return written


def status_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Per quantity, regime and format of ``frame``: the worst ``status``, the ``count`` of
    measurements with it, their ``total`` and the cell's ``label`` (``count/total``, or
    ``total`` where all are ok)."""
    keys = ["quantity", "regime", "format"]
    severity = frame["status"].map(SEVERITY)
    worst = severity.groupby([frame[k] for k in keys], sort=False).transform("max")
    cells = (
        frame[keys]
        .assign(severity=worst, count=severity.eq(worst))
        .groupby(keys, sort=False)
        .agg(severity=("severity", "first"), count=("count", "sum"), total=("count", "size"))
    )
    cells["status"] = cells["severity"].map({v: k for k, v in SEVERITY.items()})
    cells["label"] = [
        str(total) if status == OK else f"{count}/{total}"
        for status, count, total in zip(cells["status"], cells["count"], cells["total"])
    ]
    return cells.drop(columns="severity")


def onset_order(sweeps: pd.DataFrame) -> list[str]:
    """The findings of ``sweeps``, those with the most hard failures, then the most
    points, first (ties by ID)."""
    import numpy as np

    hard = ~np.isfinite(sweeps["bits"].to_numpy(dtype=float))
    counts = sweeps.assign(hard=hard).groupby("finding")["hard"].agg(["sum", "size"])
    ranked = sorted(counts.itertuples(), key=lambda r: (-r.sum, -r.size, str(r.Index)))
    return [r.Index for r in ranked]


# -- drawing ------------------------------------------------------------------------------


def figure(
    group: pd.DataFrame, sweeps: pd.DataFrame, formats: list[str],
    unsupported: Set[str] = frozenset(),
) -> Figure:  # fmt: skip
    """The figure of one implementation and loss: ``group``, their measurements, in the
    columns ``formats`` (those of ``unsupported`` hatched), over the onset searches
    ``sweeps`` of their findings; sized from its content."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from stabcheck.strategies import regime_names

    cells = status_cells(group)
    quantities = _ordered(set(group["quantity"].unique()), QUANTITIES)
    regimes = _ordered(set(group["regime"].unique()), regime_names())
    findings = [] if sweeps.empty else onset_order(sweeps)[:MAX_ONSETS]
    label = max(len(r) for r in regimes) * 0.055 + 0.2
    panel = max(len(formats) * CELL[0], max(len(q) for q in quantities) * 0.07)
    width = max(label + len(quantities) * (panel + 0.2) + LEGEND, len(findings) * ONSET[0], 3.5)
    status = 1.4 + len(regimes) * CELL[1]
    fig = Figure(figsize=(width, status + (ONSET[1] if findings else 0)), dpi=DPI,
                 layout="constrained")  # fmt: skip
    title = f"{group['implementation'].iloc[0]} · {group['loss'].iloc[0]}"
    fig.suptitle(title, fontsize=FONT + 2)
    if not findings:
        _status_row(fig.subfigures(1, 1), cells, quantities, regimes, formats, unsupported, width)
        return fig
    top, bottom = fig.subfigures(2, 1, height_ratios=[status, ONSET[1]])
    _status_row(top, cells, quantities, regimes, formats, unsupported, width)
    for ax, finding in zip(bottom.subplots(1, len(findings), squeeze=False)[0], findings):
        _onset_panel(ax, finding, sweeps[sweeps["finding"] == finding])
    shown = _ordered(set(sweeps[sweeps["finding"].isin(findings)]["format"]), format_names())
    bottom.legend(handles=[Line2D([], [], label=f, **_style(f)) for f in shown],
                  loc="outside right upper", title="format", **LEGEND_STYLE)  # fmt: skip
    return fig


def _status_row(
    fig: SubFigure, cells: pd.DataFrame, quantities: list[str], regimes: list[str],
    formats: list[str], unsupported: Set[str], width: float,
) -> None:  # fmt: skip
    """The status panels, one per quantity, their legend and the caption saying what the
    colours and numbers mean, wrapped to ``width`` inches."""
    from matplotlib.patches import Rectangle

    axes = fig.subplots(1, len(quantities), sharey=True, squeeze=False)[0]
    for ax, quantity in zip(axes, quantities):
        _status_panel(ax, quantity, cells.loc[quantity], regimes, formats, unsupported)
    handles = [Rectangle((0, 0), 1, 1, facecolor=STATUS_COLOURS[s], edgecolor="#808080",
                         linewidth=0.5, label=s)
               for s in SEVERITY if s in set(cells["status"])]  # fmt: skip
    notes = ["Colour: the worst status of the cell's measurements. Number k/n: k of its n "
             "measurements have that status; an ok cell shows n."]  # fmt: skip
    if unsupported & set(formats):
        handles.append(Rectangle((0, 0), 1, 1, linewidth=0.5, label="unsupported", **HATCHED))
    if len(cells) < len(quantities) * len(regimes) * len(set(formats) - unsupported):
        notes.append("–: not measured.")
    fig.legend(handles=handles, loc="outside right upper", title="worst status", **LEGEND_STYLE)
    caption = textwrap.fill(" ".join(notes), max(40, int((width - LEGEND) * 19)))
    fig.supxlabel(caption, fontsize=FONT, x=0.02, ha="left", color="#333333")


def _status_panel(
    ax: Axes, quantity: str, cells: pd.DataFrame, regimes: list[str], formats: list[str],
    unsupported: Set[str],
) -> None:  # fmt: skip
    """Worst status (colour) and ``k/n`` (text) per regime (row) and format (column)."""
    from matplotlib.colors import to_rgb
    from matplotlib.patches import Rectangle

    grid = [[(1.0, 1.0, 1.0)] * len(formats) for _ in regimes]
    for row in range(len(regimes)):
        for col, fmt in enumerate(formats):
            if fmt not in unsupported and (regimes[row], fmt) not in cells.index:
                ax.text(col, row, "–", ha="center", va="center", fontsize=FONT, color="#808080")
    for (regime, fmt), cell in cells.iterrows():
        row, col = regimes.index(regime), formats.index(fmt)
        colour = STATUS_COLOURS[cell["status"]]
        grid[row][col] = to_rgb(colour)
        ax.text(col, row, cell["label"], ha="center", va="center", fontsize=FONT,
                color=_ink(colour), alpha=0.6 if cell["status"] == OK else 1.0)  # fmt: skip
    ax.imshow(grid, aspect="auto", interpolation="nearest")
    for col, fmt in enumerate(formats):
        if fmt in unsupported:
            ax.add_patch(Rectangle((col - 0.5, -0.5), 1, len(regimes), linewidth=0, **HATCHED))
            box = {"facecolor": HATCHED["facecolor"], "edgecolor": "none", "pad": 1}
            ax.text(col, (len(regimes) - 1) / 2, "unsupported", ha="center", va="center",
                    fontsize=FONT, rotation=90 if len(regimes) > 3 else 0, bbox=box)  # fmt: skip
    ax.set_xticks(range(len(formats)), formats, fontsize=FONT)
    ax.set_yticks(range(len(regimes)), regimes, fontsize=FONT)
    ax.set_xticks([i + 0.5 for i in range(len(formats) - 1)], minor=True)
    ax.set_yticks([i + 0.5 for i in range(len(regimes) - 1)], minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="both", length=0)
    ax.set_title(quantity, fontsize=FONT + 1)


def _onset_panel(ax: Axes, finding: str, sweep: pd.DataFrame) -> None:
    """Bits of error along the parameter, one line per format, failures on the ceiling."""
    import numpy as np

    sweep = sweep[np.isfinite(sweep["x"].to_numpy(dtype=float))]  # a gap past the range: inf
    if sweep.empty:
        ax.set_axis_off()
        return
    signed_log = _signed_log(sweep["x"].to_numpy(dtype=float))
    if signed_log:  # both signs over many decades: symlog overflows matplotlib's inverse
        sweep = sweep.assign(x=np.sign(sweep["x"]) * np.log10(1 + np.abs(sweep["x"])))
    bits = sweep["bits"].to_numpy(dtype=float)
    hard = ~np.isfinite(bits)
    top = max(float(bits[~hard].max()) if (~hard).any() else 0.0, 1.0)
    ceiling, band = top * 1.3 + 2, top * 0.12 + 1
    onsets = []
    for fmt in _ordered(set(sweep["format"]), format_names()):
        points = sweep[sweep["format"] == fmt].sort_values("x", kind="stable")
        y = points["bits"].where(np.isfinite(points["bits"].to_numpy(dtype=float)), ceiling)
        style = _style(fmt)
        ax.plot(points["x"], y, **style)
        colour = style["color"]
        first = points["onset"].astype(bool)
        onsets += [(x, at, colour) for x, at in zip(points["x"][first], y[first])]
    if not signed_log:
        _x_scale(ax, sweep["x"].to_numpy(dtype=float))
    for i, (x, y, colour) in enumerate(onsets):
        ax.plot([x], [y], marker="o", markersize=10, markerfacecolor="none", color=colour,
                markeredgewidth=1.5)  # fmt: skip
        rightward = _position(ax, x) < 0.6
        shown = np.sign(x) * (10 ** abs(x) - 1) if signed_log else x
        ax.annotate(f"onset {shown:.4g}", (x, y), textcoords="offset points",
                    xytext=(8 if rightward else -8, (1 if y < ceiling / 2 else -1) * (10 + 11 * i)),
                    ha="left" if rightward else "right", va="center", fontsize=FONT,
                    color=colour, arrowprops={"arrowstyle": "-", "color": colour, "lw": 0.6},
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8,
                          "pad": 0.5})  # fmt: skip
    ticks = [t for t in ax.get_yticks() if 0 <= t <= top * 1.05]
    labels = [f"{t:g}" for t in ticks]
    if hard.any():
        ax.axhspan(ceiling - band / 2, ceiling + band / 2, color="#e6e6e6", zorder=0)
        ticks.append(ceiling)
        labels.append("\n".join(dict.fromkeys(sweep["status"][hard])))
    ax.set_yticks(ticks, labels)
    low = float(np.min(bits[~hard], initial=0.0))
    ax.set_ylim(min(0.0, low) - top * 0.05, (ceiling + band) if hard.any() else top * 1.1)
    name = str(sweep["parameter"].iloc[0])
    ax.set_xlabel(f"sign x log10(1 + |{name}|)" if signed_log else name, fontsize=FONT)
    ax.set_ylabel("bits of error", fontsize=FONT)
    ax.tick_params(labelsize=FONT)
    ax.set_title(f"{finding}: {', '.join(dict.fromkeys(sweep['quantity']))}", fontsize=FONT + 1)
    ax.grid(color="#eeeeee", linewidth=0.5)


def _style(fmt: str) -> dict[str, Any]:
    """The colour, marker and line style of ``fmt``, the same in every plot."""
    colour, marker, line = FORMAT_STYLES.get(fmt, OTHER_FORMAT)
    return {"color": colour, "marker": marker, "linestyle": line, "markersize": 3,
            "linewidth": 1.2}  # fmt: skip


MAX_TICKS = 6  # on a log axis that spans many decades, one label per few of them


def _wide(x: Any) -> bool:
    """Whether the nonzero ``x`` span two decades or more."""
    import numpy as np

    magnitudes = np.abs(x[np.isfinite(x) & (x != 0)])
    return bool(magnitudes.size) and magnitudes.max() / magnitudes.min() >= 100


def _signed_log(x: Any) -> bool:
    """Whether ``x`` needs sign(x) log10(1 + |x|): many decades, both signs."""

    return _wide(x) and bool((x < 0).any())


def _x_scale(ax: Axes, x: Any) -> None:
    """Log where positive ``x`` span two decades or more, else linear."""
    import numpy as np

    x = x[np.isfinite(x)]
    magnitudes = np.abs(x[x != 0])
    if _wide(x) and (x > 0).all():
        ax.set_xscale("log")
        left, right = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if left <= t <= right
                 and (t == 0 or abs(t) >= magnitudes.min())]  # fmt: skip
        ax.set_xticks(ticks[:: -(-len(ticks) // MAX_TICKS)])  # at most MAX_TICKS, readable


def _position(ax: Axes, x: float) -> float:
    """Where ``x`` falls between the axis limits, 0 to 1, in the axis's own scale."""
    import numpy as np

    lo, hi, at = ax.xaxis.get_transform().transform([*ax.get_xlim(), x])
    if hi == lo:
        return 0.5
    with np.errstate(over="ignore", invalid="ignore"):  # limits near the float range
        where = (at - lo) / (hi - lo)
    return float(where) if np.isfinite(where) else 0.5


def _ink(colour: str) -> str:
    """Black or white text, whichever stands out on ``colour`` (WCAG luminance)."""
    from matplotlib.colors import to_rgb

    channels = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
                for c in to_rgb(colour)]  # fmt: skip
    luminance = 0.2126 * channels[0] + 0.7152 * channels[1] + 0.0722 * channels[2]
    return "black" if luminance > 0.179 else "white"


def _ordered(names: set[str], order: Any) -> list[str]:
    """``names`` in the order of ``order``, the others after them sorted."""
    known = [n for n in order if n in names]
    return known + sorted(names - set(known))


def _safe(name: str) -> str:
    return str(name).replace(":", "_").replace("/", "_")


def _write_bytes(data: bytes, f: Any) -> None:
    f.write(data)
