"""Plots: one PNG per implementation and loss, cells whose number means what their colour
does, onset panels only where there was a search, the same bytes for the same input."""

from __future__ import annotations

import io
import math
import sys

import numpy as np
import pandas as pd
import pytest

from stabcheck.audit import COLUMNS
from stabcheck.measure import SEVERITY
from stabcheck.plots import figure, onset_order, plots, status_cells

pytest.importorskip("matplotlib")

SIGMOID = "sigmoid_cross_entropy_with_logits"
SWEEP_COLUMNS = ["finding", "implementation", "loss", "quantity", "format", "parameter", "x",
                 "bits", "status", "onset"]  # fmt: skip


def measurement(**fields):
    row = dict.fromkeys(COLUMNS, "")
    row.update(implementation="naive", library="stabcheck", loss=SIGMOID, format="float32",
               regime="moderate", case_id="c0", quantity="value", index="0", status="ok",
               ulps=0.0, bits=0.0, relative_error=0.0, condition=1.0, exact=1.0,
               expected=1.0, got=1.0, finding="")  # fmt: skip
    row.update(fields)
    if row["status"] != "ok":
        row["finding"] = row["finding"] or f"F-{row['status']}"
    return row


def measurements(statuses, **fields):
    return pd.DataFrame([measurement(status=s, **fields) for s in statuses])


def naive_sigmoid_sweep(fmt="float32", finding="SC-1"):
    """-log(1 / (1 + exp(-x))) at label 1 along x: exact to the last bits until exp(-x)
    overflows (x below -88.7 in float32), then inf where the loss is finite."""
    dtype = np.dtype(fmt)
    xs = np.linspace(-100, -80, 21).astype(dtype)
    with np.errstate(over="ignore", divide="ignore"):
        got = -np.log(dtype.type(1) / (1 + np.exp(-xs)))
    status = np.where(np.isinf(got), "overflow", "ok")
    onset = (status == "overflow") & (xs == xs[status == "overflow"].max(initial=-np.inf))
    return pd.DataFrame({"finding": finding, "implementation": "naive", "loss": SIGMOID,
                         "quantity": "value", "format": fmt, "parameter": "logit",
                         "x": xs.astype(float), "bits": np.where(np.isinf(got), math.inf, 0.0),
                         "status": status, "onset": onset})  # fmt: skip


def texts(fig):
    return [t.get_text() for sub in fig.subfigs for ax in sub.axes for t in ax.texts]


def test_one_png_per_implementation_and_loss():
    frame = pd.concat([
        measurements(["ok", "nan"]),
        measurements(["ok"], loss="binary_crossentropy"),
        measurements(["inaccurate"], implementation="mod:fn/v2", format="float16"),
    ])  # fmt: skip
    files = plots(frame, naive_sigmoid_sweep())
    assert set(files) == {f"plots/naive__{SIGMOID}.png", "plots/naive__binary_crossentropy.png",
                          f"plots/mod_fn_v2__{SIGMOID}.png"}  # fmt: skip
    for write, binary in files.values():
        out = io.BytesIO()
        write(out)
        assert binary and out.getvalue()[:4] == b"\x89PNG"


def test_a_cells_number_counts_its_worst_status():
    rng = np.random.default_rng(0)
    statuses = list(SEVERITY)
    frame = pd.DataFrame([
        measurement(status=statuses[min(int(rng.geometric(0.5)) - 1, 7)],
                    regime=str(rng.choice(["moderate", "tiny", "infinite"])),
                    format=str(rng.choice(["float64", "float16"])),
                    quantity=str(rng.choice(["value", "gradient"])))
        for _ in range(400)
    ])  # fmt: skip
    cells = status_cells(frame)
    assert len(cells) == frame.groupby(["quantity", "regime", "format"]).ngroups
    for (quantity, regime, fmt), cell in cells.iterrows():
        part = frame[(frame["quantity"] == quantity) & (frame["regime"] == regime)
                     & (frame["format"] == fmt)]["status"]  # fmt: skip
        worst = max(part, key=SEVERITY.__getitem__)
        count = int((part == worst).sum())
        assert (cell["status"], cell["count"], cell["total"]) == (worst, count, len(part))
        assert cell["label"] == (str(len(part)) if worst == "ok" else f"{count}/{len(part)}")


def test_cells_label_the_worst_status_not_the_bits():
    frame = pd.concat([
        measurements(["ok", "inaccurate", "inaccurate", "nan"], bits=52.0),
        measurements(["ok"] * 3, regime="tiny"),
        measurements(["error"], regime="tiny", quantity="gradient", bits=math.nan),
    ])  # fmt: skip
    cells = status_cells(frame)
    assert cells.loc[("value", "moderate", "float32"), ["status", "label"]].tolist() == [
        "nan", "1/4"]  # fmt: skip
    assert cells.loc[("value", "tiny", "float32"), "label"] == "3"
    assert cells.loc[("gradient", "tiny", "float32"), "label"] == "1/1"
    fig = figure(frame, pd.DataFrame(), ["float32"])
    assert {"1/4", "3", "1/1"} <= set(texts(fig))
    legend = fig.subfigs[0].legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["ok", "nan", "error"]  # worst ones only


