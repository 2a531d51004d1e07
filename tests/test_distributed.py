"""Two processes on 127.0.0.1 (jax.distributed, CPU collectives) train like one with 4 devices.

Each worker is a ``fnn train`` child with 2 forced CPU devices; the reference is one child
with 4. With ``jax.distributed`` active JAX catches SIGTERM, so every child is bounded by a
timeout that sends SIGKILL, and a ``finally`` kills any survivor: a hang fails the test, it
never stalls CI.
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from fnn import cli, parallel

TIMEOUT = 120  # seconds per job; a normal job takes ~15 s on a loaded 2-core machine
COMMON = [
    "train",
    "--data",
    "digits",
    "--hidden",
    "32",
    "--batch-size",
    "64",
    "--quiet",
    "--schedule",
    "constant",
    "--devices",
    "all",
]


def _env(devices: int, **extra) -> dict:
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        **extra,
    )
    env.pop("JAX_ENABLE_X64", None)  # the children run float32, as the comparison demands
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fnn(args) -> list[str]:
    return [sys.executable, "-c", "import sys; from fnn import cli; sys.exit(cli.main())", *args]


def _workers(args, json_paths, env, n=2):
    port = _free_port()
    return [
        subprocess.Popen(
            _fnn(
                [
                    *args,
                    "--coordinator",
                    f"127.0.0.1:{port}",
                    "--num-processes",
                    str(n),
                    "--process-id",
                    str(i),
                    "--json",
                    str(json_paths[i]),
                ]
            ),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]


def _finish(procs, timeout=TIMEOUT):
    """Wait for every process (SIGKILL at the deadline); return their (rc, stderr)."""
    deadline = time.monotonic() + timeout
    results = []
    try:
        for p in procs:
            try:
                _, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"a worker hung and was killed after {timeout} s")
            results.append((p.returncode, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()  # SIGKILL: jax.distributed traps SIGTERM
                p.wait()
    return results


def _load(path):
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    t0 = time.perf_counter()
    ref = subprocess.run(
        _fnn(
            [*COMMON, "--epochs", "4", "--out", str(tmp / "ref"), "--json", str(tmp / "ref.json")]
        ),
        env=_env(4),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )  # kills on timeout
    assert ref.returncode == 0, ref.stderr[-3000:]
    t1 = time.perf_counter()
    shared = tmp / "shared"  # one --out for both: process 0 writes, both read on --resume
    first = [tmp / f"a{i}.json" for i in range(2)]
    for rc, err in _finish(
        _workers(
            [*COMMON, "--epochs", "2", "--checkpoint-every", "1", "--out", str(shared)],
            first,
            _env(2),
        )
    ):
        assert rc == 0, err[-3000:]
    t2 = time.perf_counter()
    ckpts = sorted(p.name for p in shared.glob("ckpt-*.npz"))
    resumed = [tmp / f"b{i}.json" for i in range(2)]
    for rc, err in _finish(
        _workers(
            [*COMMON, "--epochs", "4", "--checkpoint-every", "1", "--resume", "--out", str(shared)],
            resumed,
            _env(2),
        )
    ):
        assert rc == 0, err[-3000:]
    t3 = time.perf_counter()
    print(f"\nreference {t1 - t0:.1f} s, 2-process {t2 - t1:.1f} s, resumed {t3 - t2:.1f} s")
    return {
        "ref": _load(tmp / "ref.json"),
        "a": [_load(p) for p in first],
        "b": [_load(p) for p in resumed],
        "ckpts": ckpts,
        "ref_params": dict(np.load(tmp / "ref" / "params.npz")),
        "params": dict(np.load(shared / "params.npz")),
    }


def test_two_processes_match_one_process_with_four_devices(runs):
    ref = runs["ref"]["history"]
    for name, stop in (("a", 2), ("b", 4)):
        for i, result in enumerate(runs[name]):
            assert result["process"] == {"index": i, "count": 2}
            assert result["device"].startswith("cpu x4")
            for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
                np.testing.assert_allclose(
                    result["history"][key],
                    ref[key][:stop],
                    rtol=1e-5,
                    err_msg=f"job {name} process {i} {key}",
                )
    assert ref["train_loss"][-1] < ref["train_loss"][0]
    got = np.asarray(runs["b"][0]["history"]["train_loss"])
    print(
        f"\nmax relative loss difference, 2x2 vs 1x4: "
        f"{np.max(np.abs(got - ref['train_loss']) / np.abs(ref['train_loss'])):.2e}"
    )
    for k, v in runs["ref_params"].items():
        np.testing.assert_allclose(runs["params"][k], v, rtol=1e-4, atol=1e-6, err_msg=k)


def test_both_processes_hold_the_same_parameters(runs):
    for name in ("a", "b"):
        first, second = runs[name]
        assert first["params_digest"] == second["params_digest"], name
        assert first["test_loss"] == second["test_loss"], name
    assert runs["a"][0]["params_digest"] != runs["b"][0]["params_digest"]  # it trained on


def test_resumed_job_restores_the_checkpoint_on_both_processes(runs):
    assert len(runs["ckpts"]) == 2, runs["ckpts"]  # written once, by process 0, per epoch
    for a, b in zip(runs["a"], runs["b"], strict=True):
        # The resumed history starts with the saved epochs, exactly; then continues.
        assert b["history"]["train_loss"][:2] == a["history"]["train_loss"]
        assert len(b["history"]["train_loss"]) == 4
        assert b["epochs"] == 4


@pytest.mark.parametrize("killed", [1, 0], ids=["worker", "coordinator"])
def test_a_killed_peer_makes_the_survivor_abort(tmp_path, killed):
    out = tmp_path / "run"
    args = [
        "train",
        "--data",
        "moons",
        "--hidden",
        "8",
        "--batch-size",
        "8",
        "--quiet",
        "--devices",
        "all",
        "--epochs",
        "1000000",
        "--checkpoint-every",
        "1",
        "--keep",
        "1",
        "--out",
        str(out),
    ]
    procs = _workers(
        args, [tmp_path / "k0.json", tmp_path / "k1.json"], _env(2, FNN_HEARTBEAT_TIMEOUT="3")
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not list(out.glob("ckpt-*.npz")):  # both processes are training
            dead = [p for p in procs if p.poll() is not None]
            assert not dead, dead[0].communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the job never started training"
            time.sleep(0.2)
        procs[killed].kill()
        t0 = time.monotonic()
        rc, err = _finish(procs, timeout=60)[1 - killed]
        waited = time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert rc != 0
    assert "another task died" in err, err[-3000:]
    # A dead worker is found by its missing heartbeats, a dead coordinator by its closed socket.
    why = "stopped sending heartbeats" if killed else "leader task was preempted/died"
    assert why in err, err[-3000:]
    assert waited < 30, f"the survivor took {waited:.1f} s to abort"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--num-processes", "2"], "--coordinator: expected 'HOST:PORT', got None"),
        (["--num-processes", "2", "--coordinator", "127.0.0.1:x"], "with a port in 1..65535"),
        (
            ["--num-processes", "2", "--process-id", "2", "--coordinator", "127.0.0.1:1"],
            r"--process-id: expected an int in 0..1",
        ),
        (["--num-processes", "0"], "--num-processes: expected an int >= 1, got 0"),
    ],
)
def test_bad_process_flags_are_named(tmp_path, capsys, flags, message):
    code = cli.main(["train", "--data", "xor", "--quiet", "--out", str(tmp_path), *flags])
    assert code == 2
    assert message in capsys.readouterr().err


def test_single_process_helpers_fall_back_to_device_put():
    import jax
    import jax.numpy as jnp

    parallel.initialize()  # one process: nothing to start
    assert parallel.is_main() and parallel.main_only(lambda v: v + 1)(1) == 2
    mesh = parallel.make_mesh(1)
    table = np.arange(12, dtype=np.int32).reshape(3, 4)
    sharding = parallel.batch_sharding(mesh, axis=1)
    assert parallel.local_block(sharding, table.shape) == (slice(0, 3), slice(0, 4))
    placed = parallel.put_sharded(table, sharding)
    assert placed.sharding == sharding and np.array_equal(np.asarray(placed), table)
    state = {"w": jnp.ones((2, 3), jnp.float32), "key": jax.random.key(3)}
    put = parallel.put_replicated(state, mesh)
    assert put["w"].sharding == parallel.replicated(mesh)
    assert parallel.host_local(put) is not None
    assert np.array_equal(jax.random.key_data(put["key"]), jax.random.key_data(state["key"]))
