"""``fnn lr-find``: the learning-rate range test from the command line.

Trains the model the flags describe for ``--steps`` minibatch steps while the learning rate
grows geometrically from ``--min-lr`` to ``--max-lr`` (:func:`fnn.diagnostics.lr_find`),
stops when the smoothed loss diverges, prints the suggested rate and the rule behind it, and
writes the loss-against-rate figure (``lr-find.png``) and ``lr-find.json`` to ``--out``
(default ``runs/lr-find-<date-time>/``; a path ending in ``.png`` names the figure itself).

Example::

    fnn lr-find --data moons --hidden 16,16 --optimizer sgd --steps 150 --json lr.json
"""

from __future__ import annotations

import argparse
import datetime
import functools
import math
import os

from fnn.cli import UsageError

#: The rule :func:`fnn.diagnostics.lr_find` uses, in words (printed and written to the JSON).
RULE = (
    "the rate at the minimum of the smoothed loss divided by 10: at the minimum the rate "
    "is already on the edge of instability, a tenth of it still descends fast and is "
    "stable (Smith 2017, as popularised by fastai)"
)

DEFAULTS = {
    "data": "digits",
    "hidden": "256,128",
    "activation": "relu",
    "optimizer": "adam",
    "min_lr": 1e-6,
    "max_lr": 10.0,
    "steps": 200,
    "batch_size": 32,
    "seed": 0,
}


def _optimizers() -> dict:
    """name -> optax factory taking ``learning_rate`` (what ``lr_find`` schedules)."""
    import optax

    return {
        "adam": optax.adam,
        "adamw": optax.adamw,
        "sgd": optax.sgd,
        "gd": optax.sgd,  # the same rule as sgd; the name only says full batch
        "momentum": functools.partial(optax.sgd, momentum=0.9),
        "nesterov": functools.partial(optax.sgd, momentum=0.9, nesterov=True),
        "rmsprop": optax.rmsprop,
        "adagrad": optax.adagrad,
    }


