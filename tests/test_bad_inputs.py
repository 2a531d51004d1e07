"""A battery of malformed inputs across the Python API and the command.

Each row: what is fed in, the exception type, and a pattern the message must match (it names
the argument, the expectation and what was found). Command rows must exit 2 with one line on
stderr and no traceback, and must leave an existing run folder byte-for-byte unchanged.
"""

import hashlib
import os
import re
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn import activations, check, checkpoint, cli, data, diagnostics, losses, optim, train

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
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
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
