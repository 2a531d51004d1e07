"""``fnn train --model cnn`` and ``fnn check --model cnn``: the CNN recipe from the command line."""

import json
import os
import subprocess
import sys

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def fnn(*flags, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "fnn.cli", *flags],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )


def test_train_cnn_learns_digits_with_its_backward_checked(tmp_path):
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
    # --resume of that run with another --model is refused, naming both
    again = fnn(
        "train",
        "--model",
        "mlp",
        "--epochs",
        "3",
        "--quiet",
        "--resume",
        "--out",
        str(tmp_path / "run"),
    )
    assert again.returncode == 2
    assert "--model saved cnn, given mlp" in again.stderr


def test_check_cnn_passes_and_bad_choices_are_named():
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
    bad = fnn("check", "--model", "cnn", "--sizes", "60,10")
    assert bad.returncode == 2 and "--model cnn: --sizes image_shape: 60 features" in bad.stderr
    other = fnn("train", "--model", "resnet", "--epochs", "1")
    assert other.returncode == 2 and "--model" in other.stderr and "mlp, cnn" in other.stderr