def test_an_unsupported_format_is_a_hatched_column():
    frame = measurements(["ok", "underflow"], implementation="scipy.logsumexp")
    files = plots(frame, pd.DataFrame(), {"scipy.logsumexp": {"bfloat16": "no bfloat16"}})
    assert list(files) == [f"plots/scipy.logsumexp__{SIGMOID}.png"]
    fig = figure(frame, pd.DataFrame(), ["float32", "bfloat16"], {"bfloat16"})
    (ax,) = fig.subfigs[0].axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["float32", "bfloat16"]
    assert "unsupported" in texts(fig)
    assert any(p.get_hatch() for p in ax.patches)
    legend = fig.subfigs[0].legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["underflow", "unsupported"]
    assert "–" not in texts(fig)  # unsupported is not "not measured"


def test_an_onset_panel_only_where_sweeps_has_rows():
    frame = pd.concat([measurements(["ok", "overflow"]),
                       measurements(["nan"], implementation="stable")])  # fmt: skip
    sweeps = pd.concat([naive_sigmoid_sweep("float32"), naive_sigmoid_sweep("float64")])
    with_search = figure(frame[frame["implementation"] == "naive"], sweeps, ["float32"])
    without = figure(frame[frame["implementation"] == "stable"], sweeps.iloc[:0], ["float32"])
    assert len(with_search.subfigs) == 2 and len(without.subfigs) == 1
    (ax,) = with_search.subfigs[1].axes
    assert ax.get_title() == "SC-1: value" and ax.get_xlabel() == "logit"
    assert ax.get_yticklabels()[-1].get_text() == "overflow"  # the ceiling band
    assert [t.get_text() for t in ax.texts] == ["onset -89"]  # float64 never overflows here
    legend = with_search.subfigs[1].legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["float64", "float32"]


def test_onset_panels_hard_failures_first_three_at_most():
    sweeps = pd.concat([
        naive_sigmoid_sweep(finding="A").assign(bits=1.0, status="inaccurate"),
        naive_sigmoid_sweep(finding="B"),
        naive_sigmoid_sweep(finding="C").iloc[:15],
        naive_sigmoid_sweep(finding="D").iloc[:5],
    ])  # fmt: skip
    assert onset_order(sweeps) == ["B", "C", "D", "A"]
    fig = figure(measurements(["overflow"]), sweeps, ["float32"])
    assert [ax.get_title() for ax in fig.subfigs[1].axes] == [
        "B: value", "C: value", "D: value"]  # fmt: skip


def test_same_input_same_bytes():
    frame = measurements(["ok", "nan", "inaccurate"])
    first, second = plots(frame, naive_sigmoid_sweep()), plots(frame, naive_sigmoid_sweep())
    for name in first:
        a, b = io.BytesIO(), io.BytesIO()
        first[name][0](a)
        second[name][0](b)
        assert a.getvalue() == b.getvalue()


@pytest.mark.parametrize("bits", [math.nan, math.inf, -math.inf])
def test_degenerate_inputs_draw(bits):
    only_errors = measurements(["error", "error"], bits=math.nan, ulps=math.nan)
    sweeps = naive_sigmoid_sweep().assign(bits=bits, status="error")
    mixed = naive_sigmoid_sweep().assign(bits=lambda s: s["bits"].where(s["x"] < -90, bits))
    for sweep in (sweeps, mixed, pd.DataFrame(columns=SWEEP_COLUMNS), pd.DataFrame()):
        ((write, _),) = plots(only_errors, sweep).values()
        out = io.BytesIO()
        write(out)
        assert out.getvalue()[:4] == b"\x89PNG"


def test_nothing_without_measurements_or_matplotlib(monkeypatch):
    assert plots(measurements([]), pd.DataFrame()) == {}
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    assert plots(measurements(["ok"]), pd.DataFrame()) == {}


def test_a_parameter_over_many_decades_of_both_signs_is_drawn_on_a_signed_log_axis():
    """Logit gaps from -1e300 to past float64's range (inf, left out): symlog would overflow
    matplotlib's inverse transform and leave the panel empty."""
    sweep = naive_sigmoid_sweep("float64").assign(
        x=[-1e300, *np.logspace(-3, 300, 19), math.inf], parameter="logit gap"
    )  # fmt: skip
    fig = figure(measurements(["overflow"]), sweep, ["float32"])
    (ax,) = fig.subfigs[1].axes
    assert ax.get_xlabel() == "sign x log10(1 + |logit gap|)"
    low, high = ax.get_xlim()
    assert low < -250 and 250 < high < 400  # the points, in log10 units, inf left out
