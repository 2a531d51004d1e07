"""Checkpoints: exact round trips, pruning, atomicity under failure and SIGKILL, clear errors."""

import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn import checkpoint, files
from fnn.checkpoint import CheckpointError, CheckpointWarning


class State(NamedTuple):
    params: list
    opt_state: tuple
    step: jax.Array
    key: jax.Array
    extra: dict


def make_state(sizes=(6, 16, 4), dtype=jnp.float32, seed=0):
    model = fnn.mlp(list(sizes), activation="tanh", dtype=dtype)
    params = model.init(jax.random.key(seed))
    opt = optax.adam(1e-3)
    opt_state = opt.init(params)
    # One real update so the moments are not all zeros.
    grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.5, params)
    updates, opt_state = opt.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    extra = {
        "big_int": jnp.asarray(16777217, jnp.int32),  # not representable in float32
        "f64": jnp.asarray([1.0 / 3.0, 1e-300], jnp.float64),
        "flag": jnp.asarray(True),
    }
    return State(params, opt_state, jnp.asarray(1234, jnp.int32), jax.random.key(seed + 7), extra)


def assert_bitwise_equal(a, b):
    la, ta = jax.tree_util.tree_flatten_with_path(a)
    lb, tb = jax.tree_util.tree_flatten_with_path(b)
    assert ta == tb
    for (path, x), (_, y) in zip(la, lb, strict=True):
        name = jax.tree_util.keystr(path)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes(), name


def test_round_trip_is_bitwise_and_keeps_dtypes(tmp_path):
    state = make_state()
    meta = {
        "config": {"hidden": [16]},
        "history": {"loss": [np.float32(0.5), 0.25]},
        "epoch": 3,
        "batch": np.int64(7),
    }
    path = checkpoint.save(tmp_path, state, step=1234, metadata=meta)
    assert os.path.basename(path) == "ckpt-00001234.npz"
    for like in (make_state(seed=99), jax.eval_shape(lambda: make_state(seed=99))):
        restored, got_meta = checkpoint.restore(tmp_path, like)
        assert isinstance(restored, State)
        assert type(restored.opt_state[0]) is type(state.opt_state[0])
        assert_bitwise_equal(restored, state)
    assert int(restored.extra["big_int"]) == 16777217
    assert restored.extra["f64"].dtype == jnp.float64
    assert got_meta == {
        "config": {"hidden": [16]},
        "history": {"loss": [0.5, 0.25]},
        "epoch": 3,
        "batch": 7,
    }
    # The restored key draws the same numbers.
    np.testing.assert_array_equal(
        jax.random.normal(restored.key, (3,)), jax.random.normal(state.key, (3,))
    )
    man = checkpoint.info(path)
    assert man["step"] == 1234 and man["metadata"] == got_meta
    assert {e["path"]: e["dtype"] for e in man["leaves"]}[".extra['big_int']"] == "int32"


def test_plain_numpy_and_python_leaves_keep_their_kind(tmp_path):
    tree = {
        "n": np.arange(4, dtype=np.int16),
        "s": np.float64(2.5),
        "i": 3,
        "x": 0.5,
        "bf": jnp.asarray([1.5, -2.0], jnp.bfloat16),
    }
    checkpoint.save(tmp_path, tree, step=0)
    got, meta = checkpoint.restore(tmp_path / "ckpt-00000000.npz", tree)
    assert meta is None
    assert isinstance(got["n"], np.ndarray) and got["n"].dtype == np.int16
    assert isinstance(got["s"], np.float64) and got["s"] == 2.5
    assert type(got["i"]) is int and got["i"] == 3 and type(got["x"]) is float
    assert got["bf"].dtype == jnp.bfloat16 and got["bf"].tolist() == [1.5, -2.0]
    # Anyone can read a checkpoint with NumPy alone.
    with np.load(tmp_path / "ckpt-00000000.npz") as z:
        assert "manifest" in z.files and z["leaf_00002"].tolist() == [
            0,
            1,
            2,
            3,
        ]  # leaves in key order


