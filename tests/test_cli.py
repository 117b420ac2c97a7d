"""The command line: list, oracle, and the errors users see."""

from __future__ import annotations

import json
import math
import os
import time

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


# -- bad input: each is exit 2 and a message naming the argument, the value and the fix ---

USER_MODULE = '''
import os, sys, time
import numpy as np

def fine(p, z):
    return -(z * np.log(p) + (1 - z) * np.log1p(-p))


def linear_by_position(h, labels, W):
    return np.zeros(len(h))
'''
BAD_MODULES = {
    "exits_at_import": "import sys\nprint('needs a GPU')\nsys.exit(0)\n",
    "os_exits_at_import": "import os\nos._exit(7)\n",
    "hangs_at_import": "import time\ntime.sleep(600)\n",
    "raises_at_import": "raise RuntimeError('no config')\n",
}


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    (tmp_path / "cli_losses.py").write_text(USER_MODULE)
    for name, text in BAD_MODULES.items():
        (tmp_path / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("x")
    return tmp_path


BCE = ["--loss", "binary_crossentropy", "--format", "float32", "--regime", "moderate",
       "--examples", "1", "--search", "0"]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--timeout", "inf", *BCE], ["timeout=inf", "at most 604800", "e.g. 60"]),
        (["--timeout", "1e12", *BCE], ["timeout=1000000000000.0", "at most"]),
        (["--timeout", "nan", *BCE], ["timeout=nan"]),
        (["--timeout", "0", *BCE], ["timeout=0.0", "above 0"]),
        (["--max-ulps", "inf", *BCE], ["max_ulps=inf", "finite"]),
        ([*BCE, "--examples", "0"], ["examples=0", "positive integer"]),
        (["--jobs", "0", *BCE], ["jobs=0", "positive number of processes"]),
        (["--search", "-1", *BCE[:-2]], ["search=-1", "non-negative"]),
        (["--loss", "softmax", "--format", "float32"], ["loss='softmax'", "Valid losses"]),
        (["--format", "float8", "--loss", "binary_crossentropy"], ["float8", "not a known"]),
        (["--loss", "softmax_cross_entropy_with_logits", "--regime", "pos_weight"],
         ["losses='softmax_cross_entropy_with_logits'", "none of the selected regimes",
          "its regimes: moderate"]),
        (["--regime", "pos_weight", "--loss", "binary_crossentropy", "--loss",
          "weighted_cross_entropy_with_logits", "--format", "float32"],
         ["losses='binary_crossentropy'", "none of the selected regimes"]),
        (["--impl", "sklearn.log_loss", "--loss", "softmax_cross_entropy_with_logits"],
         ["implementations='sklearn.log_loss'", "implements none", "binary_crossentropy"]),
        (["--impl", "cli_losses:fine", "--format", "float32"],
         ["implementations='cli_losses:fine'", "say which loss", "--loss NAME"]),
        (["--impl", "cli_losses:fine", "--grad", *BCE],
         ["grad=True", "cli_losses:fine", "numpy has no autodiff", "drop --grad", "grad_fn"]),
        (["--impl", "cli_losses:nope", *BCE], ["cli_losses:nope", "has no attribute 'nope'"]),
        (["--impl", "exits_at_import:f", *BCE],
         ["exits_at_import:f", "called sys.exit(0)", "needs a GPU", "import without exiting"]),
        (["--impl", "os_exits_at_import:f", *BCE],
         ["os_exits_at_import:f", "exit code 7", "import without exiting"]),
        (["--impl", "hangs_at_import:f", "--timeout", "1", *BCE],
         ["hangs_at_import:f", "did not finish within 1 s", "raise --timeout"]),
        (["--impl", "raises_at_import:f", *BCE], ["RuntimeError: no config"]),
        (["--impl", "a:b:c", *BCE], ["'a:b:c'", "package.module:function"]),
        (["--impl", "cli_losses:linear_by_position", "--loss", "linear_cross_entropy"],
         ["takes (h, labels, W)", "linear_weight=W", "name the function's parameters "
          "linear_weight and linear_bias"]),
        ([*BCE, "--out", ""], ["--out=''", "empty"]),
        ([*BCE, "--out", "a_file"], ["--out='a_file'", "is a file", "give a directory"]),
        ([*BCE, "--out", "a_file/sub"], ["--out='a_file/sub'", "cannot be used"]),
    ],
)  # fmt: skip
def test_bad_audit_input_exits_2_before_measuring(user_code, capsys, argv, words):
    if "--out" not in argv:
        argv = [*argv, "--out", "report"]
    started = time.monotonic()
    status, _, err = run(capsys, "audit", *argv)
    assert status == 2, err
    for word in words:
        assert word in err, (word, err)
    assert "Traceback" not in err
    assert not (user_code / "report" / "measurements.csv").exists()
    assert time.monotonic() - started < 20


