"""Reliability of ``fnn train``: exact resume, SIGKILL at random moments, Ctrl-C, NaN policy.

Every run here is a real ``fnn train`` process on a tiny model; kills are SIGKILL (nothing
can be caught or flushed), so only the atomic checkpoint protocol stands between a kill and
a lost or corrupt run.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}
# 400 moons examples, batch 8: 50 steps per epoch, a checkpoint after every epoch.
RUN = [
    "--data",
    "moons",
    "--hidden",
    "16",
    "--epochs",
    "40",
    "--batch-size",
    "8",
    "--optimizer",
    "adam",
    "--lr",
    "0.01",
    "--seed",
    "5",
    "--quiet",
    "--keep",
    "2",
]


def cmd(*flags):
    return [sys.executable, "-m", "fnn.cli", "train", *flags]


def digest(json_path):
    with open(json_path) as f:
        return json.load(f)["params_digest"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    res = subprocess.run(
        cmd(*RUN, "--out", str(d / "out"), "--json", str(d / "r.json")),
        capture_output=True,
        text=True,
        timeout=180,
        env=ENV,
    )
    assert res.returncode == 0, res.stderr
    return json.loads((d / "r.json").read_text())


def test_interrupted_and_resumed_run_is_bitwise_identical(tmp_path, reference):
    out = str(tmp_path / "out")
    # Stop after 15 of the 40 epochs (a checkpoint every 5), then resume to the end.
    first = subprocess.run(
        cmd(*RUN, "--checkpoint-every", "5", "--out", out),
        capture_output=True,
        text=True,
        timeout=180,
        env=ENV,
    )
    assert first.returncode == 0, first.stderr
    # Roll back to the epoch-15 checkpoint by deleting later ones, as if killed there.
    ckpts = sorted(f for f in os.listdir(out) if f.startswith("ckpt-"))
    assert len(ckpts) == 2  # --keep 2
    os.remove(os.path.join(out, ckpts[-1]))
    res = subprocess.run(
        cmd("--resume", "--out", out, "--quiet", "--json", str(tmp_path / "r.json")),
        capture_output=True,
        text=True,
        timeout=180,
        env=ENV,
    )
    assert res.returncode == 0, res.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["params_digest"] == reference["params_digest"]
    assert len(result["history"]["train_loss"]) == 40
    assert result["history"]["train_loss"] == reference["history"]["train_loss"]


def test_sigkill_at_random_moments_then_resume(tmp_path, reference):
    """At least 20 SIGKILLs, some during saves; every resume works; the digest is exact."""
    out = str(tmp_path / "out")
    rng = random.Random(1234)
    kills = resumes = 0
    deadline = time.monotonic() + 100
    while kills < 20 and time.monotonic() < deadline:
        proc = subprocess.Popen(
            cmd(*RUN, "--checkpoint-every", "1", "--resume", "--out", out),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=ENV,
        )
        time.sleep(rng.uniform(1.0, 3.0))  # start-up is ~1.5-2.5 s, then epochs of ~10 ms
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        err = proc.communicate(timeout=60)[1].decode()
        assert "Traceback" not in err, err  # every resume before the kill worked
        resumes += 1
    assert kills >= 20, f"only {kills} kills landed in time"
    final = subprocess.run(
        cmd(
            *RUN,
            "--checkpoint-every",
            "1",
            "--resume",
            "--out",
            out,
            "--json",
            str(tmp_path / "r.json"),
        ),
        capture_output=True,
        text=True,
        timeout=180,
        env=ENV,
    )
    assert final.returncode == 0, final.stderr
    assert digest(tmp_path / "r.json") == reference["params_digest"]
    print(f"{kills} SIGKILLs survived over {resumes} runs")


def test_ctrl_c_saves_and_exits_cleanly(tmp_path, reference):
    out = str(tmp_path / "out")
    run = [*RUN[:5], "400", *RUN[6:]]  # 400 epochs: still running when interrupted
    proc = subprocess.Popen(
        cmd(*run, "--checkpoint-every", "100", "--out", out),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    for _ in range(200):  # wait until training is under way (first checkpoint written)
        time.sleep(0.05)
        if os.path.isdir(out) and any(f.startswith("ckpt-") for f in os.listdir(out)):
            break
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted" in stderr
    from fnn import checkpoint

    saved = checkpoint.info(out)
    assert saved["metadata"]["epoch"] >= 100  # the newest epoch, not just the last N-boundary


def test_nonfinite_raise_names_epoch_and_saves_last_finite_state(tmp_path):
    out = tmp_path / "out"
    res = subprocess.run(
        cmd(
            "--data",
            "moons",
            "--hidden",
            "8",
            "--epochs",
            "5",
            "--optimizer",
            "sgd",
            "--lr",
            "1e30",
            "--loss",
            "mse",
            "--quiet",
            "--out",
            str(out),
        ),
        capture_output=True,
        text=True,
        timeout=180,
        env=ENV,
    )
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert "non-finite" in res.stderr and "epoch 0, step" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    saved = list((out / "last-finite").glob("ckpt-*.npz"))
    assert len(saved) == 1


def test_nonfinite_skip_counts_skipped_steps(tmp_path):
    res = subprocess.run(
        cmd(
            "--data",
            "moons",
            "--hidden",
            "8",
            "--epochs",
            "3",
            "--optimizer",
            "sgd",
            "--lr",
            "1e30",
            "--loss",
            "mse",
            "--on-nonfinite",
            "skip",
            "--out",
            str(tmp_path / "o"),
            "--json",
            str(tmp_path / "r.json"),
        ),
        capture_output=True,
        text=True,
        timeout=180,
        env=ENV,
    )
    assert res.returncode == 0, res.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["skipped"] > 0
    assert "skipped steps" in res.stdout
