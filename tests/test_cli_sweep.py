"""``fnn train --seeds K`` / ``--lr A,B``: sweeps in one program, end to end (subprocesses).

Float32 without x64 (as the command runs), so each check starts a fresh interpreter: one runs
the sweep with ``python -m fnn.cli``, one trains the same runs alone and tries the flags a
sweep refuses.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}
BASE = ["--data", "moons", "--hidden", "8", "--epochs", "3"]

# Runs fnn.cli.main in one process for several command lines; prints what each returned.
ALONE = r"""
import contextlib, io, json, sys
from fnn import cli
out = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(argv)
    out.append({"code": code, "stderr": err.getvalue()})
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    momentum = BASE + ["--optimizer", "momentum"]
    sweep = subprocess.run(
        [
            sys.executable,
            "-m",
            "fnn.cli",
            "train",
            *momentum,
            "--seeds",
            "3",
            "--lr",
            "0.05,0.2",
            "--out",
            str(tmp / "sweep"),
            "--json",
            str(tmp / "sweep.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert sweep.returncode == 0, sweep.stderr
    lines = {
        "m1": momentum + ["--seed", "1", "--lr", "0.2"],
        "m2": momentum + ["--seed", "2", "--lr", "0.05"],
        "adam_sweep": BASE + ["--seeds", "2", "--quiet"],
        "adam1": BASE + ["--seed", "1"],
        "ckpt": BASE + ["--seeds", "2", "--checkpoint-every", "1"],
        "devices": BASE + ["--lr", "0.1,0.2", "--devices", "2"],
    }
    argv = [
        ["train", *flags, "--quiet", "--out", str(tmp / name), "--json", str(tmp / f"{name}.json")]
        for name, flags in lines.items()
    ]
    alone = subprocess.run(
        [sys.executable, "-c", ALONE, json.dumps(argv)],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert alone.returncode == 0, alone.stderr
    codes = dict(zip(lines, json.loads(alone.stdout.strip().splitlines()[-1]), strict=True))

    def load(name):
        return json.loads((tmp / f"{name}.json").read_text())

    return {
        "tmp": tmp,
        "stdout": sweep.stdout,
        "sweep": load("sweep"),
        "codes": codes,
        "load": load,
    }


def test_sweep_json_table_and_outputs(sweeps):
    result = sweeps["sweep"]
    runs = result["runs"]
    assert [(r["seed"], r["lr"]) for r in runs] == [
        (s, lr) for s in (0, 1, 2) for lr in (0.05, 0.2)
    ]
    assert result["config"]["seeds"] == 3 and result["config"]["lr"] == [0.05, 0.2]
    for r in runs:
        assert set(r["history"]) >= {
            "train_loss",
            "train_accuracy",
            "test_loss",
            "test_accuracy",
            "lr",
            "seconds",
        }
        assert all(len(v) == 3 for v in r["history"].values())
        assert r["history"]["lr"][0] > r["history"]["lr"][-1]  # the cosine schedule, per run
        assert 0.0 <= r["test_accuracy"] <= 1.0 and len(r["params_digest"]) == 64
    accs = [r["test_accuracy"] for r in runs]
    assert result["test_accuracy_mean"] == pytest.approx(np.mean(accs))
    assert result["test_accuracy_std"] == pytest.approx(np.std(accs, ddof=1))
    assert len({r["params_digest"] for r in runs}) == 6
    assert result["max_runs"] >= 6 and result["device"].startswith("cpu")
    assert {"fnn", "jax", "optax", "python"} <= set(result["versions"])
    out = sweeps["tmp"] / "sweep"
    assert json.loads((out / "metrics.json").read_text())["runs"] == runs
    with np.load(out / "params.npz") as params:
        assert params["[0]['w']"].shape == (6, 2, 8)
    text = sweeps["stdout"]
    assert "test accuracy" in text and "+-" in text and runs[3]["params_digest"][:16] in text


def test_run_digest_equals_the_run_trained_alone_where_vmap_keeps_the_arithmetic(sweeps):
    """momentum (like sgd, nesterov, rmsprop): bitwise the lone run, lr sweep and cosine
    schedule included."""
    runs = {(r["seed"], r["lr"]): r for r in sweeps["sweep"]["runs"]}
    for name, key in (("m1", (1, 0.2)), ("m2", (2, 0.05))):
        assert sweeps["codes"][name]["code"] == 0, sweeps["codes"][name]["stderr"]
        alone = sweeps["load"](name)
        assert runs[key]["params_digest"] == alone["params_digest"], key
        assert runs[key]["test_accuracy"] == alone["test_accuracy"]
        assert runs[key]["history"]["train_loss"] == alone["history"]["train_loss"]


def test_adam_sweep_matches_the_lone_run_to_round_off(sweeps):
    """Adam's bias correction is simplified differently by XLA under vmap: the digests may
    differ (they do on CPU), the training may not."""
    assert sweeps["codes"]["adam_sweep"]["code"] == 0, sweeps["codes"]["adam_sweep"]["stderr"]
    run = sweeps["load"]("adam_sweep")["runs"][1]
    alone = sweeps["load"]("adam1")
    assert run["seed"] == 1 and run["lr"] == alone["config"]["lr"][0]
    np.testing.assert_allclose(
        run["history"]["train_loss"], alone["history"]["train_loss"], rtol=1e-4
    )
    assert abs(run["test_accuracy"] - alone["test_accuracy"]) <= 0.02


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("ckpt", "fnn train: error: --checkpoint-every: checkpoints are not supported for sweeps"),
        ("devices", "fnn train: error: --devices: expected 1..1 (the devices JAX sees"),
    ],
)
def test_refused_flags(sweeps, name, pattern):
    assert sweeps["codes"][name]["code"] == 2
    assert pattern in sweeps["codes"][name]["stderr"]