def test_keep_last_k(tmp_path):
    tree = {"w": jnp.zeros(3, jnp.float32)}
    for step in range(1, 7):
        checkpoint.save(tmp_path, tree, step=step, keep=3)
    names = [os.path.basename(p) for p in checkpoint.list_checkpoints(tmp_path)]
    assert names == ["ckpt-00000004.npz", "ckpt-00000005.npz", "ckpt-00000006.npz"]
    # The checkpoint just written is kept even when a higher step exists.
    checkpoint.save(tmp_path, tree, step=2, keep=1)
    names = [os.path.basename(p) for p in checkpoint.list_checkpoints(tmp_path)]
    assert names == ["ckpt-00000002.npz", "ckpt-00000006.npz"]
    checkpoint.save(tmp_path / "all", tree, step=1, keep=None)
    checkpoint.save(tmp_path / "all", tree, step=2, keep=None)
    assert len(checkpoint.list_checkpoints(tmp_path / "all")) == 2
    with pytest.raises(CheckpointError, match=r"keep: expected an int >= 1 or None, got 0"):
        checkpoint.save(tmp_path, tree, step=9, keep=0)


def only_checkpoints(directory):
    return sorted(os.listdir(directory))


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    state = make_state()
    checkpoint.save(tmp_path, state, step=1)
    before = only_checkpoints(tmp_path)
    bad = state._replace(extra={**state.extra, "note": "not an array"})
    with pytest.raises(CheckpointError, match=r"leaf \.extra\['note'\]: cannot save a str"):
        checkpoint.save(tmp_path, bad, step=2)
    with pytest.raises(CheckpointError, match=r"metadata: object is not JSON-serialisable"):
        checkpoint.save(tmp_path, state, step=2, metadata={"x": object()})
    with pytest.raises(CheckpointError, match=r"step: expected an int >= 0, got -1"):
        checkpoint.save(tmp_path, state, step=-1)

    def broken_replace(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="simulated"):
        checkpoint.save(tmp_path, state, step=2)
    monkeypatch.undo()

    def half_write(f, **arrays):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # Ctrl-C mid-write

    monkeypatch.setattr(np, "savez", half_write)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path, state, step=3)
    monkeypatch.undo()

    assert only_checkpoints(tmp_path) == before  # no temp file, no new checkpoint
    restored, _ = checkpoint.restore(tmp_path, make_state(seed=5))
    assert_bitwise_equal(restored, state)


def test_output_folder_that_is_a_file(tmp_path):
    f = tmp_path / "taken"
    f.write_text("I am a file")
    with pytest.raises(CheckpointError, match=r"taken is a file, not a folder"):
        checkpoint.save(f, {"w": jnp.zeros(2)}, step=0)
    assert f.read_text() == "I am a file"


def test_missing_and_empty_and_foreign(tmp_path):
    like = {"w": jnp.zeros(2)}
    with pytest.raises(FileNotFoundError, match=r"checkpoint .*nothing\.npz does not exist"):
        checkpoint.restore(tmp_path / "nothing.npz", like)
    assert checkpoint.latest(tmp_path / "no-such-folder") is None
    assert checkpoint.latest(tmp_path) is None
    with pytest.raises(FileNotFoundError, match=r"no checkpoint \(ckpt-\*\.npz\) in this folder"):
        checkpoint.restore(tmp_path, like)
    np.savez(tmp_path / "foreign.npz", w=np.zeros(2))
    with pytest.raises(CheckpointError, match=r"foreign\.npz: not an fnn checkpoint"):
        checkpoint.restore(tmp_path / "foreign.npz", like)
    (tmp_path / "notes.npz").write_text("hello")
    with pytest.raises(CheckpointError, match=r"notes\.npz: not a checkpoint"):
        checkpoint.restore(tmp_path / "notes.npz", like)


