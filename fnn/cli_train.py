"""``fnn train``: train an MLP on a dataset with one command.

With no flags it trains the default digits model (see ``DEFAULTS``): an MLP 64-256-128-10 with
ReLU, Adam at 2e-3 with a cosine decay to 0, batch 32, 60 epochs, on scikit-learn's bundled
8x8 handwritten digits (80/20 split, seed 0). Measured on a 2-core CPU: test accuracy 0.981,
0.983, 0.983, 0.986, 0.986 for seeds 0-4, in 3-9 s. It shows a progress bar, ends with a
summary table, and writes to ``--out`` (default ``runs/<date-time>/``): ``metrics.json``,
``curves.png`` and ``params.npz`` (the final parameters, one array per leaf, named by pytree
path) and ``ckpt-*.npz``: a checkpoint of the final training state, plus one every N
epochs with ``--checkpoint-every N``.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import time

from fnn.cli import UsageError

#: The default run: what ``fnn train`` with no flags does, chosen to reach >= 0.97 test
#: accuracy on digits. Two hidden layers are enough for 8x8 digits (64-128-64 stayed at
#: 0.967, 64-256-128 reached 0.975-0.986); Adam with a cosine decay converges without tuning
#: and the decay removes the last epochs' noise; batch 32 gives 44 steps per epoch.
DEFAULTS = {
    "data": "digits",
    "hidden": "256,128",
    "activation": "relu",
    "loss": None,  # from the dataset: softmax_cross_entropy for every bundled one
    "optimizer": "adam",
    "lr": 2e-3,
    "schedule": "cosine",
    "batch_size": "32",
    "epochs": 60,
    "seed": 0,
    "grad": "autodiff",
    "devices": "1",
    "on_nonfinite": "raise",
}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train an MLP on a dataset (default: digits) and write metrics, curves, params",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--data",
        default=DEFAULTS["data"],
        help="xor, moons, circles, spirals, digits, or mnist:PATH",
    )
    p.add_argument(
        "--hidden",
        default=DEFAULTS["hidden"],
        help="hidden layer widths, comma separated ('' for a linear model)",
    )
    p.add_argument("--activation", default=DEFAULTS["activation"])
    p.add_argument("--loss", default=DEFAULTS["loss"], help="default: the dataset's loss")
    p.add_argument("--optimizer", default=DEFAULTS["optimizer"])
    p.add_argument(
        "--lr",
        default=str(DEFAULTS["lr"]),
        help="learning rate; a comma-separated list runs a sweep in one program",
    )
    p.add_argument("--schedule", default=DEFAULTS["schedule"])
    p.add_argument("--batch-size", default=DEFAULTS["batch_size"], help="a number or 'full'")
    p.add_argument(
        "--epochs", type=int, default=None, help=f"number of epochs (default {DEFAULTS['epochs']})"
    )
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="train this many seeds (seed, seed+1, ...) at once in one program",
    )
    p.add_argument("--grad", choices=["autodiff", "manual"], default=DEFAULTS["grad"])
    p.add_argument("--devices", default=DEFAULTS["devices"], help="a number or 'all'")
    p.add_argument("--out", default=None, help="output folder (default runs/<date-time>/)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results here")
    p.add_argument("--quiet", action="store_true", help="no progress bar or table")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        metavar="N",
        help="save a checkpoint every N epochs (and on Ctrl-C)",
    )
    p.add_argument("--keep", type=int, default=3, help="checkpoints to keep")
    p.add_argument(
        "--resume", action="store_true", help="continue from the newest good checkpoint in --out"
    )
    p.add_argument(
        "--on-nonfinite",
        choices=["raise", "skip"],
        default=DEFAULTS["on_nonfinite"],
        help="on a NaN/inf loss or gradient: stop with an error, or skip the update",
    )
    p.add_argument(
        "--coordinator",
        default=None,
        metavar="HOST:PORT",
        help="multi-process: address of process 0",
    )
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument(
        "--heartbeat-timeout",
        type=int,
        default=None,
        metavar="SECONDS",
        help="multi-process: abort when a peer is silent this long (JAX's "
        "default 100 s; or FNN_HEARTBEAT_TIMEOUT)",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")


# --------------------------------------------------------------------------- configuration


def _parse_config(args) -> dict:
    cfg = {
        "data": args.data,
        "hidden": _parse_hidden(args.hidden),
        "activation": args.activation,
        "loss": args.loss,
        "optimizer": args.optimizer,
        "lr": _parse_lrs(args.lr),
        "schedule": args.schedule,
        "batch_size": _parse_batch(args.batch_size),
        "epochs": DEFAULTS["epochs"] if args.epochs is None else args.epochs,
        "seed": args.seed,
        "seeds": args.seeds,
        "grad": args.grad,
        "devices": _parse_devices(args.devices),
        "on_nonfinite": args.on_nonfinite,
        "checkpoint_every": args.checkpoint_every,
    }
    if cfg["epochs"] < 1:
        raise UsageError(f"--epochs: expected a positive number, got {cfg['epochs']}")
    if cfg["checkpoint_every"] < 0:
        raise UsageError(f"--checkpoint-every: expected N >= 0, got {cfg['checkpoint_every']}")
    if args.seeds is not None and args.seeds < 1:
        raise UsageError(f"--seeds: expected a positive number, got {args.seeds}")
    if args.keep < 1:
        raise UsageError(f"--keep: expected at least 1, got {args.keep}")
    from fnn import activations, losses

    if args.activation not in activations.NAMES:
        raise UsageError(
            f"--activation: unknown {args.activation!r}; expected one of: "
            f"{', '.join(activations.NAMES)}"
        )
    if args.loss is not None and args.loss not in losses.NAMES:
        raise UsageError(
            f"--loss: unknown {args.loss!r}; expected one of: {', '.join(losses.NAMES)}"
        )
    return cfg


def _parse_hidden(text: str) -> list[int]:
    if text.strip() == "":
        return []
    out = []
    for part in text.split(","):
        try:
            n = int(part)
        except ValueError:
            raise UsageError(
                f"--hidden: expected comma-separated positive ints such as 128,64, got {text!r}"
            ) from None
        if n < 1:
            raise UsageError(f"--hidden: every width must be a positive int, got {n} in {text!r}")
        out.append(n)
    return out


def _parse_lrs(text: str) -> list[float]:
    out = []
    for part in str(text).split(","):
        try:
            v = float(part)
        except ValueError:
            raise UsageError(
                f"--lr: expected a positive number (or a comma-separated list), got {text!r}"
            ) from None
        if not v > 0 or v != v or v == float("inf"):
            raise UsageError(f"--lr: expected a positive finite number, got {part}")
        out.append(v)
    return out


def _parse_batch(text: str):
    if str(text).lower() == "full":
        return "full"
    try:
        n = int(text)
    except ValueError:
        raise UsageError(f"--batch-size: expected a positive int or 'full', got {text!r}") from None
    if n < 1:
        raise UsageError(f"--batch-size: expected a positive int or 'full', got {n}")
    return n


def _parse_devices(text: str):
    if str(text) == "all":
        return "all"
    try:
        n = int(text)
    except ValueError:
        raise UsageError(f"--devices: expected a positive int or 'all', got {text!r}") from None
    if n < 1:
        raise UsageError(f"--devices: expected a positive int or 'all', got {n}")
    return n


def _prepare_out(path: str | None, resume: bool) -> str:
    if path is None:
        if resume:
            raise UsageError("--resume needs --out: the folder of the run to continue")
        path = os.path.join("runs", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"--out: {path} exists and is a file, expected a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out: cannot create folder {path}: {err.strerror}") from None
    if not os.access(path, os.W_OK):
        raise UsageError(f"--out: folder {path} is not writable")
    return path


# ------------------------------------------------------------------------------ helpers


def params_digest(params) -> str:
    """sha256 of the parameters' bytes, leaf by leaf in tree order (a run's fingerprint)."""
    import jax
    import numpy as np

    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(params):
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()


def _versions() -> dict:
    import jax
    import optax

    from fnn import __version__

    return {
        "fnn": __version__,
        "jax": jax.__version__,
        "jaxlib": _jaxlib_version(),
        "optax": optax.__version__,
        "python": platform.python_version(),
    }


def _jaxlib_version() -> str:
    try:
        import jaxlib

        return jaxlib.__version__
    except Exception:  # pragma: no cover
        return "unknown"


def _device_text(devices) -> str:
    import jax

    devs = jax.devices()
    n = len(devs) if devices == "all" else int(devices)
    kind = devs[0].device_kind if devs else "?"
    return f"{devs[0].platform} x{n} ({kind})"


def check_json_path(path: str) -> None:
    """Refuse a ``--json PATH`` that cannot be written, before any work is done."""
    d = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"--json: {path} is a folder, expected a file path")
    if not os.path.isdir(d):
        raise UsageError(f"--json: folder {d} does not exist")


def _write_json(path: str, payload: dict) -> None:
    check_json_path(path)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, allow_nan=True)
        f.write("\n")
    os.replace(tmp, path)


def _save_params(path: str, params) -> None:
    import jax
    import numpy as np

    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    arrays = {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}
    tmp = f"{path}.tmp.{os.getpid()}.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def run(args) -> int:
    from fnn import runner

    return runner.main(args, time.perf_counter())
