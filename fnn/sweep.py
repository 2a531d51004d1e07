"""``fnn train --seeds K`` and ``fnn train --lr A,B,C``: a sweep of runs in one program.

``fnn train`` hands a sweep here (:func:`train_sweep`). The runs are the cross product of the seeds
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

import inspect
import os
import time

import jax
import numpy as np

from fnn import experiment, files, many, optim, runfolder, train
from fnn.experiment import HISTORY_KEYS, ConfigError


def refuse(cfg: dict, *, resume: bool, procs: int) -> None:
    """Refuse what a sweep cannot do (checkpoints, several processes), before any work."""
    if resume or cfg["checkpoint_every"]:
        flag = "--resume" if resume else "--checkpoint-every"
        raise ConfigError(
            f"{flag}: checkpoints are not supported for sweeps (--seeds or several "
            f"--lr values); train one run alone (--seed S --lr L) to checkpoint it"
        )
    if procs != 1:
        raise ConfigError(
            "--num-processes: a multi-process job trains one run; run sweeps "
            "(several --lr values or --seeds) in one process"
        )


def lr_factory(cfg: dict, steps: int):
    """``learning_rate -> optimizer``: the chain ``fnn.optim.get`` builds for the CLI, with the
    rate as an argument so that ``optax.inject_hyperparams`` can feed each run its own.

    ``optim.get`` checks and memoises a Python float; under ``inject_hyperparams`` the rate
    arrives as an array, so this calls its unmemoised builder with ``get``'s defaults.
    TODO(issue 15, engine half): use optim's public factory once it lands.
    """
    defaults = {k: p.default for k, p in inspect.signature(optim.get).parameters.items()}
    build = optim._build.__wrapped__  # noqa: SLF001 (until optim has a public factory)

    def factory(learning_rate):
        return build(
            cfg["optimizer"],
            learning_rate,
            cfg["schedule"],
            steps,
            defaults["warmup"],
            float(defaults["decay_rate"]),
            defaults["boundaries"],
            float(defaults["momentum"]),
            defaults["weight_decay"],
            defaults["clip_norm"],
            (),
        )

    return factory


def _same(a, b) -> bool:
    return all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))


def _datasets(cfg: dict, seeds: list[int]):
    sets = {s: experiment.load_data(cfg, seed=s) for s in seeds}
    model, loss, opt, b = experiment.build(cfg, sets[seeds[0]])
    parts = {
        s: (
            d.x_train,
            experiment.targets(loss, d.y_train, d.classes),
            d.x_test,
            experiment.targets(loss, d.y_test, d.classes),
        )
        for s, d in sets.items()
    }
    return sets[seeds[0]], parts, (model, loss, opt, b)


def train_sweep(cfg: dict, run: experiment.Run) -> dict:
    """Train the sweep of a config (``seeds`` x ``lr``) in one program and write its outputs.

    Returns:
        The results (what ``metrics.json`` holds): per run ``seed``, ``lr``,
        ``test_accuracy``, ``test_loss``, ``history``, ``params_digest``; their mean and std.

    Raises:
        ConfigError: bad config or run folder; fnn.train.NonFiniteError: a NaN/inf.
    """
    refuse(cfg, resume=run.resume, procs=run.procs)
    seeds = [cfg["seed"] + i for i in range(cfg["seeds"] or 1)]
    lrs = cfg["lr"]
    runs = [(s, lr) for s in seeds for lr in lrs]
    ds0, parts, (model, loss, opt, b) = _datasets(cfg, seeds)
    # One shared copy when the seed does not change the data (MNIST files); else per run.
    shared = all(_same(parts[s], parts[seeds[0]]) for s in seeds)
    tr = [parts[s][:2] for s, _ in runs]
    te = [parts[s][2:] for s, _ in runs]
    has_test = len(ds0.x_test) > 0
    if len(lrs) == 1:
        optimizer, hparams = opt, None  # the very optimizer a single run uses
    else:
        steps = cfg["epochs"] * (len(ds0.x_train) // b)
        optimizer, hparams = lr_factory(cfg, steps), {"learning_rate": [lr for _, lr in runs]}
    fits = many.max_runs(
        model,
        optimizer,
        b,
        n=len(ds0.x_train),
        hparams=hparams,
        per_run_data=not shared,
        eval_n=len(ds0.x_test) if has_test else 0,
    )
    run.log(
        f"sweep: {_count(len(runs), 'run')} ({_count(len(seeds), 'seed')} x "
        f"{_count(len(lrs), 'learning rate')}) in one program; up to {fits} fit in "
        f"memory at once"
    )
    os.makedirs(run.out, exist_ok=True)
    with files.FolderLock(run.out):
        run_id = runfolder.new_run_id()
        runfolder.claim(run.out, run_id, cfg, run.overwrite)
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
                progress=run.progress,
                devices=None if cfg["devices"] == 1 else cfg["devices"],
            )
        except ValueError as err:
            if str(err).startswith("devices:"):
                raise ConfigError(f"--{err}") from None
            raise
        result = _result(cfg, run, runs, (model, loss), states, histories, te, has_test, fits)
        result["run_id"] = run_id
        files.write_json(os.path.join(run.out, "metrics.json"), result)
        experiment.save_params(os.path.join(run.out, "params.npz"), states.params)
        if run.json:
            files.write_json(run.json, result)
    return result


def _count(k: int, word: str) -> str:
    return f"{k} {word}" + ("s" if k != 1 else "")


def _result(cfg, run, runs, built, states, histories, te, has_test, fits) -> dict:
    model, loss = built
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
                "params_digest": experiment.params_digest(params),
            }
        )
    accs = [r["test_accuracy"] for r in results if r["test_accuracy"] is not None]
    std = float(np.std(accs, ddof=1)) if len(accs) > 1 else (0.0 if accs else None)
    return {
        "config": cfg,
        "runs": results,
        "test_accuracy_mean": float(np.mean(accs)) if accs else None,
        "test_accuracy_std": std,
        "epochs": cfg["epochs"],
        "max_runs": int(fits),
        "device": experiment.device_text(cfg["devices"]),
        "versions": experiment.versions(),
        "seconds": time.perf_counter() - run.start,
        "out": run.out,
    }


__all__ = ["lr_factory", "refuse", "train_sweep"]