def add_parser(sub) -> None:
    p = sub.add_parser(
        "lr-find",
        help="learning-rate range test: sweep the rate, plot the loss, suggest a rate",
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
    p.add_argument("--loss", default=None, help="default: the dataset's loss")
    p.add_argument(
        "--optimizer",
        default=DEFAULTS["optimizer"],
        help="adam, adamw, sgd, gd, momentum, nesterov, rmsprop or adagrad",
    )
    p.add_argument(
        "--min-lr", type=float, default=DEFAULTS["min_lr"], help="the rate of the first step"
    )
    p.add_argument(
        "--max-lr", type=float, default=DEFAULTS["max_lr"], help="the rate of the last step"
    )
    p.add_argument(
        "--steps", type=int, default=DEFAULTS["steps"], help="steps of the sweep (at least 10)"
    )
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument(
        "--seed",
        type=int,
        default=DEFAULTS["seed"],
        help="seed of the data split, the initial parameters and the batch order",
    )
    p.add_argument(
        "--out",
        default=None,
        help="output folder, or a .png path for the figure (default runs/lr-find-<date-time>/)",
    )
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results here")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _parse(args) -> dict:
    from fnn import activations, losses
    from fnn.cli_train import _parse_hidden

    cfg = {
        "data": args.data,
        "hidden": _parse_hidden(args.hidden),
        "activation": args.activation,
        "loss": args.loss,
        "optimizer": args.optimizer,
        "min_lr": args.min_lr,
        "max_lr": args.max_lr,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seed": args.seed,
    }
    if args.activation not in activations.NAMES:
        raise UsageError(
            f"--activation: unknown {args.activation!r}; expected one of: "
            f"{', '.join(activations.NAMES)}"
        )
    if args.loss is not None and args.loss not in losses.NAMES:
        raise UsageError(
            f"--loss: unknown {args.loss!r}; expected one of: {', '.join(losses.NAMES)}"
        )
    names = _optimizers()
    if args.optimizer not in names:
        raise UsageError(
            f"--optimizer: unknown {args.optimizer!r}; expected one of: {', '.join(names)}"
        )
    for flag, v in (("--min-lr", args.min_lr), ("--max-lr", args.max_lr)):
        if not (v > 0 and math.isfinite(v)):
            raise UsageError(f"{flag}: expected a positive finite number, got {v}")
    if not args.max_lr > args.min_lr:
        raise UsageError(
            f"--min-lr, --max-lr: expected --min-lr < --max-lr, got {args.min_lr} and {args.max_lr}"
        )
    if args.steps < 10:
        raise UsageError(f"--steps: expected at least 10, got {args.steps}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size: expected a positive int, got {args.batch_size}")
    return cfg


def _figure_path(out: str | None) -> str:
    """The PNG to write: ``out`` itself when it ends in .png, else ``out/lr-find.png``."""
    if out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = os.path.join("runs", f"lr-find-{stamp}")
    if out.lower().endswith(".png"):
        folder, path = os.path.dirname(os.path.abspath(out)), out
    else:
        if os.path.exists(out) and not os.path.isdir(out):
            raise UsageError(f"--out: {out} exists and is a file; give a folder or a .png path")
        folder, path = out, os.path.join(out, "lr-find.png")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out: cannot create folder {folder}: {err.strerror}") from None
    if not os.access(folder, os.W_OK):
        raise UsageError(f"--out: folder {folder} is not writable")
    return path


def _finite_list(a) -> list:
    # JSON has no NaN/inf: a diverged step's loss is written as null.
    return [float(v) if math.isfinite(v) else None for v in map(float, a)]


def run(args) -> int:
    from fnn.cli_train import _device_text, _versions, _write_json, check_json_path

    cfg = _parse(args)
    if args.json:  # check before the sweep, not after it
        check_json_path(args.json)

    import jax
    import numpy as np

    import fnn
    from fnn import data, diagnostics, plots
    from fnn.runner import targets

    try:
        ds = data.load(cfg["data"], seed=cfg["seed"])
    except (ValueError, TypeError, FileNotFoundError) as err:
        raise UsageError(f"--data: {err}") from None
    loss = cfg["loss"] or ds.loss
    n = len(ds.x_train)
    if cfg["batch_size"] > n:
        raise UsageError(
            f"--batch-size: expected at most {n} (the training examples of "
            f"{cfg['data']}), got {cfg['batch_size']}"
        )
    figure = _figure_path(args.out)  # created only once every flag has been checked
    out = 1 if loss in ("mse", "binary_cross_entropy") and ds.classes == 2 else ds.classes
    features = math.prod(ds.feature_shape)
    model = fnn.mlp([features, *cfg["hidden"], out], activation=cfg["activation"])
    x = ds.x_train.reshape(n, features)
    y = targets(loss, ds.y_train, ds.classes)
    result = diagnostics.lr_find(
        model,
        loss,
        (x, y),
        optimizer=_optimizers()[cfg["optimizer"]],
        min_lr=cfg["min_lr"],
        max_lr=cfg["max_lr"],
        steps=cfg["steps"],
        batch_size=cfg["batch_size"],
        key=jax.random.key(cfg["seed"]),
    )
    plots.lr_sweep(result, figure, title=f"fnn lr-find: {cfg['data']}, {cfg['optimizer']}")
    payload = {
        "config": {**cfg, "loss": loss},
        "suggested_lr": result.suggested_lr,
        "min_loss_lr": result.min_loss_lr,
        "diverged_at": result.diverged_at,
        "rule": RULE,
        "steps_run": len(result.lrs),
        "lrs": _finite_list(result.lrs),
        "losses": _finite_list(result.losses),
        "smoothed": _finite_list(result.smoothed),
        "figure": figure,
        "device": _device_text(1),
        "versions": _versions(),
    }
    _write_json(os.path.splitext(figure)[0] + ".json", payload)  # beside the figure
    if args.json:
        _write_json(args.json, payload)
    if not args.quiet:
        stop = (
            "ran all steps without diverging"
            if result.diverged_at is None
            else f"diverged at step {result.diverged_at} (lr {result.lrs[-1]:.3g})"
        )
        print(
            f"swept lr {cfg['min_lr']:.3g} .. {cfg['max_lr']:.3g} over {len(result.lrs)} "
            f"of {cfg['steps']} steps; {stop}"
        )
        best = float(np.min(result.smoothed[np.isfinite(result.smoothed)]))
        print(f"minimum of the smoothed loss: {best:.4g} at lr {result.min_loss_lr:.3g}")
        print(f"suggested learning rate: {result.suggested_lr:.3g}")
        print(f"rule: {RULE}")
        print(f"figure: {figure}")
    return 0
