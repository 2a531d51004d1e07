"""``fnn lr-find`` end to end: the sweep, its JSON and figure, and clean errors for bad flags."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from fnn import cli

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}
PNG = b"\x89PNG\r\n\x1a\n"


def lr_find(*flags, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "fnn.cli", "lr-find", *flags],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )


def test_sweep_diverges_and_suggests_a_tenth_of_the_minimum(tmp_path):
    out = tmp_path / "run"
    res = lr_find(
        "--data",
        "moons",
        "--hidden",
        "8",
        "--activation",
        "tanh",
        "--optimizer",
        "sgd",
        "--min-lr",
        "1e-4",
        "--max-lr",
        "1e3",
        "--steps",
        "60",
        "--batch-size",
        "16",
        "--seed",
        "1",
        "--out",
        str(out),
        "--json",
        str(tmp_path / "r.json"),
    )
    assert res.returncode == 0, res.stderr
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["config"] == {
        "data": "moons",
        "hidden": [8],
        "activation": "tanh",
        "loss": "softmax_cross_entropy",
        "optimizer": "sgd",
        "min_lr": 1e-4,
        "max_lr": 1e3,
        "steps": 60,
        "batch_size": 16,
        "seed": 1,
    }
    # SGD at rates up to 1e3 blows up: the sweep stops early, at the step it names.
    assert r["diverged_at"] is not None
    assert r["steps_run"] == r["diverged_at"] + 1 < 60
    lrs = np.array(r["lrs"])
    assert len(lrs) == len(r["losses"]) == len(r["smoothed"]) == r["steps_run"]
    assert lrs[0] == pytest.approx(1e-4, rel=1e-6)
    ratios = lrs[1:] / lrs[:-1]  # geometric: 1e7 over 60 steps
    np.testing.assert_allclose(ratios, (1e3 / 1e-4) ** (1 / 60), rtol=1e-4)
    # The rule: a tenth of the rate at the smoothed loss's minimum.
    smoothed = np.array([np.inf if v is None else v for v in r["smoothed"]])
    assert r["min_loss_lr"] == pytest.approx(lrs[np.argmin(smoothed)])
    assert r["suggested_lr"] == pytest.approx(r["min_loss_lr"] / 10)
    assert "divided by 10" in r["rule"]
    assert (out / "lr-find.png").read_bytes()[:8] == PNG
    assert json.loads((out / "lr-find.json").read_text())["suggested_lr"] == r["suggested_lr"]
    assert f"suggested learning rate: {r['suggested_lr']:.3g}" in res.stdout
    assert "rule: the rate at the minimum of the smoothed loss divided by 10" in res.stdout
    assert f"diverged at step {r['diverged_at']}" in res.stdout


def test_png_out_and_quiet(tmp_path):
    fig = tmp_path / "figs" / "sweep.png"
    res = lr_find(
        "--data",
        "xor",
        "--hidden",
        "4",
        "--optimizer",
        "momentum",
        "--steps",
        "20",
        "--max-lr",
        "1.0",
        "--out",
        str(fig),
        "--quiet",
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == "" and res.stderr == ""
    assert fig.read_bytes()[:8] == PNG
    r = json.loads((tmp_path / "figs" / "sweep.json").read_text())
    assert r["config"]["optimizer"] == "momentum" and r["steps_run"] <= 20
    assert r["config"]["min_lr"] <= r["suggested_lr"] <= r["config"]["max_lr"]


def test_bad_flag_in_a_subprocess_is_one_line_and_exit_2(tmp_path):
    res = lr_find("--optimizer", "lbfgs", "--out", str(tmp_path))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "fnn lr-find: error: --optimizer: unknown 'lbfgs'; expected one of: gd, sgd, momentum, "
        "nesterov, adam, adamw, rmsprop, adagrad"
    ]
    assert os.listdir(tmp_path) == []  # nothing written before the check


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--min-lr", "0"], r"--min-lr: expected a positive finite number, got 0.0"),
        (["--max-lr", "nan"], r"--max-lr: expected a positive finite number"),
        (["--min-lr", "1", "--max-lr", "0.5"], r"expected --min-lr < --max-lr, got 1.0 and 0.5"),
        (["--steps", "5"], r"--steps: expected at least 10, got 5"),
        (["--hidden", "8,x"], r"--hidden: expected comma-separated positive ints"),
        (["--batch-size", "0"], r"--batch-size: expected a positive int, got 0"),
        (["--activation", "swish"], r"--activation: unknown 'swish'"),
        (["--loss", "hinge"], r"--loss: unknown 'hinge'"),
        (["--data", "cifar"], r"--data: unknown dataset 'cifar'"),
        (["--data", "xor", "--batch-size", "100000"], r"--batch-size: expected at most 320"),
        (["--json", "/nonexistent-fnn-dir/r.json"], r"--json: folder /nonexistent-fnn-dir"),
    ],
)
def test_bad_flags_exit_2_with_one_message(flags, match, tmp_path, capsys):
    code = cli.main(["lr-find", *flags, "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert not (tmp_path / "o").exists()  # nothing written before the flags are checked
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("fnn lr-find: error: ")
    assert re.search(match, err), err


def test_debug_reraises(tmp_path):
    with pytest.raises(cli.UsageError, match="--steps: expected at least 10"):
        cli.main(["lr-find", "--steps", "3", "--debug", "--out", str(tmp_path)])


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "taken"
    f.write_text("x")
    assert cli.main(["lr-find", "--out", str(f)]) == 2
    assert "--out: " in capsys.readouterr().err


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["lr-find", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--data",
        "--hidden",
        "--activation",
        "--loss",
        "--optimizer",
        "--min-lr",
        "--max-lr",
        "--steps",
        "--batch-size",
        "--seed",
        "--out",
        "--json",
        "--quiet",
        "--debug",
    ):
        assert flag in text, flag
