"""``fnn train --model cnn`` and ``fnn check --model cnn``: the CNN recipe from the command line."""

import json
import os
import subprocess
import sys

from fnn import cli

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def fnn(*flags, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "fnn.cli", *flags],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )


def test_train_cnn_learns_digits_with_its_backward_checked(tmp_path, capsys):
    res = fnn(
        "train",
        "--model",
        "cnn",
        "--epochs",
        "3",
        "--quiet",
        "--out",
        str(tmp_path / "run"),
        "--json",
        str(tmp_path / "r.json"),
    )
    assert res.returncode == 0, res.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["config"]["model"] == "cnn"
    assert result["backward_check"]["ok"] is True
    assert result["test_accuracy"] >= 0.9  # 3 epochs; the full run is in the README
    # --resume of that run with another --model is refused, naming both (before any work, so
    # in-process is as good as a subprocess here)
    again = ["train", "--model", "mlp", "--epochs", "3", "--quiet", "--resume"]
    assert cli.main([*again, "--out", str(tmp_path / "run")]) == 2
    assert "--model saved cnn, given mlp" in capsys.readouterr().err


def test_check_cnn_passes_and_bad_choices_are_named(capsys):
    res = fnn(
        "check",
        "--model",
        "cnn",
        "--sizes",
        "64,10",
        "--loss",
        "softmax_cross_entropy",
        "--dtype",
        "float64",
        "--batch",
        "4",
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "PASS" in res.stdout
    # usage errors come before any work: in-process
    assert cli.main(["check", "--model", "cnn", "--sizes", "60,10"]) == 2
    assert "--model cnn: --sizes image_shape: 60 features" in capsys.readouterr().err
    assert cli.main(["train", "--model", "resnet", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "--model" in err and "mlp, cnn" in err