def flip_byte(path, offset):
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x10
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["truncate", "flip_data", "flip_manifest", "resaved_leaf"])
def test_corrupt_checkpoint_is_rejected_and_skipped(tmp_path, damage):
    good, newer = make_state(seed=1), make_state(seed=2)
    checkpoint.save(tmp_path, good, step=1)
    path = tmp_path / os.path.basename(checkpoint.save(tmp_path, newer, step=2))
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip_data":
        flip_byte(path, raw.find(np.asarray(newer.params[0]["w"]).tobytes()) + 5)
    elif damage == "flip_manifest":
        flip_byte(path, raw.find(b'"metadata"') + 2)
    else:  # a leaf changed with a valid zip around it: only the sha256 can tell
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["leaf_00000"] = arrays["leaf_00000"] + np.float32(1)
        np.savez(path, **arrays)
    like = make_state(seed=3)
    with pytest.raises(CheckpointError, match=r"ckpt-00000002\.npz: (corrupt|not an fnn)"):
        checkpoint.restore(path, like)
    with pytest.warns(CheckpointWarning, match=r"skipped 1 checkpoint.*ckpt-00000002"):
        assert checkpoint.latest(tmp_path).endswith("ckpt-00000001.npz")
    with pytest.warns(CheckpointWarning):
        restored, _ = checkpoint.restore(tmp_path, like)
    assert_bitwise_equal(restored, good)
    os.remove(tmp_path / "ckpt-00000001.npz")
    with pytest.raises(CheckpointError, match=r"no valid checkpoint, all 1 were skipped"):
        checkpoint.latest(tmp_path)


def test_other_architecture_names_the_leaves(tmp_path):
    checkpoint.save(tmp_path, make_state(sizes=(6, 16, 4)), step=1)
    with pytest.raises(CheckpointError) as info:
        checkpoint.restore(tmp_path, make_state(sizes=(6, 32, 4)))
    msg = str(info.value)
    assert "ckpt-00000001.npz" in msg
    assert ".params[0]['w']: expected float32[6, 32], found float32[6, 16]" in msg
    assert ".opt_state[0].mu[0]['b']: expected float32[32], found float32[16]" in msg
    with pytest.raises(
        CheckpointError,
        match=r"structure differs.*missing from the checkpoint: "
        r"\.params\[4\]\['b'\]",
    ):
        checkpoint.restore(tmp_path, make_state(sizes=(6, 16, 8, 4)))


def test_dtype_mismatch_is_an_error_not_a_cast(tmp_path):
    state = make_state()
    checkpoint.save(tmp_path, state, step=1)
    like = make_state(dtype=jnp.float64)
    with pytest.raises(
        CheckpointError,
        match=r"no cast.*\.params\[0\]\['b'\]: expected "
        r"float64\[16\], found float32\[16\]",
    ):
        checkpoint.restore(tmp_path, like)
    like = state._replace(extra={**state.extra, "big_int": jnp.asarray(0.0, jnp.float32)})
    with pytest.raises(
        CheckpointError,
        match=r"\.extra\['big_int'\]: expected float32\[\], "
        r"found int32\[\]",
    ):
        checkpoint.restore(tmp_path, like)
    like = state._replace(key=jax.random.key(0, impl="rbg"))
    with pytest.raises(CheckpointError, match=r"\.key: expected key<rbg>\[\], found key<fry>\[\]"):
        checkpoint.restore(tmp_path, like)


def test_stray_temp_files_are_ignored_and_cleaned(tmp_path):
    tree = {"w": jnp.ones(2, jnp.float32)}
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stray = tmp_path / f".ckpt-00000009.xyz.{dead.pid}.tmp"
    stray.write_bytes(b"PK half")
    live = tmp_path / f".ckpt-00000009.abc.{os.getpid()}.tmp"
    live.write_bytes(b"PK in progress")
    assert checkpoint.latest(tmp_path) is None
    checkpoint.save(tmp_path, tree, step=1)
    assert not stray.exists() and live.exists()  # only a dead writer's file is removed
    assert checkpoint.latest(tmp_path).endswith("ckpt-00000001.npz")


