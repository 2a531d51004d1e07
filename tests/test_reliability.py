"""Reliability of ``fnn train``: exact resume, SIGKILL at random moments, Ctrl-C, NaN policy.

Every run here is a real ``fnn train`` process on a tiny model; kills are SIGKILL (nothing
can be caught or flushed), so only the atomic checkpoint protocol stands between a kill and
a lost or corrupt run.
"""

import json
import os
import random
import signal
import socket
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


def newest_checkpoint(out: str) -> str:
    names = [f for f in os.listdir(out) if f.startswith("ckpt-") and f.endswith(".npz")]
    return max(names, default="")


def wait_for_checkpoint_after(out: str, seen: str, proc) -> tuple[str, float]:
    """The first checkpoint newer than ``seen`` and when it appeared (``seen`` if the process
    ended first); polls every 1 ms, with a 120 s guard against a hang."""
    deadline = time.monotonic() + 120
    while proc.poll() is None:
        newest = newest_checkpoint(out)
        if newest > seen:
            return newest, time.monotonic()
        assert time.monotonic() < deadline, "no new checkpoint within 120 s"
        time.sleep(0.001)
    return seen, time.monotonic()


def test_sigkill_at_random_moments_then_resume(tmp_path, reference):
    """6 SIGKILLs at random moments; every resume works; the digest is exact.

    Each run is killed once a new checkpoint exists (so every run makes progress) plus a random
    0-1% of the time that checkpoint took to appear: every delay is a fraction of a duration
    measured on this machine, so the kills land at the same places in the run (the epochs and
    saves after the first checkpoint) however fast the machine is; no time is asserted.
    """
    out = str(tmp_path / "out")
    os.makedirs(out)
    rng = random.Random(1234)
    kills = runs = 0
    while runs < 10 and kills < 6:  # 40 epochs; a run before its kill takes 1-2 of them
        runs += 1
        seen = newest_checkpoint(out)
        start = time.monotonic()
        proc = subprocess.Popen(
            cmd(*RUN, "--checkpoint-every", "1", "--resume", "--out", out),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=ENV,
        )
        _, found = wait_for_checkpoint_after(out, seen, proc)
        time.sleep(rng.uniform(0.0, 0.01) * (found - start))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        err = proc.communicate(timeout=60)[1].decode()
        assert "Traceback" not in err, err  # every resume before the kill worked
    assert kills == 6, f"the run finished after {kills} kills"
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
    print(f"{kills} SIGKILLs survived over {runs} runs")


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
    for _ in range(1200):  # wait until training is under way (first checkpoint written)
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
    # Strict JSON everywhere (issue 19 item 9): a NaN loss is null, never a bare NaN.
    for path in (tmp_path / "r.json", tmp_path / "o" / "metrics.json"):
        text = path.read_text()
        assert "NaN" not in text and "Infinity" not in text
        json.loads(text, parse_constant=lambda c, p=path: pytest.fail(f"{p}: bare {c}"))


# ------------------------------------------------------------------ issue 19: round two


def test_sigterm_saves_the_newest_epoch_and_exits_143(tmp_path):
    out = str(tmp_path / "out")
    run = [*RUN[:5], "100000", *RUN[6:], "--schedule", "constant"]
    proc = subprocess.Popen(
        cmd(*run, "--checkpoint-every", "50", "--out", out),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        for _ in range(1200):  # wait until training is under way (first checkpoint written)
            time.sleep(0.05)
            if os.path.isdir(out) and any(f.startswith("ckpt-") for f in os.listdir(out)):
                break
        time.sleep(1.0)  # some epochs past the periodic checkpoint
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and "terminated (SIGTERM)" in stderr
    from fnn import checkpoint

    saved = checkpoint.info(out)  # verifies the sha256: a complete, loadable checkpoint
    assert saved["metadata"]["epoch"] > 50  # the newest epoch, not the periodic one
    assert (
        saved["metadata"]["run_id"]
        == json.loads((tmp_path / "out" / "run.json").read_text())["run_id"]
    )


def test_a_stale_lock_of_a_killed_process_does_not_block_resume(tmp_path, reference):
    out = tmp_path / "out"
    first = subprocess.run(
        cmd(*RUN, "--out", str(out)), capture_output=True, text=True, timeout=180, env=ENV
    )
    assert first.returncode == 0, first.stderr
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from fnn import files; files.FolderLock(sys.argv[1]).__enter__();"
            " print('locked', flush=True); time.sleep(600)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        busy = subprocess.run(
            cmd("--resume", "--out", str(out), "--quiet"),
            capture_output=True,
            text=True,
            timeout=180,
            env=ENV,
        )
        assert busy.returncode == 2
        assert f"is in use by another fnn run (process {holder.pid})" in busy.stderr
    finally:
        holder.kill()  # SIGKILL: the lock file stays behind, holding a dead pid
        holder.wait()
        holder.stdout.close()
    assert (out / ".fnn-lock").read_text().strip() == str(holder.pid)
    res = subprocess.run(
        cmd("--resume", "--out", str(out), "--quiet", "--json", str(tmp_path / "r.json")),
        capture_output=True,
        text=True,
        timeout=180,
        env=ENV,
    )
    assert res.returncode == 0, res.stderr
    assert digest(tmp_path / "r.json") == reference["params_digest"]


def test_an_incomplete_job_gives_up_after_the_join_timeout(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = subprocess.run(
        cmd(
            "--data",
            "xor",
            "--quiet",
            "--out",
            str(tmp_path / "o"),
            "--num-processes",
            "2",
            "--coordinator",
            f"127.0.0.1:{port}",
            "--join-timeout",
            "2",
        ),
        capture_output=True,
        text=True,
        timeout=120,  # a hard bound: the old behaviour waited forever
        env=ENV,
    )
    assert res.returncode == 2
    assert (
        res.stderr.strip()
        .splitlines()[-1]
        .startswith("fnn train: error: --num-processes: the job of 2 processes at 127.0.0.1:")
    )
    assert "did not start within --join-timeout 2 s" in res.stderr
    assert not (tmp_path / "o").exists()
