"""``fnn train --seeds K`` and ``fnn train --lr A,B,C``: a sweep of runs in one program.

:func:`fnn.runner.main` hands a sweep here. The runs are the cross product of the seeds
(``--seed S --seeds K`` gives ``S, S+1, ..., S+K-1``) and the learning rates, trained at once
by :func:`fnn.many.fit_many`. Run ``(s, lr)`` is the run ``fnn train --seed s --lr lr`` would
train alone: its own data split (the dataset's seed is the run's seed), its own
initialisation and data order, and the same optimizer and schedule. Its ``params_digest``
equals the single run's wherever vmap keeps the float32 arithmetic identical, which on CPU
holds for ``sgd``, ``momentum``, ``nesterov`` and ``rmsprop`` (and ``gd``); with ``adam`` and
``adamw`` XLA simplifies the bias correction's divisions differently under vmap, so the
digests differ while the parameters agree to round-off (see :mod:`fnn.many`).

``--devices N`` splits the runs evenly over N devices (the run count must be a multiple of
N); on a CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` gives N devices, one core
each. Checkpoints (``--checkpoint-every``, ``--resume``) are refused for sweeps.

Outputs in ``--out``: ``metrics.json`` (and ``--json PATH``) with ``config``, ``runs`` (per
run: ``seed``, ``lr``, ``test_accuracy``, ``test_loss``, ``history``, ``params_digest``),
``test_accuracy_mean`` and ``test_accuracy_std`` (sample standard deviation over the runs),
``max_runs`` (how many runs fit in memory at once), ``device`` and ``versions``; and
``params.npz`` with every run's final parameters stacked along a leading run axis.
"""

from __future__ import annotations

import math
import os
import sys
import time

from fnn.cli_train import UsageError, _device_text, _save_params, _versions, _write_json
from fnn.cli_train import params_digest as _digest


def _refuse(cfg: dict, args) -> None:
    if args.resume or cfg["checkpoint_every"]:
        flag = "--resume" if args.resume else "--checkpoint-every"
        raise UsageError(
            f"{flag}: checkpoints are not supported for sweeps (--seeds or several "
            f"--lr values); train one run alone (--seed S --lr L) to checkpoint "
            f"it"
        )
    if getattr(args, "num_processes", 1) != 1:
        raise UsageError("--num-processes: a sweep runs in one process")


def _lr_factory(cfg: dict, steps: int):
    """``learning_rate -> optimizer``: the chain ``fnn.optim.get`` builds for the CLI, with the
    rate as an argument so that ``optax.inject_hyperparams`` can feed each run its own."""
    from fnn import optim

    return optim.factory(cfg["optimizer"], schedule=cfg["schedule"], steps=steps)


def _same(a, b) -> bool:
    import numpy as np

    return all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))


