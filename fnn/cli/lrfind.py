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

import math
import os

import jax
import numpy as np

from fnn import diagnostics, experiment, files, optim, plots
from fnn.cli import common
from fnn.cli.common import UsageError

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

#: The most steps a sweep may take (each is one minibatch step; the arrays are this long).
MAX_STEPS = 1_000_000


def add_parser(sub) -> None:
    d = DEFAULTS
    p = sub.add_parser(
        "lr-find",
        help="learning-rate range test: sweep the rate, plot the loss, suggest a rate",
        description=__doc__.split("\n\n")[0],
    )
    common.add_model_flags(p, d)
    p.add_argument(
        "--optimizer",
        default=d["optimizer"],
        help=f"{', '.join(optim.NAMES)} (default {d['optimizer']})",
    )
    p.add_argument(
        "--min-lr",
        type=float,
        default=d["min_lr"],
        help=f"the rate of the first step (default {d['min_lr']})",
    )
    p.add_argument(
        "--max-lr",
        type=float,
        default=d["max_lr"],
        help=f"the rate of the last step (default {d['max_lr']})",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=d["steps"],
        help=f"steps of the sweep, 10..{MAX_STEPS} (default {d['steps']})",
    )
    p.add_argument(
        "--batch-size", type=int, default=d["batch_size"], help=f"(default {d['batch_size']})"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=d["seed"],
        help=f"seed of the data split, the initial parameters and the batch order, "
        f"0..2**32-1 (default {d['seed']})",
    )
    p.add_argument(
        "--out",
        default=None,
        help="output folder, or a .png path for the figure (default runs/lr-find-<date-time>/)",
    )
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    common.add_common_flags(p, "the results")


def _parse(args) -> dict:
    v = {k: common.value(args, DEFAULTS, k) for k in ("data", "hidden", "activation")}
    cfg = {
        **v,
        "hidden": common.parse_hidden(v["hidden"]),
        "loss": args.loss,
        "optimizer": args.optimizer,
        "min_lr": args.min_lr,
        "max_lr": args.max_lr,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seed": args.seed,
    }
    common.check_model_flags(args)
    common.check_choice(args.optimizer, optim.NAMES, "--optimizer")
    for flag, lr in (("--min-lr", args.min_lr), ("--max-lr", args.max_lr)):
        if not (lr > 0 and math.isfinite(lr)):
            raise UsageError(f"{flag}: expected a positive finite number, got {lr}")
    if not args.max_lr > args.min_lr:
        raise UsageError(
            f"--min-lr, --max-lr: expected --min-lr < --max-lr, got {args.min_lr} and {args.max_lr}"
        )
    if args.steps < 10:
        raise UsageError(f"--steps: expected at least 10, got {args.steps}")
    if args.steps > MAX_STEPS:
        raise UsageError(f"--steps: expected at most {MAX_STEPS}, got {args.steps}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size: expected a positive int, got {args.batch_size}")
    common.check_seed(args.seed)
    return cfg


def figure_path(out: str | None) -> tuple[str, str]:
    """``(folder, png)``: ``out`` itself when it ends in .png, else ``out/lr-find.png``;
    checked (a folder named like a figure, a file named like a folder) but not created."""
    out = out or common.default_out("lr-find-")
    if out.lower().endswith(".png"):
        if os.path.isdir(out):
            raise UsageError(f"--out: {out} is a folder; give a .png file path or a folder")
        folder, path = os.path.dirname(os.path.abspath(out)), out
    else:
        if os.path.exists(out) and not os.path.isdir(out):
            raise UsageError(f"--out: {out} exists and is a file; give a folder or a .png path")
        folder, path = out, os.path.join(out, "lr-find.png")
    common.check_outputs(out=folder)
    return folder, path


def run(args) -> int:
    cfg = _parse(args)
    folder, figure = figure_path(args.out)  # every output path, before the sweep
    common.check_outputs(json_path=args.json)
    ds = experiment.load_data(cfg)
    model, loss = experiment.model_for(cfg, ds)
    n = len(ds.x_train)
    if cfg["batch_size"] > n:
        raise UsageError(
            f"--batch-size: expected at most {n} (the training examples of "
            f"{cfg['data']}), got {cfg['batch_size']}"
        )
    x = ds.x_train.reshape(n, math.prod(ds.feature_shape))
    y = experiment.targets(loss, ds.y_train, ds.classes)
    result = diagnostics.lr_find(
        model,
        loss,
        (x, y),
        optimizer=optim.rule(cfg["optimizer"]),
        min_lr=cfg["min_lr"],
        max_lr=cfg["max_lr"],
        steps=cfg["steps"],
        batch_size=cfg["batch_size"],
        key=jax.random.key(cfg["seed"]),
    )
    payload = {
        "config": {**cfg, "loss": loss},
        "suggested_lr": result.suggested_lr,
        "min_loss_lr": result.min_loss_lr,
        "diverged_at": result.diverged_at,
        "rule": RULE,
        "steps_run": len(result.lrs),
        "lrs": result.lrs,
        "losses": result.losses,
        "smoothed": result.smoothed,
        "figure": figure,
        "device": experiment.device_text(1),
        "versions": experiment.versions(),
    }
    os.makedirs(folder, exist_ok=True)
    files.write_json(os.path.splitext(figure)[0] + ".json", payload)  # primary: beside the figure
    if args.json:
        files.write_json(args.json, payload)
    title = f"fnn lr-find: {cfg['data']}, {cfg['optimizer']}"
    files.atomic_write(
        figure,
        lambda tmp: plots.lr_sweep(result, tmp, title=title),
        suffix=".png",
        by_path=True,
    )
    if not args.quiet:
        _report(cfg, result, figure)
    return 0


def _report(cfg: dict, result, figure: str) -> None:
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
