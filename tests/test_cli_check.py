"""``fnn check`` end to end: subprocess runs, exit codes, --json, bad flags."""

import json
import subprocess
import sys

import pytest

from fnn import cli, losses


def fnn_check(*flags, timeout=180):
    return subprocess.run(
        [sys.executable, "-m", "fnn.cli", "check", *flags],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_check_passes_and_writes_json(tmp_path):
    out = tmp_path / "check.json"
    res = fnn_check(
        "--sizes",
        "5,4,3",
        "--activation",
        "tanh",
        "--loss",
        "softmax_cross_entropy",
        "--dtype",
        "float64",
        "--seed",
        "0",
        "--batch",
        "4",
        "--json",
        str(out),
    )
    assert res.returncode == 0, res.stderr
    assert "PASS" in res.stdout and "[0]['w']" in res.stdout and "How to read" in res.stdout
    report = json.loads(out.read_text())
    assert report["ok"] is True
    assert 0.0 <= report["max_rel_err"] <= 1e-10 and report["max_abs_err"] <= 1e-12
    assert [leaf["path"] for leaf in report["leaves"]] == [
        "[0]['b']",
        "[0]['w']",
        "[2]['b']",
        "[2]['w']",
    ]
    assert report["leaves"][1]["shape"] == [5, 4] and report["fd_dtype"] == "float64"
    assert report["config"]["sizes"] == [5, 4, 3] and report["dtype"] == "float64"


def test_check_float32_relu_with_dropout(capsys):
    # In process (the session already runs with x64 on, as the command turns it on itself).
    code = cli.main(
        [
            "check",
            "--sizes",
            "4,6,2",
            "--activation",
            "relu",
            "--loss",
            "mse",
            "--dtype",
            "float32",
            "--dropout",
            "0.5",
            "--seed",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "(float32," in out and "PASS" in out and "finite differences (max rel" in out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--sizes", "5,x"], "fnn check: error: --sizes: expected comma-separated positive ints"),
        (["--activation", "nope"], "argument --activation: invalid choice: 'nope'"),
    ],
)
def test_bad_flags_exit_2_with_one_message(flags, message):
    res = fnn_check(*flags, timeout=120)
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr
    assert res.stdout == ""


def test_failing_check_exits_1_and_debug_reraises(monkeypatch, tmp_path, capsys):
    mse = losses.get("mse")
    # A planted bug (the factor 2 of mse's gradient forgotten) must turn into exit status 1.
    monkeypatch.setitem(
        losses._REGISTRY, "mse", mse._replace(grad=lambda pred, target: (pred - target) / pred.size)
    )
    out = tmp_path / "fail.json"
    code = cli.main(
        ["check", "--sizes", "3,4,2", "--loss", "mse", "--batch", "3", "--json", str(out)]
    )
    assert code == 1
    assert "FAIL: 4 of 4 leaves disagree" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["ok"] is False and all(not leaf["ok"] for leaf in report["leaves"])
    assert report["max_rel_err"] == pytest.approx(1 / 3)
    with pytest.raises(cli.UsageError, match="--batch: expected a positive int"):
        cli.main(["check", "--batch", "0", "--debug"])
    assert cli.main(["check", "--batch", "0"]) == 2
    assert "fnn check: error: --batch" in capsys.readouterr().err