def test_repeated_names_are_measured_once(user_code, capsys):
    once = ["--impl", "naive", "--loss", "binary_crossentropy", "--format", "float32"]
    twice = [*once, "--impl", "naive", "--loss", "log_loss", "--format", "f32"]
    for argv, out in ((once, "once"), (twice, "twice")):
        assert run(capsys, "audit", *argv, *BCE[4:], "--out", out)[0] == 0
    from stabcheck.report import load_measurements

    assert load_measurements("once/measurements.csv").equals(
        load_measurements("twice/measurements.csv")
    )


def test_an_implementation_that_prints_is_measured_and_quoted(user_code, capsys):
    (user_code / "noisy.py").write_text(
        "import sys\nimport numpy as np\n"
        "def loud(p, z):\n    print('x' * 200_000)\n    return -(z * np.log(p))\n"
        "def fails(p, z):\n    print('bad config')\n    raise ValueError('no')\n"
    )
    argv = ["audit", "--impl", "noisy:loud", "--impl", "noisy:fails", *BCE, "--out", "r"]
    status, out, err = run(capsys, *argv)
    assert status == 0 and "x" * 100 not in out + err
    from stabcheck.report import load_measurements

    frame = load_measurements("r/measurements.csv")
    loud, fails = (frame[frame["implementation"] == n] for n in ("noisy:loud", "noisy:fails"))
    assert "error" not in set(loud["status"]) and len(loud)
    assert set(fails["status"]) == {"error"}
    assert fails["note"].str.contains("ValueError: no (it printed: bad config)", regex=False).all()


