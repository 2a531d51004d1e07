"""One ``fnn train`` run: data, model, optimizer, ``fit``, checkpoints and outputs.

The flag parsing lives in :mod:`fnn.cli_train`; this module does the work. Resuming is exact:
a checkpoint holds the whole :class:`fnn.train.TrainState` (parameters, optimizer state, step
and key) at an epoch boundary, plus the config and the history, and the data order of epoch
``e`` depends only on the run key and ``e`` (:func:`fnn.train.epoch_indices`). A run killed
and resumed therefore ends bitwise identical to one that never stopped.
"""

from __future__ import annotations

import os
import time

from fnn.cli_train import (
    UsageError,
    _device_text,
    _parse_config,
    _prepare_out,
    _save_params,
    _versions,
    _write_json,
    check_json_path,
    params_digest,
)

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


def _console(quiet: bool):
    from rich.console import Console

    return Console(quiet=quiet, highlight=False)


def build(cfg: dict, ds):
    """The model, loss and optimizer of a config, for a loaded dataset."""
    import fnn
    from fnn import optim

    loss = cfg["loss"] or ds.loss
    out = ds.classes
    if loss in ("mse", "binary_cross_entropy") and ds.classes == 2:
        out = 1  # one output unit for a two-class problem under these losses
    sizes = [int(_prod(ds.feature_shape)), *cfg["hidden"], out]
    model = fnn.mlp(sizes, activation=cfg["activation"])
    n = len(ds.x_train)
    b = n if cfg["batch_size"] == "full" else cfg["batch_size"]
    if b > n:
        raise UsageError(
            f"--batch-size: expected at most {n} (the training examples of {cfg['data']}), got {b}"
        )
    steps = cfg["epochs"] * (n // b)
    try:
        opt = optim.get(cfg["optimizer"], cfg["lr"][0], schedule=cfg["schedule"], steps=steps)
    except ValueError as err:
        raise UsageError(_flagify(str(err))) from None
    return model, loss, opt, b


def _flagify(msg: str) -> str:
    for word, flag in (("schedule:", "--schedule:"), ("optimizer:", "--optimizer:")):
        if msg.startswith(word):
            return flag + msg[len(word) :]
    return msg


def _prod(shape) -> int:
    p = 1
    for s in shape:
        p *= int(s)
    return p


def targets(loss: str, y, classes: int):
    """Labels in the form ``loss`` takes: int labels, or ``[n, 1]`` floats for one logit."""
    import numpy as np

    if loss == "softmax_cross_entropy":
        return y
    if classes == 2:
        return y.astype(np.float32)[:, None]
    return np.eye(classes, dtype=np.float32)[y]


def main(args, start: float) -> int:
    cfg = _parse_config(args)
    # Multi-process (issue 9): join the job before anything touches a device; process 0
    # alone writes --out (the others only read its checkpoints on --resume).
    procs = getattr(args, "num_processes", 1)
    main_process = _join(args, procs)
    out = _prepare_out(args.out, args.resume) if main_process or args.out else None
    console = _console(args.quiet or not main_process)
    if args.json:
        check_json_path(args.json)

    import jax

    from fnn import checkpoint, data, parallel, train

    saved_history: dict = {}
    path = None
    resume_state = None
    if args.resume:
        path = checkpoint.latest(out)
        if path is None:
            # Nothing saved yet (killed before the first checkpoint): start from scratch, so
            # a restart loop can always pass --resume.
            console.print(f"--resume: no checkpoint in {out} yet; starting a new run")
        else:
            meta = checkpoint.info(path)["metadata"]
            epochs = cfg["epochs"] if args.epochs is not None else meta["config"]["epochs"]
            if epochs != meta["config"]["epochs"] and meta["config"]["schedule"] != "constant":
                # The schedule's length is part of the optimizer: a run extended under another
                # length would not be the run that was checkpointed.
                raise UsageError(
                    f"--epochs: the checkpointed run uses the {meta['config']['schedule']!r} "
                    f"schedule over {meta['config']['epochs']} epochs; it can only resume to "
                    f"that length (start a new run to train longer, or use --schedule "
                    f"constant to extend runs)"
                )
            cfg = {
                **meta["config"],
                "epochs": epochs,
                "checkpoint_every": cfg["checkpoint_every"] or meta["config"]["checkpoint_every"],
            }
            saved_history = meta.get("history", {})
    if len(cfg["lr"]) > 1 or cfg["seeds"]:
        if procs > 1:
            raise UsageError(
                "--num-processes: a multi-process job trains one run; run sweeps "
                "(several --lr values or --seeds) in one process"
            )
        from fnn import sweep

        return sweep.main(cfg, args, out, console, start)

    try:
        ds = data.load(cfg["data"], seed=cfg["seed"])
    except (ValueError, TypeError, FileNotFoundError) as err:
        raise UsageError(f"--data: {err}") from None
    model, loss, opt, b = build(cfg, ds)
    ytr = targets(loss, ds.y_train, ds.classes)
    yte = targets(loss, ds.y_test, ds.classes)
    key = jax.random.key(cfg["seed"])
    devices = None if cfg["devices"] == 1 else cfg["devices"]
    if procs > 1 and devices is None:
        devices = "all"  # a multi-process job trains over every process's devices
    if args.resume and path is not None:
        k_init, k_run = jax.random.split(key)
        like = train.init_state(model.init(k_init), opt, k_run)
        resume_state, _ = checkpoint.restore(path, like)
        console.print(f"resuming from {path} (epoch {int(resume_state.step) // (len(ytr) // b)})")

    last = {"state": None, "epoch": None}
    every = cfg["checkpoint_every"]

    def metadata(epoch, history):
        merged = {
            k: saved_history.get(k, []) + history.get(k, [])
            for k in set(saved_history) | set(history)
        }
        return {"config": cfg, "history": merged, "epoch": epoch}

    def callback(e, state, history):
        # The last epoch is always checkpointed, so every finished run leaves a state on
        # disk that --resume (or checkpoint.restore) can pick up; --checkpoint-every N adds
        # one every N epochs and the newest state for Ctrl-C.
        due = e + 1 == cfg["epochs"] or (every and (e + 1) % every == 0)
        if due and main_process:
            state_here = parallel.host_local(state)  # saving runs no multi-process program
            checkpoint.save(
                out,
                state_here,
                step=int(state_here.step),
                metadata=metadata(e + 1, history),
                keep=args.keep,
            )
        if every:
            last["state"] = jax.tree.map(lambda a: a.copy(), state)  # survives donation
            last["epoch"], last["history"] = e + 1, {k: list(v) for k, v in history.items()}
        return False

    eval_data = (ds.x_test, yte) if len(ds.x_test) else None
    try:
        state, history = train.fit(
            model,
            loss,
            opt,
            (ds.x_train, ytr),
            epochs=cfg["epochs"],
            batch_size=b,
            key=key,
            eval_data=eval_data,
            grad=cfg["grad"],
            devices=devices,
            progress=not args.quiet,
            init=resume_state,
            on_nonfinite=cfg["on_nonfinite"],
            callback=callback,
        )
    except KeyboardInterrupt:
        if last["state"] is not None and main_process:
            p = checkpoint.save(
                out,
                parallel.host_local(last["state"]),
                step=int(last["state"].step),
                metadata=metadata(last["epoch"], last["history"]),
                keep=args.keep,
            )
            console.print(f"interrupted: saved {p}; continue with --resume --out {out}")
        raise
    except train.NonFiniteError as err:
        if not main_process:
            print(f"fnn train: error: {str(err).split(';')[0]}", file=__import__("sys").stderr)
            return 1
        p = checkpoint.save(
            os.path.join(out, "last-finite"),
            parallel.host_local(err.state),
            step=int(err.state.step),
            metadata=metadata(err.epoch, err.history),
        )
        console.print(f"[red]fnn train: {err}[/red]\nlast finite state saved to {p}")
        print(
            f"fnn train: error: {str(err).split(';')[0]}; last finite state saved to {p}",
            file=__import__("sys").stderr,
        )
        return 1

    full = {
        HISTORY_KEYS[k]: [*saved_history.get(k, []), *history.get(k, [])]
        for k in {*saved_history, *history}
        if k in HISTORY_KEYS
    }
    params = parallel.host_local(state.params)  # replicated: this process's copy, whole
    test = train.evaluate(model, loss, params, (ds.x_test, yte)) if eval_data else {}
    elapsed = time.perf_counter() - start
    result = {
        "config": cfg,
        "test_accuracy": test.get("accuracy"),
        "test_loss": test.get("loss"),
        "history": full,
        "epochs": len(full.get("train_loss", [])),
        "skipped": sum(full.get("skipped", [])) if "skipped" in full else None,
        "params_digest": params_digest(params),
        "device": _device_text("all" if devices == "all" else cfg["devices"]),
        "versions": _versions(),
        "seconds": elapsed,
        "out": out,
    }
    if procs > 1:
        result["process"] = {"index": jax.process_index(), "count": jax.process_count()}
    if main_process:
        _write_outputs(out, result, params, args.json)
    elif args.json:  # every process may report to its own --json file
        _write_json(args.json, result)
    _summary(console, result, out)
    return 0


def _join(args, procs: int) -> bool:
    """Start ``jax.distributed`` for ``--num-processes > 1``; True on the writing process."""
    coordinator = getattr(args, "coordinator", None)
    if procs == 1 and coordinator is None:
        return True
    from fnn import parallel

    try:
        parallel.initialize(
            coordinator,
            procs,
            getattr(args, "process_id", 0),
            heartbeat_timeout=getattr(args, "heartbeat_timeout", None),
        )
    except ValueError as err:
        msg = str(err)
        for word, flag in (
            ("coordinator:", "--coordinator:"),
            ("num_processes:", "--num-processes:"),
            ("process_id:", "--process-id:"),
        ):
            if msg.startswith(word):
                msg = flag + msg[len(word) :]
        raise UsageError(msg) from None
    return parallel.is_main()


def _write_outputs(out: str, result: dict, params, json_path: str | None) -> None:
    from fnn import plots

    _write_json(os.path.join(out, "metrics.json"), result)
    if json_path:
        _write_json(json_path, result)
    if params is not None:
        _save_params(os.path.join(out, "params.npz"), params)
    hist = result["history"]
    if hist.get("train_loss"):
        plots.training_curves(
            hist,
            os.path.join(out, "curves.png"),
            title=f"fnn train --data {result['config']['data']}",
        )


def _summary(console, result: dict, out: str) -> None:
    from rich.table import Table

    table = Table(title="fnn train", show_header=False)
    acc = result["test_accuracy"]
    loss = result["test_loss"]
    table.add_row("test accuracy", "n/a" if acc is None else f"{acc:.4f}")
    table.add_row("test loss", "n/a" if loss is None else f"{loss:.4f}")
    table.add_row("epochs", str(result["epochs"]))
    if result.get("skipped") is not None:
        table.add_row("skipped steps", str(result["skipped"]))
    table.add_row("time", f"{result['seconds']:.1f} s")
    table.add_row("device", result["device"])
    table.add_row("params digest", result["params_digest"][:16] + "...")
    table.add_row("outputs", out)
    console.print(table)


__all__ = ["main", "build", "targets"]
