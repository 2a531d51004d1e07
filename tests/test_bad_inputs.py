"""A battery of malformed inputs across the Python API and the command.

Each row: what is fed in, the exception type, and a pattern the message must match (it names
the argument, the expectation and what was found). Command rows must exit 2 with one line on
stderr and no traceback, and must leave an existing run folder byte-for-byte unchanged.
"""

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn import (
    activations,
    check,
    checkpoint,
    cli,
    data,
    diagnostics,
    files,
    losses,
    optim,
    plots,
    train,
)

MODEL = fnn.mlp([2, 4, 3], dtype=jnp.float32)
PARAMS = MODEL.init(jax.random.key(0))
X = np.random.default_rng(0).normal(size=(20, 2)).astype(np.float32)
Y = np.arange(20, dtype=np.int32) % 3
OPT = optax.sgd(0.1)


def fit(x=X, y=Y, **kw):
    kw = {"epochs": 1, "batch_size": 4, "key": jax.random.key(0), "progress": False, **kw}
    return train.fit(MODEL, kw.pop("loss", "softmax_cross_entropy"), OPT, (x, y), **kw)


def _with_nan(a, row, value=np.nan):
    a = a.copy()
    a[row, 0] = value
    return a


API_CASES = [
    # models and layers
    (
        "x wrong features",
        lambda: MODEL.apply(PARAMS, jnp.zeros((3, 5))),
        ValueError,
        r"x: expected shape \[batch, 2\].*got \(3, 5\)",
    ),
    (
        "x wrong rank",
        lambda: MODEL.apply(PARAMS, jnp.zeros((2,))),
        ValueError,
        r"x: expected shape \[batch, 2\].*got \(2,\)",
    ),
    (
        "x integer",
        lambda: MODEL.apply(PARAMS, jnp.zeros((3, 2), jnp.int32)),
        TypeError,
        r"x: expected a floating dtype, got int32",
    ),
    (
        "params from another model",
        lambda: MODEL.apply(fnn.mlp([2, 5, 3]).init(jax.random.key(0)), jnp.zeros((1, 2))),
        ValueError,
        r"params\[0\].*expected shape",
    ),
    (
        "params too short",
        lambda: MODEL.apply(PARAMS[:1], jnp.zeros((1, 2))),
        ValueError,
        r"params: expected a list with one entry per layer \(3",
    ),
    ("sizes too short", lambda: fnn.mlp([3]), ValueError, r"sizes: expected"),
    ("sizes zero", lambda: fnn.mlp([3, 0, 1]), ValueError, r"sizes\[1\]: expected a positive"),
    ("dense fan_out", lambda: fnn.layers.dense(-2), ValueError, r"fan_out must be a positive"),
    ("dropout rate", lambda: fnn.layers.dropout(1.5), ValueError, r"rate must be in \[0, 1\)"),
    (
        "unknown activation",
        lambda: activations.get("swish2"),
        ValueError,
        r"unknown activation 'swish2'; expected one of: .*relu",
    ),
    ("unknown loss", lambda: losses.get("l1"), ValueError, r"unknown loss 'l1'; expected one"),
    (
        "labels wrong shape",
        lambda: losses.get("softmax_cross_entropy").fn(
            jnp.zeros((4, 3)), jnp.zeros((4, 3), jnp.int32)
        ),
        ValueError,
        r"integer labels must have shape \(4,\)",
    ),
    (
        "mse target shape",
        lambda: losses.get("mse").grad(jnp.zeros((4, 2)), jnp.zeros((4,))),
        ValueError,
        r"mse: target must have the shape of pred",
    ),
    # training data
    (
        "x/y lengths",
        lambda: fit(y=Y[:10]),
        ValueError,
        r"x and y must have the same number of rows.*20 rows.*10 rows",
    ),
    (
        "batch too large",
        lambda: fit(batch_size=64),
        ValueError,
        r"batch_size: 64 is larger than the dataset \(20 rows\)",
    ),
    ("batch zero", lambda: fit(batch_size=0), ValueError, r"batch_size: expected a positive"),
    (
        "float labels",
        lambda: fit(y=Y.astype(np.float32)),
        TypeError,
        r"y: softmax_cross_entropy takes integer class labels.*got float labels",
    ),
    (
        "labels out of range",
        lambda: fit(y=Y + 1),
        ValueError,
        r"class labels must lie in 0..2.*from 1 to 3",
    ),
    ("negative labels", lambda: fit(y=Y - 1), ValueError, r"class labels must lie in 0..2"),
    (
        "NaN in x",
        lambda: fit(x=_with_nan(X, 3)),
        ValueError,
        r"data x: 1 of 20 rows hold NaN or inf \(the first is row 3\)",
    ),
    (
        "inf in x",
        lambda: fit(x=_with_nan(_with_nan(X, 5, np.inf), 7, -np.inf)),
        ValueError,
        r"data x: 2 of 20 rows hold NaN or inf \(the first is row 5\)",
    ),
    (
        "NaN in y",
        lambda: train.fit(
            fnn.mlp([2, 1]),
            "mse",
            OPT,
            (X, _with_nan(np.zeros((20, 1), np.float32), 2)),
            epochs=1,
            batch_size=4,
            key=jax.random.key(0),
            progress=False,
        ),
        ValueError,
        r"data y: 1 of 20 rows hold NaN",
    ),
    ("empty dataset", lambda: fit(x=X[:0], y=Y[:0]), ValueError, r"the dataset is empty"),
    (
        "integer x",
        lambda: fit(x=X.astype(np.int32)),
        TypeError,
        r"data x: expected a floating dtype, got int32",
    ),
    (
        "x wrong width",
        lambda: fit(x=np.zeros((20, 3), np.float32)),
        ValueError,
        r"data x: expected shape \[n, 2\] for this model, got \(20, 3\)",
    ),
    ("not a key", lambda: fit(key=0), TypeError, r"key: expected a JAX PRNG key"),
    ("negative epochs", lambda: fit(epochs=-1), ValueError, r"epochs: expected an int >= 0"),
    (
        "eval data wrong",
        lambda: fit(eval_data=(X[:, :1], Y)),
        ValueError,
        r"eval_data x: expected shape \[n, 2\]",
    ),
    ("too many devices", lambda: fit(devices=64), ValueError, r"devices: expected 1\.\.1"),
    (
        "bce target shape",
        lambda: train.fit(
            fnn.mlp([2, 1]),
            "binary_cross_entropy",
            OPT,
            (X, (Y > 0).astype(np.float32)),
            epochs=1,
            batch_size=4,
            key=jax.random.key(0),
            progress=False,
        ),
        ValueError,
        r"binary_cross_entropy needs targets shaped like",
    ),
    # optimizers
    ("lr zero", lambda: optim.get("adam", 0.0), ValueError, r"lr"),
    ("lr negative", lambda: optim.get("sgd", -1e-3), ValueError, r"lr"),
    ("unknown optimizer", lambda: optim.get("lion", 1e-3), ValueError, r"adam"),
    (
        "unknown schedule",
        lambda: optim.get("adam", 1e-3, schedule="linear"),
        ValueError,
        r"schedule: unknown 'linear'",
    ),
    (
        "schedule without steps",
        lambda: optim.get("adam", 1e-3, schedule="cosine"),
        ValueError,
        r"steps: the 'cosine' schedule needs the total number of updates",
    ),
    # data
    (
        "unknown dataset",
        lambda: data.load("cifar10"),
        ValueError,
        r"unknown dataset 'cifar10'; expected one of",
    ),
    ("missing mnist", lambda: data.load("mnist:/no/such/dir"), FileNotFoundError, r"/no/such/dir"),
    # checking
    (
        "compare structures",
        lambda: check.compare({"a": jnp.ones(2)}, {"b": jnp.ones(2)}),
        ValueError,
        r"\['a'\]|\['b'\]",
    ),
    (
        "lr_find range",
        lambda: diagnostics.lr_find(MODEL, "softmax_cross_entropy", (X, Y), min_lr=1.0, max_lr=0.5),
        ValueError,
        r"min_lr, max_lr: expected 0 < min_lr < max_lr",
    ),
]


