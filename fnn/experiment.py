"""One ``fnn train`` run: data, model, backward check, ``fit``, checkpoints, outputs.

A run is described by a config dict (the keys of :data:`CONFIG_KEYS`; the command line
builds it in :mod:`fnn.cli.train`) and lives in one folder, its *run folder*, which it owns:

* ``run.json`` names the run (``run_id``, a random hex id, and the config). The id is also
  in every checkpoint's metadata and in ``metrics.json``. A fresh run refuses a folder that
  holds another run unless told to replace it (``overwrite``); ``--resume`` continues only
  the run the folder names, and only with its saved config (:func:`resume_config`).
* While a run writes, it holds :class:`fnn.files.FolderLock` on the folder; the kernel
  releases it however the process ends, so a killed run never blocks ``--resume``.
* Every file is written atomically (:mod:`fnn.files`): metrics first, then the parameters,
  then ``--json``, then the figure.

Resuming is exact: a checkpoint holds the whole :class:`fnn.train.TrainState` at an epoch
boundary, and the data order of epoch ``e`` depends only on the run key and ``e``.

The run folder's rules (ids, claims, what may change on resume) are :mod:`fnn.runfolder`;
the sweep of several seeds or learning rates in one program is :mod:`fnn.sweep`.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import time

import jax
import jaxlib
import numpy as np
import optax

import fnn  # only for fnn.__version__
from fnn import (
    backprop,
    check,
    checkpoint,
    data,
    files,
    losses,
    models,
    optim,
    parallel,
    plots,
    runfolder,
    train,
)
from fnn.runfolder import CONFIG_KEYS, RESUMABLE, RUN_FILE, ConfigError

#: ``fit`` history names -> the names in ``metrics.json``.
HISTORY_KEYS = {
    "train_loss": "train_loss",
    "train_accuracy": "train_accuracy",
    "eval_loss": "test_loss",
    "eval_accuracy": "test_accuracy",
    "lr": "lr",
    "seconds": "seconds",
    "grad_norm": "grad_norm",
    "skipped": "skipped",
}


class BackwardMismatch(RuntimeError):
    """The hand-written backward disagrees with ``jax.grad``; ``.report`` holds the table."""

    def __init__(self, message: str, report):
        super().__init__(message)
        self.report = report


# ------------------------------------------------------------------------------ library I/O


def params_digest(params) -> str:
    """sha256 of the parameters' bytes, leaf by leaf in tree order (a run's fingerprint)."""
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(params):
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()


def save_params(path: str, params) -> str:
    """Write ``params`` atomically as an ``.npz``, one array per leaf named by pytree path."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    arrays = {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}
    size = sum(a.nbytes for a in arrays.values()) + 512 * (len(arrays) + 1)
    return files.atomic_write(path, lambda f: np.savez(f, **arrays), size=size)


def versions() -> dict:
    """The versions of fnn, jax, jaxlib, optax and Python (recorded in every output)."""
    return {
        "fnn": fnn.__version__,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "optax": optax.__version__,
        "python": platform.python_version(),
    }


def device_text(devices) -> str:
    """``"cpu x1 (cpu)"``: the platform, how many devices a run uses, and their kind."""
    devs = jax.devices()
    n = len(devs) if devices == "all" else int(devices)
    kind = devs[0].device_kind if devs else "?"
    return f"{devs[0].platform} x{n} ({kind})"


# ---------------------------------------------------------------------------- model and data


def load_data(cfg: dict, seed: int | None = None) -> data.Dataset:
    """The config's dataset (split with ``seed``, default the config's)."""
    try:
        return data.load(cfg["data"], seed=cfg["seed"] if seed is None else seed)
    except (ValueError, TypeError, FileNotFoundError) as err:
        raise ConfigError(f"--data: {err}") from None


def output_width(loss: str, classes: int) -> int:
    """Output units: one logit for two classes under mse/BCE, else one per class."""
    return 1 if loss in ("mse", "binary_cross_entropy") and classes == 2 else classes


def model_for(cfg: dict, ds: data.Dataset):
    """``(model, loss)``: the config's MLP for a loaded dataset, and its loss name."""
    loss = cfg["loss"] or ds.loss
    sizes = [math.prod(ds.feature_shape), *cfg["hidden"], output_width(loss, ds.classes)]
    return models.mlp(sizes, activation=cfg["activation"]), loss