SAVER = textwrap.dedent("""
    import os, stat, sys, time
    import jax, numpy as np
    from fnn import checkpoint
    directory = sys.argv[1]
    real_fsync = os.fsync

    def slow_fsync(fd):
        # A slow disk: most of the loop is then spent with a half-written temp file.
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            time.sleep(0.02)
        real_fsync(fd)

    os.fsync = slow_fsync
    last = checkpoint.latest(directory)
    step = first = 0 if last is None else checkpoint.info(last)["step"] + 1
    while True:
        tree = {"a": np.full((512, 1024), step, np.float32), "b": np.full(100, step, np.int64),
                "key": jax.random.key(step)}
        checkpoint.save(directory, tree, step=step, metadata={"step": step}, keep=2)
        if step == first:
            print("ready", flush=True)  # one save done: a checkpoint exists from here on
        step += 1
""")


def test_sigkill_during_saves_never_loses_a_checkpoint(tmp_path):
    rng = random.Random(0)
    like = {
        "a": np.zeros((512, 1024), np.float32),
        "b": np.zeros(100, np.int64),
        "key": jax.random.key(0),
    }
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    steps, mid_save = [], 0
    for _ in range(10):
        proc = subprocess.Popen(
            [sys.executable, "-c", SAVER, str(tmp_path)], stdout=subprocess.PIPE, env=env, text=True
        )
        try:
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.05, 0.4))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        mid_save += any(n.endswith(".tmp") for n in os.listdir(tmp_path))
        # Every checkpoint on disk is complete; the newest restores with consistent contents.
        for path in checkpoint.list_checkpoints(tmp_path):
            checkpoint.info(path)
        tree, meta = checkpoint.restore(tmp_path, like)
        step = meta["step"]
        assert tree["a"].shape == (512, 1024) and np.all(tree["a"] == step)
        assert np.all(tree["b"] == step)
        np.testing.assert_array_equal(
            jax.random.key_data(tree["key"]), jax.random.key_data(jax.random.key(step))
        )
        steps.append(step)
    assert steps == sorted(steps) and steps[-1] > steps[0]
    assert mid_save >= 1, "no kill landed during a save"


def test_checkpoint_renamed_to_a_later_step_is_skipped_and_named(tmp_path):
    good, other = make_state(seed=1), make_state(seed=2)
    checkpoint.save(tmp_path, good, step=1)
    p = checkpoint.save(tmp_path, other, step=2, keep=None)
    renamed = tmp_path / "ckpt-00000009.npz"
    os.replace(p, renamed)
    before = renamed.read_bytes()
    with pytest.raises(CheckpointError, match=r"ckpt-00000009\.npz: its name says step 9 but its"):
        checkpoint.info(renamed)
    with pytest.warns(CheckpointWarning, match=r"ckpt-00000009\.npz: its name says step 9.*step 2"):
        assert checkpoint.latest(tmp_path).endswith("ckpt-00000001.npz")
    with pytest.warns(CheckpointWarning):
        restored, _ = checkpoint.restore(tmp_path, make_state(seed=3))
    assert_bitwise_equal(restored, good)
    assert renamed.read_bytes() == before  # skipped, never modified or removed


def test_full_disk_names_the_path_removes_the_temporary_and_keeps_the_last_one(
    tmp_path, monkeypatch
):
    good = make_state(seed=1)
    first = checkpoint.save(tmp_path, good, step=1)
    before = Path(first).read_bytes()

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(
        files.DiskFullError,
        match=r"no space left on device writing .*ckpt-00000002\.npz: needs about .* free in",
    ):
        checkpoint.save(tmp_path, make_state(seed=2), step=2)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["ckpt-00000001.npz"]  # no temporary left
    assert Path(first).read_bytes() == before
    restored, _ = checkpoint.restore(tmp_path, make_state(seed=3))
    assert_bitwise_equal(restored, good)