def test_an_implementation_that_prints_to_an_unread_pipe_is_not_stalled(user_code):
    import subprocess
    import sys

    (user_code / "chatty.py").write_text(
        "import numpy as np\n"
        "def loss(p, z):\n    print('x' * 300_000)\n"
        "    return -(z * np.log(p) + (1 - z) * np.log1p(-p))\n"
    )  # more than a pipe holds: before its output went to a file, it blocked until the timeout
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(user_code), *sys.path])}
    process = subprocess.Popen(
        [sys.executable, "-m", "stabcheck.cli", "audit", "--impl", "chatty:loss", *BCE,
         "--timeout", "5", "--out", "r"],
        cwd=user_code, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert process.wait(timeout=120) == 0  # the pipe is never read
    from stabcheck.report import load_measurements

    statuses = set(load_measurements(user_code / "r/measurements.csv")["status"])
    assert statuses and not statuses & {"timeout", "error"}


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["binary_crossentropy", "--predictions", '["0x1p99999"]', "--labels", "[1]"],
         ["'0x1p99999' is beyond float64", "write 'inf'"]),
        (["binary_crossentropy", "--predictions", "[0.5]", "--labels", "[1]", "--digits", "0"],
         ["--digits=0", "from 1 to 10000"]),
        (["binary_crossentropy", "--predictions", "[0.5]", "--labels", "[1]", "--digits",
          "1000000"], ["--digits=1000000"]),
        (["binary_crossentropy", "--labels", "[1]"], ["--predictions is missing", "--case"]),
        (["--predictions", "[0.5]", "--labels", "[1]"], ["LOSS is missing"]),
        (["--case", '{"loss": "binary_crossentropy"}'], ["the case has no 'predictions'"]),
        (["--case", "[1, 2]"], ["a case is a JSON object, not a list"]),
        (["binary_crossentropy", "--case", '{"loss": "x"}'], ["drop loss"]),
        (["sparse_softmax_cross_entropy_with_logits", "--predictions", "[[0, 1]]", "--labels",
          "[NaN]"], ["labels[0]=nan", "integer class index"]),
        (["categorical_crossentropy", "--predictions", "[[0.5, 0.5]]", "--labels", "[[NaN, 1]]"],
         ["labels[0, 0]=nan", "must not be NaN"]),
    ],
)  # fmt: skip
def test_bad_oracle_input_exits_2(capsys, argv, words):
    status, _, err = run(capsys, "oracle", *argv)
    assert status == 2
    for word in words:
        assert word in err, (word, err)
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--predictions", "@missing.json"], ["cannot read 'missing.json'", "@FILE"]),
        (["--case", "@missing.json"], ["cannot read 'missing.json'"]),
        (["--predictions", "@bad.json"], ["bad.json is not valid JSON"]),
    ],
)
def test_unreadable_oracle_files_are_argument_errors(tmp_path, monkeypatch, capsys, argv, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.json").write_text("[0.5,")
    with pytest.raises(SystemExit) as info:
        main(["oracle", "binary_crossentropy", *argv, "--labels", "[1]"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err, (word, err)


def test_oracle_reads_inputs_from_files_and_stdin(tmp_path, monkeypatch, capsys):
    import io

    from stabcheck.case import Case

    monkeypatch.chdir(tmp_path)
    wide = [[0.0] * 3000 + [1.0]]  # too long for some command lines
    (tmp_path / "x.json").write_text(json.dumps(wide))
    monkeypatch.setattr("sys.stdin", io.StringIO("[3000]"))
    status, out, _ = run(capsys, "oracle", "sparse_softmax_cross_entropy_with_logits",
                         "--predictions", "@x.json", "--labels", "-", "--json")  # fmt: skip
    from_files = json.loads(out)
    case = Case.build("sparse_softmax_cross_entropy_with_logits", wide, [3000])
    (tmp_path / "case.json").write_text(case.to_json())
    status_case, out_case, _ = run(capsys, "oracle", "--case", "@case.json", "--json")
    assert status == status_case == 0 and json.loads(out_case) == from_files
    ctx = mpmath.MPContext()
    ctx.prec = 200
    exact = ctx.log(3000 + ctx.e) - 1  # logsumexp - x_k with 3000 zeros and one 1
    assert float.fromhex(from_files["value"]) == float(exact)


def test_oracle_json_is_strict_json_when_the_condition_is_nan(capsys):
    # -inf logit under a positive label: the loss is +inf and its condition number NaN
    status, out, _ = run(capsys, "oracle", "sigmoid_cross_entropy_with_logits", "--predictions",
                         '["-inf"]', "--labels", "[1]", "--json")  # fmt: skip

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    data = json.loads(out, parse_constant=refuse)
    assert status == 0 and data["value"] == "inf" and data["condition"] == "nan"


def test_an_unexpected_failure_is_exit_2_with_a_traceback(monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr("stabcheck.cli._list", broken)
    status, _, err = run(capsys, "list")
    assert status == 2
    assert "Traceback" in err and "could not run: RuntimeError: a bug" in err


def test_a_reader_that_stops_reading_ends_the_command_quietly():
    """``stabcheck list | head -1``: the pipe closes under the command, which stops with
    the status of SIGPIPE and no traceback."""
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    process = subprocess.run([sys.executable, "-m", "stabcheck.cli", "list"], stdout=write,
                             stderr=subprocess.PIPE, text=True, timeout=120)  # fmt: skip
    os.close(write)
    assert process.returncode == 141
    assert process.stderr == ""


def test_oracle_takes_the_operands_of_the_linear_losses(capsys):
    """Logits h W^T = [1, 2, 3] for h = [1, 2]: loss lse - 3, dL/dx = softmax - e_2, and
    dL/dW = dL/dx^T h, computed here with mpmath at 60 digits."""
    status, out, _ = run(capsys, "oracle", "linear_cross_entropy", "--predictions", "[[1, 2]]",
                         "--linear-weight", "[[1, 0], [0, 1], [1, 1]]", "--labels", "[2]",
                         "--grad", "--json")  # fmt: skip
    assert status == 0
    data = json.loads(out)
    ctx = mpmath.MPContext()
    ctx.dps = 60
    z = ctx.exp(1) + ctx.exp(2) + ctx.exp(3)
    assert float.fromhex(data["value"]) == float(ctx.log(z) - 3)
    g = [ctx.exp(1) / z, ctx.exp(2) / z, ctx.exp(3) / z - 1]
    want = [[float(g[v] * hj) for hj in (1, 2)] for v in range(3)]
    got = [[float.fromhex(x) for x in row] for row in data["gradient_linear_weight"]]
    assert got == want
    assert data["case"]["linear_weight"][2] == ["0x1.0000000000000p+0"] * 2
    status, out, _ = run(capsys, "list")
    assert "hidden states, linear_weight, linear_bias, sparse labels" in out
