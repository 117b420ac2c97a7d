"""The command line: list, oracle, and the errors users see."""

from __future__ import annotations

import json
import math

import mpmath
import pytest

from stabcheck.cli import main
from stabcheck.losses import loss_names


def run(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_list_shows_every_loss_and_format(capsys):
    status, out, _ = run(capsys, "list")
    assert status == 0
    for name in [*loss_names(), "float64", "float32", "float16", "bfloat16"]:
        assert name in out
    status, out, _ = run(capsys, "list", "--json")
    data = json.loads(out)
    assert [d["name"] for d in data["losses"]] == loss_names()


def test_oracle_json_gives_hex_value_digits_and_gradient(capsys):
    status, out, _ = run(
        capsys,
        "oracle",
        "sparse_softmax_cross_entropy_with_logits",
        "--predictions",
        "[[0, 0, 0]]",
        "--labels",
        "[2]",
        "--grad",
        "--json",
    )
    assert status == 0
    data = json.loads(out)
    ctx = mpmath.MPContext()
    ctx.dps = 60
    log3 = ctx.log(3)
    assert float.fromhex(data["value"]) == float(log3)  # normal range: float() rounds once
    assert data["decimal"][:31] == ctx.nstr(log3, 40)[:31]  # 30 significant digits
    third = float(ctx.mpf(1) / 3)
    two_thirds = float(ctx.mpf(-2) / 3)  # not third - 1, which rounds twice
    assert [float.fromhex(g) for g in data["gradient"][0]] == [third, third, two_thirds]


def test_oracle_resolves_the_float64_tie_upwards(capsys):
    _, out, _ = run(
        capsys,
        "oracle",
        "sparse_softmax_cross_entropy_with_logits",
        "--predictions",
        '[["0x1p60", -128]]',
        "--labels",
        "[1]",
        "--json",
    )
    assert float.fromhex(json.loads(out)["value"]) == 2.0**60 + 256


def test_oracle_human_output_and_pos_weight(capsys):
    status, out, _ = run(
        capsys,
        "oracle",
        "weighted_cross_entropy_with_logits",
        "--predictions",
        "[0]",
        "--labels",
        "[1]",
        "--pos-weight",
        "3",
        "--format",
        "bfloat16",
    )
    assert status == 0
    # q z log 2 = 3 log 2 = 2.0794..., bfloat16 has 8 bits: 2.078125
    assert "2.078125" in out and "exact     2.07944154" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["oracle", "softmax_crossentropy", "--predictions", "[1]", "--labels", "[1]"],
            "Did you mean",
        ),
        (
            ["oracle", "binary_crossentropy", "--predictions", "[1.5]", "--labels", "[1]"],
            "outside [0, 1]",
        ),
        (
            [
                "oracle",
                "binary_crossentropy",
                "--predictions",
                "[0.5]",
                "--labels",
                "[1]",
                "--format",
                "float8",
            ],
            "not a known format",
        ),
        (
            [
                "oracle",
                "weighted_cross_entropy_with_logits",
                "--predictions",
                "[1]",
                "--labels",
                "[1]",
            ],
            "needs pos_weight",
        ),
        (
            [
                "oracle",
                "sparse_softmax_cross_entropy_with_logits",
                "--predictions",
                "[[1, 2]]",
                "--labels",
                "[5]",
            ],
            "out of range",
        ),
        (
            ["oracle", "binary_crossentropy", "--predictions", '["x"]', "--labels", "[1]"],
            "not a number",
        ),
    ],
)
def test_oracle_bad_input_exits_2_with_a_clear_message(capsys, argv, message):
    status, _, err = run(capsys, *argv)
    assert status == 2
    assert message in err and "Traceback" not in err


def test_oracle_bad_json_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["oracle", "binary_crossentropy", "--predictions", "[0.3", "--labels", "[1]"])
    assert info.value.code == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_oracle_infinite_result(capsys):
    _, out, _ = run(
        capsys, "oracle", "binary_crossentropy", "--predictions", "[0]", "--labels", "[1]", "--json"
    )
    data = json.loads(out)
    assert data["value"] == "inf" and math.isinf(float(data["decimal"]))


def test_a_weighted_reproduction_line_replays(capsys):
    from stabcheck.case import Case

    case = Case.build("weighted_cross_entropy_with_logits", [0.5], [1.0], pos_weight=3.0)
    argv = case.cli().replace("'", "").split()[1:]  # the line as a shell would split it
    status, out, _ = run(capsys, *argv, "--json")
    ctx = mpmath.MPContext()
    ctx.dps = 50
    expected = float(3 * ctx.log1p(ctx.exp(-0.5)))  # q z log1p(exp(-x)), normal range
    assert status == 0 and float.fromhex(json.loads(out)["value"]) == expected