@pytest.mark.parametrize(
    ("fn", "exc", "pattern"), [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES]
)
def test_api_bad_input(fn, exc, pattern):
    with pytest.raises(exc, match=pattern):
        fn()


# ------------------------------------------------------------------------- checkpoints


@pytest.fixture
def saved(tmp_path):
    state = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.asarray(3, jnp.int32)}
    path = checkpoint.save(tmp_path, state, step=3)
    return tmp_path, path, state


def test_checkpoint_truncated(saved):
    folder, path, state = saved
    raw = Path(path).read_bytes()
    bad = os.path.join(folder, "ckpt-00000009.npz")
    Path(bad).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(bad)):
        checkpoint.restore(bad, state)


def test_checkpoint_corrupted_byte(saved):
    folder, path, state = saved
    raw = bytearray(Path(path).read_bytes())
    raw[len(raw) // 3] ^= 0xFF
    bad = os.path.join(folder, "ckpt-00000010.npz")
    Path(bad).write_bytes(bytes(raw))
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(bad)):
        checkpoint.restore(bad, state)


def test_checkpoint_foreign_architecture(saved):
    _, path, _ = saved
    other = {"w": jnp.zeros((3, 3)), "step": jnp.asarray(0, jnp.int32)}
    with pytest.raises(checkpoint.CheckpointError, match=r"\['w'\].*expected float.*\[3, 3\]"):
        checkpoint.restore(path, other)