def build(cfg: dict, ds: data.Dataset):
    """``(model, loss, optimizer, batch_size)`` of a config, for a loaded dataset."""
    model, loss = model_for(cfg, ds)
    n = len(ds.x_train)
    b = n if cfg["batch_size"] == "full" else cfg["batch_size"]
    if b > n:
        raise ConfigError(
            f"--batch-size: expected at most {n} (the training examples of {cfg['data']}), got {b}"
        )
    steps = cfg["epochs"] * (n // b)
    try:
        opt = optim.get(cfg["optimizer"], cfg["lr"][0], schedule=cfg["schedule"], steps=steps)
    except ValueError as err:
        raise ConfigError(flagify(str(err))) from None
    return model, loss, opt, b


def flagify(msg: str) -> str:
    """A library message ``"schedule: ..."`` as the command line's ``"--schedule: ..."``."""
    for word in ("schedule", "optimizer", "devices"):
        if msg.startswith(word + ":"):
            return "--" + msg
    return msg


def targets(loss: str, y, classes: int):
    """Labels in the form ``loss`` takes: int labels, or ``[n, 1]`` floats for one logit."""
    if loss == "softmax_cross_entropy":
        return y
    if classes == 2:
        return y.astype(np.float32)[:, None]
    return np.eye(classes, dtype=np.float32)[y]


def backward_check(model, loss: str, params, x, y):
    """Compare the hand-written backward with ``jax.grad`` on one batch.

    Returns:
        The :func:`fnn.check.compare` report (manual vs autodiff), one row per leaf.
    """
    record = losses.get(loss)
    manual = jax.jit(backprop.value_and_grad(model, loss))(params, x, y)[1]
    auto = jax.jit(jax.grad(lambda p: record.fn(model.apply(p, x), y)))(params)
    return check.compare(manual, auto, labels=("manual", "jax.grad"))


# ---------------------------------------------------------------------------------- a run


class Run:
    """What one ``fnn train`` run needs besides its config: where and how it writes.

    Attributes:
        out: the run folder (None on processes other than the writing one).
        resume: continue the run in ``out``; given: config keys set explicitly.
        overwrite: replace another run's outputs in ``out``.
        keep: checkpoints to keep; json: also write the results here (or None).
        progress: show a progress bar; log: ``log(text)`` prints a line.
        main: this process writes ``out``; procs: processes in the job.
        start: ``time.perf_counter()`` when the command started (for ``seconds``).
    """

    def __init__(
        self,
        out,
        *,
        resume=False,
        given=(),
        overwrite=False,
        keep=3,
        json=None,
        progress=False,
        log=print,
        main=True,
        procs=1,
        start=None,
    ):
        self.out, self.resume, self.given, self.overwrite = out, resume, set(given), overwrite
        self.keep, self.json, self.progress, self.log = keep, json, progress, log
        self.main, self.procs = main, procs
        self.start = time.perf_counter() if start is None else start


def train_one(cfg: dict, run: Run) -> dict:
    """Train one run of ``cfg`` as ``run`` says; returns the results (what ``metrics.json``
    holds) and writes the outputs.

    Raises:
        ConfigError: bad config or run folder (before anything is written).
        BackwardMismatch: the hand-written backward disagrees with ``jax.grad``.
        fnn.train.NonFiniteError: a NaN/inf under ``on_nonfinite="raise"`` (the last finite
            state is saved to ``out/last-finite`` first; ``.saved`` holds its path).
        fnn.files.DiskFullError, fnn.files.FolderBusyError: as named.
        KeyboardInterrupt: Ctrl-C or SIGTERM, after saving the newest epoch.
    """
    path, meta = None, None
    if run.resume:
        path, cfg, meta = runfolder.resume_point(run.out, cfg, run.given)
        if path is None:
            run.log(f"--resume: no checkpoint in {run.out} yet; starting a new run")
    ds = load_data(cfg)
    model, loss, opt, b = build(cfg, ds)
    ytr, yte = targets(loss, ds.y_train, ds.classes), targets(loss, ds.y_test, ds.classes)
    devices = None if cfg["devices"] == 1 else cfg["devices"]
    if run.procs > 1 and devices is None:
        devices = "all"  # a multi-process job trains over every process's devices
    key = jax.random.key(cfg["seed"])
    init = None
    if path is not None:  # read-only until the folder is locked below
        like = train.init_state(model.init(key), opt, train.run_key(key))
        init, _ = checkpoint.restore(path, like)
    report = checked_backward(
        model, loss, model.init(key) if init is None else init.params, ds.x_train[:b], ytr[:b]
    )
    lock = files.FolderLock(run.out) if run.main else None
    if lock is not None:
        os.makedirs(run.out, exist_ok=True)
        lock.__enter__()
    try:
        continuing = run.resume and (path is not None or runfolder.named(run.out))
        run_id = runfolder.run_id_for(run.out if continuing else None, meta, run.procs)
        if run.main and not continuing:
            runfolder.claim(run.out, run_id, cfg, run.overwrite)
        if path is not None:
            run.log(f"resuming from {path} (epoch {meta.get('epoch')})")
        saved = (meta or {}).get("history", {})
        fitted = _fit(
            cfg, run, (model, loss, opt, b), ds, (ytr, yte), key, devices, init, saved, run_id
        )
        params = parallel.host_local(fitted[0].params)  # replicated: this process's copy
        result = _result(cfg, run, (model, loss), params, fitted[1], saved, ds, yte, devices)
        result["run_id"] = run_id
        result["backward_check"] = {"ok": bool(report.ok), "max_rel_err": report.max_rel_err}
        if run.main:
            write_outputs(run.out, result, params, run.json)
        elif run.json:  # every process may report to its own --json file
            files.write_json(run.json, result)
        return result
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)