def main(cfg: dict, args, out: str, console, start: float) -> int:
    """Train the sweep of a parsed config; returns the exit status."""
    _refuse(cfg, args)
    import jax
    import numpy as np

    from fnn import data, many, train
    from fnn.runner import HISTORY_KEYS, build, targets

    seeds = [cfg["seed"] + i for i in range(cfg["seeds"] or 1)]
    lrs = cfg["lr"]
    runs = [(s, lr) for s in seeds for lr in lrs]
    sets = {}
    for s in seeds:
        try:
            sets[s] = data.load(cfg["data"], seed=s)
        except (ValueError, TypeError, FileNotFoundError) as err:
            raise UsageError(f"--data: {err}") from None
    ds0 = sets[seeds[0]]
    model, loss, opt, b = build(cfg, ds0)
    parts = {
        s: (
            d.x_train,
            targets(loss, d.y_train, d.classes),
            d.x_test,
            targets(loss, d.y_test, d.classes),
        )
        for s, d in sets.items()
    }
    # One shared copy when the seed does not change the data (MNIST files); else per run.
    shared = all(_same(parts[s], parts[seeds[0]]) for s in seeds)
    tr = [parts[s][:2] for s, _ in runs]
    te = [parts[s][2:] for s, _ in runs]
    has_test = len(ds0.x_test) > 0
    if len(lrs) == 1:
        optimizer, hparams = opt, None  # the very optimizer a single run uses
    else:
        steps = cfg["epochs"] * (len(ds0.x_train) // b)
        optimizer, hparams = _lr_factory(cfg, steps), {"learning_rate": [lr for _, lr in runs]}
    fits = many.max_runs(
        model,
        optimizer,
        b,
        n=len(ds0.x_train),
        hparams=hparams,
        per_run_data=not shared,
        eval_n=len(ds0.x_test) if has_test else 0,
    )

    def count(k, word):
        return f"{k} {word}" + ("s" if k != 1 else "")

    console.print(
        f"sweep: {count(len(runs), 'run')} ({count(len(seeds), 'seed')} x "
        f"{count(len(lrs), 'learning rate')}) in one program; up to {fits} fit in "
        f"memory at once"
    )
    try:
        states, histories = many.fit_many(
            model,
            loss,
            optimizer,
            tr[0] if shared else tr,
            epochs=cfg["epochs"],
            batch_size=b,
            keys=[jax.random.key(s) for s, _ in runs],
            hparams=hparams,
            eval_data=None if not has_test else (te[0] if shared else te),
            grad=cfg["grad"],
            on_nonfinite=cfg["on_nonfinite"],
            progress=not args.quiet,
            devices=None if cfg["devices"] == 1 else cfg["devices"],
        )
    except ValueError as err:
        if str(err).startswith("devices:"):
            raise UsageError(f"--{err}") from None
        raise
    except train.NonFiniteError as err:
        console.print(f"[red]fnn train: {err}[/red]")
        print(f"fnn train: error: {str(err).split(';')[0]}", file=sys.stderr)
        return 1

    results = []
    for k, (s, lr) in enumerate(runs):
        params = many.take(states.params, k)
        test = train.evaluate(model, loss, params, te[k]) if has_test else {}
        results.append(
            {
                "seed": s,
                "lr": lr,
                "test_accuracy": test.get("accuracy"),
                "test_loss": test.get("loss"),
                "history": {
                    HISTORY_KEYS[m]: v for m, v in histories[k].items() if m in HISTORY_KEYS
                },
                "params_digest": _digest(params),
            }
        )
    accs = [r["test_accuracy"] for r in results if r["test_accuracy"] is not None]
    result = {
        "config": cfg,
        "runs": results,
        "test_accuracy_mean": float(np.mean(accs)) if accs else None,
        "test_accuracy_std": float(np.std(accs, ddof=1))
        if len(accs) > 1
        else (0.0 if accs else None),
        "epochs": cfg["epochs"],
        "max_runs": int(fits),
        "device": _device_text(cfg["devices"]),
        "versions": _versions(),
        "seconds": time.perf_counter() - start,
        "out": out,
    }
    _write_json(os.path.join(out, "metrics.json"), result)
    if args.json:
        _write_json(args.json, result)
    _save_params(os.path.join(out, "params.npz"), states.params)
    _summary(console, result)
    return 0


def _fmt(v, spec=".4f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _summary(console, result: dict) -> None:
    from rich.table import Table

    table = Table(title=f"fnn train: {len(result['runs'])} runs")
    for name in ("run", "seed", "lr", "test accuracy", "test loss", "params digest"):
        table.add_column(name, justify="left" if name == "params digest" else "right")
    for k, r in enumerate(result["runs"]):
        table.add_row(
            str(k),
            str(r["seed"]),
            f"{r['lr']:g}",
            _fmt(r["test_accuracy"]),
            _fmt(r["test_loss"]),
            r["params_digest"][:16],
        )
    console.print(table)
    console.print(
        f"test accuracy {_fmt(result['test_accuracy_mean'])} +- "
        f"{_fmt(result['test_accuracy_std'])} (mean +- std over "
        f"{len(result['runs'])} runs)   time {result['seconds']:.1f} s   device "
        f"{result['device']}   outputs {result['out']}"
    )


__all__ = ["main"]