def test_checkpoint_dtype_never_cast(saved):
    _, path, state = saved
    like = {"w": state["w"].astype(jnp.float32), "step": state["step"]}
    with pytest.raises(checkpoint.CheckpointError, match=r"\['w'\]"):
        checkpoint.restore(path, like)


def test_checkpoint_foreign_file(tmp_path):
    bad = tmp_path / "ckpt-00000001.npz"
    np.savez(bad, a=np.zeros(3))
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(str(bad))):
        checkpoint.restore(str(bad), {"a": np.zeros(3)})


def test_checkpoint_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        checkpoint.restore(str(tmp_path / "nope.npz"), {})


def test_checkpoint_into_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.save(f, {"a": jnp.zeros(1)}, step=1)
    assert f.read_text() == "x"


# ------------------------------------------------------------------------------ command


def _tree_hash(folder) -> str:
    h = hashlib.sha256()
    for root, _, names in sorted(os.walk(folder)):
        for name in sorted(names):
            p = os.path.join(root, name)
            h.update(p.encode())
            h.update(Path(p).read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    code = cli.main(
        [
            "train",
            "--data",
            "xor",
            "--hidden",
            "4",
            "--epochs",
            "2",
            "--quiet",
            "--checkpoint-every",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    return out


CLI_CASES = [
    (["--data", "nope"], r"--data: unknown dataset 'nope'"),
    (["--data", "mnist:/no/such"], r"/no/such"),
    (["--hidden", "-3"], r"--hidden: every width must be a positive int, got -3"),
    (["--lr", "abc"], r"--lr: expected a positive number"),
    (["--lr", "-1"], r"--lr: expected a positive finite number, got -1"),
    (["--lr", "nan"], r"--lr: expected a positive finite number, got nan"),
    (["--batch-size", "-1"], r"--batch-size: expected a positive int or 'full', got -1"),
    (["--batch-size", "many"], r"--batch-size: expected a positive int or 'full', got 'many'"),
    (["--epochs", "-2"], r"--epochs: expected a positive number, got -2"),
    (["--activation", "nope"], r"--activation: unknown 'nope'"),
    (["--schedule", "nope"], r"--schedule: unknown 'nope'"),
    (["--devices", "x"], r"--devices: expected a positive int or 'all', got 'x'"),
    (["--checkpoint-every", "-1"], r"--checkpoint-every: expected N >= 0, got -1"),
    (["--json", "/no/such/dir/r.json"], r"--json: folder /no/such/dir does not exist"),
]


@pytest.mark.parametrize(("flags", "pattern"), CLI_CASES, ids=[" ".join(c[0]) for c in CLI_CASES])
def test_command_bad_input_leaves_the_run_intact(flags, pattern, run_folder, capsys):
    before = _tree_hash(run_folder)
    code = cli.main(["train", "--quiet", "--out", str(run_folder), *flags])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(pattern, err), err
    assert _tree_hash(run_folder) == before


def test_command_resume_from_corrupt_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "ckpt-00000004.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", checkpoint.CheckpointWarning)
        code = cli.main(["train", "--quiet", "--resume", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "ckpt-00000004.npz" in err and len(err.strip().splitlines()) == 1
    assert (out / "ckpt-00000004.npz").read_bytes() == b"PK\x03\x04 not really a zip"


def test_command_out_is_a_file(tmp_path, capsys):
    f = tmp_path / "f"
    f.write_text("keep me")
    assert cli.main(["train", "--quiet", "--out", str(f)]) == 2
    assert "--out: " in capsys.readouterr().err
    assert f.read_text() == "keep me"


def test_battery_size():
    assert len(API_CASES) + len(CLI_CASES) + 9 >= 40


def test_command_resume_refuses_to_stretch_a_schedule(run_folder, capsys):
    before = _tree_hash(run_folder)
    code = cli.main(["train", "--quiet", "--resume", "--epochs", "9", "--out", str(run_folder)])
    err = capsys.readouterr().err
    assert code == 2
    assert "--epochs: the checkpointed run uses the 'cosine' schedule over 2 epochs" in err
    assert _tree_hash(run_folder) == before


# --------------------------------------------------- issue 19: runs, folders, disks, flags


def _copy_run(run_folder, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run_folder, dst)
    return dst


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_resume_refuses_flags_that_differ_from_the_saved_run(run_folder, capsys):
    before = _tree_hash(run_folder)
    code = cli.main(
        [
            "train",
            "--quiet",
            "--resume",
            "--out",
            str(run_folder),
            "--hidden",
            "16",
            "--lr",
            "0.1",
            "--seed",
            "3",
            "--data",
            "moons",
        ]
    )
    err = _one_error_line(capsys)
    assert code == 2
    for diff in (
        "--data saved xor, given moons",
        "--hidden saved 4, given 16",
        "--lr saved 0.002, given 0.1",
        "--seed saved 0, given 3",
    ):
        assert diff in err, err
    assert "On resume only --epochs (under --schedule constant), --checkpoint-every" in err
    assert _tree_hash(run_folder) == before


def test_resume_with_the_saved_flags_repeated_is_accepted(run_folder, tmp_path, capsys):
    out = _copy_run(run_folder, tmp_path)
    code = cli.main(
        [
            "train",
            "--quiet",
            "--resume",
            "--out",
            str(out),
            "--data",
            "xor",
            "--hidden",
            "4",
            "--epochs",
            "2",
        ]
    )
    assert code == 0, capsys.readouterr().err


def test_run_id_is_in_every_checkpoint_and_output(run_folder):
    run_id = json.loads((run_folder / "run.json").read_text())["run_id"]
    assert re.fullmatch(r"[0-9a-f]{12}", run_id)
    assert json.loads((run_folder / "metrics.json").read_text())["run_id"] == run_id
    ckpts = checkpoint.list_checkpoints(run_folder)
    assert len(ckpts) == 2
    for p in ckpts:
        assert checkpoint.info(p)["metadata"]["run_id"] == run_id


def test_a_fresh_run_refuses_a_folder_holding_another_run(run_folder, tmp_path, capsys):
    before = _tree_hash(run_folder)
    run_id = json.loads((run_folder / "run.json").read_text())["run_id"]
    code = cli.main(
        ["train", "--quiet", "--data", "xor", "--epochs", "1", "--out", str(run_folder)]
    )
    err = _one_error_line(capsys)
    assert code == 2
    assert f"--out: folder {run_folder} holds run {run_id}; continue it with --resume" in err
    assert "--overwrite" in err
    assert _tree_hash(run_folder) == before
    # With --overwrite the new run replaces the old one's outputs and gets its own id.
    out = _copy_run(run_folder, tmp_path)
    assert (
        cli.main(
            [
                "train",
                "--quiet",
                "--data",
                "xor",
                "--hidden",
                "3",
                "--epochs",
                "1",
                "--overwrite",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    new = json.loads((out / "run.json").read_text())
    assert new["run_id"] != run_id and new["config"]["hidden"] == [3]
    assert [checkpoint.info(p)["metadata"]["run_id"] for p in checkpoint.list_checkpoints(out)] == [
        new["run_id"]
    ]


def test_a_checkpoint_of_another_run_dropped_in_is_refused(run_folder, tmp_path, capsys):
    other = tmp_path / "other"
    assert (
        cli.main(
            [
                "train",
                "--quiet",
                "--data",
                "xor",
                "--hidden",
                "16",
                "--epochs",
                "9",
                "--seed",
                "3",
                "--out",
                str(other),
            ]
        )
        == 0
    )
    out = _copy_run(run_folder, tmp_path)
    foreign = checkpoint.list_checkpoints(other)[-1]
    shutil.copy(foreign, out)
    before = _tree_hash(out)
    code = cli.main(["train", "--quiet", "--resume", "--out", str(out)])
    err = _one_error_line(capsys)
    assert code == 2
    assert os.path.basename(foreign) in err and "belongs to run" in err
    assert "it was copied in from elsewhere" in err
    assert _tree_hash(out) == before


def test_a_locked_folder_is_refused(run_folder, capsys):
    before = _tree_hash(run_folder)
    with files.FolderLock(run_folder):
        code = cli.main(["train", "--quiet", "--resume", "--out", str(run_folder)])
    err = _one_error_line(capsys)
    assert code == 2
    assert f"folder {run_folder} is in use by another fnn run (process {os.getpid()})" in err
    assert _tree_hash(run_folder) == before


def test_planted_symlinks_at_old_temporary_names_are_never_followed(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    pid = os.getpid()
    for name in (f"metrics.json.tmp.{pid}", f"params.npz.tmp.{pid}.npz", f"r.json.tmp.{pid}"):
        os.symlink(victim, out / name)
    code = cli.main(
        [
            "train",
            "--quiet",
            "--data",
            "xor",
            "--hidden",
            "4",
            "--epochs",
            "1",
            "--out",
            str(out),
            "--json",
            str(out / "r.json"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert victim.read_text() == "precious"
    for name in ("metrics.json", "params.npz", "r.json", "curves.png", "run.json"):
        assert (out / name).is_file() and not (out / name).is_symlink()
    assert not [n for n in os.listdir(out) if n.startswith(files.TMP_PREFIX) or n.endswith(".tmp")]


def test_full_disk_is_one_line_and_loses_nothing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    flags = [
        "train",
        "--quiet",
        "--data",
        "xor",
        "--hidden",
        "4",
        "--schedule",
        "constant",
        "--checkpoint-every",
        "1",
        "--out",
        str(out),
    ]
    assert cli.main([*flags, "--epochs", "2"]) == 0
    before = _tree_hash(out)
    newest = checkpoint.latest(out)

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)  # every fnn write fsyncs: ENOSPC everywhere
    code = cli.main([*flags, "--epochs", "3", "--resume"])
    monkeypatch.undo()
    err = _one_error_line(capsys)
    assert code == 1
    assert re.search(
        r"no space left on device writing .*ckpt-\d+\.npz: needs about \d+(\.\d)? "
        r"(bytes|KiB); .* free in ",
        err,
    ), err
    assert _tree_hash(out) == before  # no temporary left, nothing changed
    assert checkpoint.latest(out) == newest
    checkpoint.info(newest)  # verifies


def test_full_disk_on_a_real_tmpfs(tmp_path, capsys):
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux; the simulated ENOSPC test covers it")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if mounted.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({mounted.stderr.strip()}); the simulated "
            f"ENOSPC test covers a full disk"
        )
    try:
        out = disk / "out"
        flags = [
            "train",
            "--quiet",
            "--data",
            "xor",
            "--hidden",
            "4",
            "--schedule",
            "constant",
            "--checkpoint-every",
            "1",
            "--out",
            str(out),
        ]
        assert cli.main([*flags, "--epochs", "1"]) == 0
        fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
        for chunk in (65536, 4096, 1):  # fill the disk to the last byte
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, bytes(chunk))
        os.close(fd)
        before = _tree_hash(out)
        code = cli.main([*flags, "--epochs", "2", "--resume"])
        err = _one_error_line(capsys)
        assert code == 1 and "no space left on device writing" in err, err
        assert _tree_hash(out) == before
        checkpoint.info(checkpoint.latest(out))
    finally:
        subprocess.run(["umount", "-l", str(disk)], timeout=30, check=False)


def test_resume_of_a_checkpoint_saved_from_python(tmp_path, capsys):
    out = tmp_path / "py"
    path = checkpoint.save(out, {"w": np.zeros(3, np.float32)}, step=4)
    before = Path(path).read_bytes()
    code = cli.main(["train", "--quiet", "--resume", "--out", str(out)])
    err = _one_error_line(capsys)
    assert code == 2
    assert f"--resume: {path} was not saved by fnn train (its metadata holds no run config" in err
    assert "fnn.checkpoint.restore" in err
    assert Path(path).read_bytes() == before
    checkpoint.save(out, {"w": np.zeros(3, np.float32)}, step=5, metadata={"config": {"a": 1}})
    code = cli.main(["train", "--quiet", "--resume", "--out", str(out)])
    assert code == 2
    assert "holds no complete fnn train config (missing ['data'," in _one_error_line(capsys)


def test_resume_skips_a_checkpoint_renamed_to_a_later_step(run_folder, tmp_path, capsys):
    out = _copy_run(run_folder, tmp_path)
    newest = checkpoint.list_checkpoints(out)[-1]
    shutil.copy(newest, out / "ckpt-00000999.npz")
    with pytest.warns(
        checkpoint.CheckpointWarning,
        match=r"ckpt-00000999\.npz: its name says step 999 but its manifest says",
    ):
        code = cli.main(["train", "--quiet", "--resume", "--out", str(out)])
    assert code == 0, capsys.readouterr().err


PROCESS_CASES = [
    (["--num-processes", "1", "--process-id", "1"], r"--process-id: expected an int in 0..0"),
    (
        ["--num-processes", "2", "--seeds", "2", "--coordinator", "127.0.0.1:1"],
        r"--num-processes: a multi-process job trains one run",
    ),
    (
        ["--num-processes", "2", "--coordinator", "127.0.0.1:1", "--join-timeout", "0"],
        r"--join-timeout: expected a positive int, got 0",
    ),
]


@pytest.mark.parametrize(("flags", "pattern"), PROCESS_CASES)
def test_process_flags_are_checked_before_joining(flags, pattern, tmp_path, capsys):
    code = cli.main(["train", "--quiet", "--data", "xor", "--out", str(tmp_path / "o"), *flags])
    assert code == 2
    assert re.search(pattern, _one_error_line(capsys))
    assert not (tmp_path / "o").exists()


def test_unknown_coordinator_host_is_named(tmp_path, capsys):
    code = cli.main(
        [
            "train",
            "--quiet",
            "--data",
            "xor",
            "--out",
            str(tmp_path / "o"),
            "--num-processes",
            "2",
            "--process-id",
            "1",
            "--coordinator",
            "no-such-host.invalid:1234",
        ]
    )
    assert code == 2
    assert "--coordinator: cannot resolve host 'no-such-host.invalid'" in _one_error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_coordinator_port_in_use_is_named(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code = cli.main(
            [
                "train",
                "--quiet",
                "--data",
                "xor",
                "--out",
                str(tmp_path / "o"),
                "--num-processes",
                "2",
                "--coordinator",
                f"127.0.0.1:{port}",
            ]
        )
    assert code == 2
    assert f"--coordinator: cannot listen on 127.0.0.1:{port}" in _one_error_line(capsys)


COMMAND_CASES = [
    (["train", "--seed", "-1"], r"--seed: expected an int in 0..4294967295, got -1"),
    (["train", "--seed", str(2**64)], r"--seed: expected an int in 0..4294967295, got 1844"),
    (["train", "--json", "{file}/r.json"], r"--json: folder .*file does not exist"),
    (["train", "--out", "{file}/run"], r"--out: cannot create folder .*: .*file is a file"),
    (["check", "--directions", "0"], r"--directions: expected a positive int, got 0"),
    (["check", "--directions", "-3"], r"--directions: expected a positive int, got -3"),
    (["lr-find", "--steps", "1000000000000"], r"--steps: expected at most 1000000, got 10"),
    (["lr-find", "--out", "{folder}.png"], r"--out: .*\.png is a folder; give a .png file"),
    (["lr-find", "--seed", "-2"], r"--seed: expected an int in 0..4294967295, got -2"),
]


@pytest.mark.parametrize(
    ("flags", "pattern"), COMMAND_CASES, ids=[" ".join(c[0]) for c in COMMAND_CASES]
)
def test_command_flags_are_checked_before_any_work(flags, pattern, tmp_path, capsys):
    (tmp_path / "file").write_text("keep")
    (tmp_path / "folder.png").mkdir()
    flags = [f.format(file=tmp_path / "file", folder=tmp_path / "folder") for f in flags]
    before = _tree_hash(tmp_path)
    code = cli.main([*flags, "--data", "xor"] if flags[0] != "check" else flags)
    assert code == 2
    assert re.search(pattern, _one_error_line(capsys))
    assert _tree_hash(tmp_path) == before


def test_primary_outputs_are_written_before_the_figure(tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "the figure failed")

    monkeypatch.setattr(plots, "training_curves", broken)
    out = tmp_path / "out"
    code = cli.main(
        [
            "train",
            "--quiet",
            "--data",
            "xor",
            "--hidden",
            "4",
            "--epochs",
            "1",
            "--out",
            str(out),
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    assert code == 1
    assert "the figure failed" in _one_error_line(capsys)
    result = json.loads((tmp_path / "r.json").read_text())
    assert json.loads((out / "metrics.json").read_text()) == result
    with np.load(out / "params.npz") as z:
        assert sorted(z.files) == ["[0]['b']", "[0]['w']", "[2]['b']", "[2]['w']"]
    assert not (out / "curves.png").exists()
    assert not [n for n in os.listdir(out) if n.startswith(files.TMP_PREFIX)]