def checked_backward(model, loss: str, params, x, y):
    """:func:`backward_check`, raising :class:`BackwardMismatch` when a leaf disagrees."""
    report = backward_check(model, loss, params, x, y)
    if not report.ok:
        raise BackwardMismatch(
            f"the hand-written backward disagrees with jax.grad on one batch (max relative "
            f"error {report.max_rel_err:.3g}); nothing was trained; the per-leaf table is above",
            report,
        )
    return report


def _merge(saved: dict, history: dict) -> dict:
    return {k: [*saved.get(k, []), *history.get(k, [])] for k in {*saved, *history}}


def _fit(cfg, run, built, ds, ys, key, devices, init, saved, run_id):
    """``fit`` with a checkpoint every ``checkpoint_every`` epochs and at the end, and the
    newest epoch saved on an interrupt (Ctrl-C, SIGTERM)."""
    model, loss, opt, b = built
    every, last = cfg["checkpoint_every"], {}

    def save(state, epoch, history, folder=None):
        return checkpoint.save(
            folder or run.out,
            parallel.host_local(state),  # saving runs no multi-process program
            step=int(state.step),
            metadata={
                "config": cfg,
                "history": _merge(saved, history),
                "epoch": epoch,
                "run_id": run_id,
            },
            keep=None if folder else run.keep,
        )

    def callback(e, state, history):
        # The last epoch is always checkpointed, so every finished run leaves a state that
        # --resume can pick up; --checkpoint-every N adds one every N epochs.
        if run.main and (e + 1 == cfg["epochs"] or (every and (e + 1) % every == 0)):
            save(state, e + 1, history)
        last.update(
            state=jax.tree.map(lambda a: a.copy(), state),
            epoch=e + 1,
            history={k: list(v) for k, v in history.items()},
        )  # survives donation
        return False

    try:
        return train.fit(
            model,
            loss,
            opt,
            (ds.x_train, ys[0]),
            epochs=cfg["epochs"],
            batch_size=b,
            key=key,
            eval_data=(ds.x_test, ys[1]) if len(ds.x_test) else None,
            grad=cfg["grad"],
            devices=devices,
            progress=run.progress,
            init=init,
            on_nonfinite=cfg["on_nonfinite"],
            callback=callback,
        )
    except KeyboardInterrupt:
        if last and run.main:
            p = save(last["state"], last["epoch"], last["history"])
            run.log(f"interrupted: saved {p}; continue with --resume --out {run.out}")
        raise
    except train.NonFiniteError as err:
        err.saved = None
        if run.main:
            err.saved = save(
                err.state, err.epoch, err.history, os.path.join(run.out, "last-finite")
            )
        raise


def _result(cfg, run, built, params, history, saved, ds, yte, devices) -> dict:
    model, loss = built
    full = {HISTORY_KEYS[k]: v for k, v in _merge(saved, history).items() if k in HISTORY_KEYS}
    test = train.evaluate(model, loss, params, (ds.x_test, yte)) if len(ds.x_test) else {}
    result = {
        "config": cfg,
        "test_accuracy": test.get("accuracy"),
        "test_loss": test.get("loss"),
        "history": full,
        "epochs": len(full.get("train_loss", [])),
        "skipped": sum(full["skipped"]) if "skipped" in full else None,
        "params_digest": params_digest(params),
        "device": device_text("all" if devices == "all" else cfg["devices"]),
        "versions": versions(),
        "seconds": time.perf_counter() - run.start,
        "out": run.out,
    }
    if run.procs > 1:
        result["process"] = {"index": jax.process_index(), "count": jax.process_count()}
    return result


def write_outputs(out: str, result: dict, params, json_path: str | None) -> None:
    """The run's outputs, primary first: ``metrics.json``, ``params.npz``, ``--json``, then
    ``curves.png`` (each atomic; a figure that fails never costs the others)."""
    files.write_json(os.path.join(out, "metrics.json"), result)
    save_params(os.path.join(out, "params.npz"), params)
    if json_path:
        files.write_json(json_path, result)
    hist = result["history"]
    if hist.get("train_loss"):
        title = f"fnn train --data {result['config']['data']}"
        files.atomic_write(
            os.path.join(out, "curves.png"),
            lambda tmp: plots.training_curves(hist, tmp, title=title),
            suffix=".png",
            by_path=True,
        )


__all__ = [
    "CONFIG_KEYS",
    "HISTORY_KEYS",
    "RESUMABLE",
    "RUN_FILE",
    "BackwardMismatch",
    "ConfigError",
    "Run",
    "backward_check",
    "build",
    "checked_backward",
    "device_text",
    "flagify",
    "load_data",
    "model_for",
    "output_width",
    "params_digest",
    "save_params",
    "targets",
    "train_one",
    "versions",
    "write_outputs",
]
