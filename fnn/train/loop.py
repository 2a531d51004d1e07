"""The one host loop: epochs of a compiled program for one run or K stacked runs.

:func:`run_epochs` is all that :func:`fnn.train.fit`, :func:`fnn.train.fit_many` and
:func:`fnn.diagnostics.lr_find` do on the host: launch an epoch, shuffle the next one while
the device trains, read the epoch's summary once, turn it into history rows
(:func:`history_row`), stop on a non-finite value (:func:`raise_nonfinite`) or when the
callback says so, and show progress.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fnn.train.step import NonFiniteError

#: What the loop does with a non-finite epoch: raise (after a guarded replay), nothing (the
#: program skipped the bad steps), or stop quietly (the caller reads the history).
LOOP_NONFINITE = ("raise", "skip", "stop")
_WHAT = {1: "loss", 2: "gradients", 3: "parameters"}


class Program(NamedTuple):
    """What the host loop runs.

    Attributes:
        epoch: ``epoch(state, x, y, idx) -> (state, summary)``, compiled.
        replay: the same program in ``"replay"`` mode (for ``"raise"``), or ``None``.
        evaluate: ``evaluate(params, model_state, x, y) -> {name: value}``, or ``None``.
        tables: ``tables(e)``: the placed index table of epoch ``e``.
        runs: ``None`` for one run (scalar summaries), else K (summaries ``[K]``).
        labels: per-run descriptions for messages, e.g. ``["run 0, learning_rate=0.1"]``.
        sync: wait for each epoch before the evaluation (multi-device meshes on CPU).
    """

    epoch: Callable
    replay: Callable | None
    evaluate: Callable | None
    tables: Callable
    runs: int | None = None
    labels: tuple = ()
    sync: bool = False


_copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))


def history_row(summary: dict, evals: dict, k: int | None, seconds: float) -> dict:
    """One epoch's history entries for run ``k`` (``None``: unstacked) from its summary."""
    pick = (lambda v: v) if k is None else (lambda v: v[k])
    row = {"train_loss": pick(summary["loss"])}
    if "accuracy" in summary:
        row["train_accuracy"] = pick(summary["accuracy"])
    row.update({f"eval_{m}": pick(v) for m, v in evals.items()})
    if "lr" in summary:
        row["lr"] = pick(summary["lr"])
    row["seconds"] = seconds
    if "skipped" in summary:
        row["skipped"] = int(pick(summary["skipped"]))
    return {m: v if isinstance(v, int) else float(v) for m, v in row.items()}


def _append(history: dict, row: dict, summary: dict, k: int | None) -> None:
    for m, v in row.items():
        history.setdefault(m, []).append(v)
    for m in ("trace_loss", "trace_lr"):  # per-step values (make_epoch(trace=True))
        if m in summary:
            values = summary[m] if k is None else summary[m][k]
            history.setdefault(m.replace("trace", "step"), []).extend(map(float, values))


def raise_nonfinite(program: Program, start, data, idx, epoch: int, steps: int, bad, history):
    """Replay a faulty epoch from its start with a per-step guard, and raise naming the step
    (and, for K runs, the faulty runs) with the last finite state."""
    kept, summary = program.replay(_copy(start), *data, idx)
    first = np.atleast_1d(np.asarray(jax.device_get(summary["first_bad"])))
    code = np.atleast_1d(np.asarray(jax.device_get(summary["what"])))
    runs = [int(k) for k in np.flatnonzero(np.atleast_1d(bad))]
    k0 = min(runs, key=lambda k: first[k] if first[k] >= 0 else steps)
    i = max(int(first[k0]), 0)
    what = _WHAT.get(int(code[k0]), "parameters")  # -1: the replay found no bad step
    done = epoch * steps + i
    if program.runs is None:
        message = (
            f"non-finite {what} at epoch {epoch}, step {i} of {steps} (global step {done}); "
            f"training stopped. The exception's .state is the last finite state ({done} steps "
            f"done); lower the learning rate, clip gradients (fnn.optim.get(..., "
            f"clip_norm=1.0)) or use on_nonfinite='skip'"
        )
    else:
        names = "; ".join(program.labels[k] for k in runs)
        message = (
            f"non-finite {what} in {len(runs)} of {program.runs} runs ({names}) at epoch "
            f"{epoch}, first at step {i} of {steps} (run {k0}); the sweep stopped. The "
            f"exception's .state holds every run's last finite state and .runs the faulty "
            f"runs; drop them, lower their learning rate, or use on_nonfinite='skip'"
        )
    raise NonFiniteError(
        message,
        state=kept,
        history=history,
        epoch=epoch,
        step=i,
        global_step=done,
        what=what,
        runs=runs,
    )


def _bad(summary: dict):
    return (np.asarray(summary["first_bad"]) >= 0) | ~np.asarray(summary["finite"])


def run_epochs(
    program: Program,
    state,
    data,
    eval_data,
    *,
    first: int,
    epochs: int,
    steps: int,
    on_nonfinite: str,
    progress: bool,
    callback=None,
):
    """Train epochs ``first .. epochs - 1``; returns ``(state, histories)``.

    ``histories`` is one dict (``program.runs is None``) or a list of K dicts, each mapping a
    name to one value per epoch (:func:`history_row`). ``callback(epoch, state,
    histories)`` runs after each epoch; ``True`` stops.
    """
    runs = [None] if program.runs is None else list(range(program.runs))
    histories: list[dict] = [{} for _ in runs]
    out = histories[0] if program.runs is None else histories
    bar = Bar(progress, epochs, first)
    try:
        idx = program.tables(first) if first < epochs else None
        for e in range(first, epochs):
            t0 = time.perf_counter()
            start, idx_e = state, idx
            state, summary = program.epoch(start, *data, idx_e)
            if e + 1 < epochs:  # the host shuffles the next epoch while the device trains
                idx = program.tables(e + 1)
            if program.sync:
                # One multi-device program in flight at a time: queued ones can deadlock in
                # XLA's CPU collectives on a machine with few cores.
                jax.block_until_ready(summary)
            evals = {}
            if eval_data:
                evals = program.evaluate(state.params, state.model_state, *eval_data)
            summary, evals = jax.device_get(jax.block_until_ready((summary, evals)))
            if "finite" in summary and _bad(summary).any():
                if on_nonfinite == "stop":
                    for k, hist in zip(runs, histories, strict=True):
                        _append(hist, {}, summary, k)
                    break
                raise_nonfinite(program, start, data, idx_e, e, steps, _bad(summary), out)
            seconds = time.perf_counter() - t0
            for k, hist in zip(runs, histories, strict=True):
                _append(hist, history_row(summary, evals, k, seconds), summary, k)
            bar.update(describe(histories))
            if callback is not None and callback(e, state, out):
                break
    finally:
        bar.close()
    return state, out


def describe(histories: list[dict]) -> str:
    """The progress bar's text: the last epoch's metrics (their means over K runs)."""
    if len(histories) == 1:
        names = {
            "train_loss": "loss",
            "train_accuracy": "acc",
            "eval_loss": "eval loss",
            "eval_accuracy": "eval acc",
            "lr": "lr",
        }
        (h,) = histories
        return "  ".join(f"{short} {h[k][-1]:.3g}" for k, short in names.items() if k in h)

    def mean(key):  # over the runs whose value is finite (a skipped-out run gives NaN)
        vals = [h[key][-1] for h in histories if np.isfinite(h[key][-1])]
        return float(np.mean(vals)) if vals else float("nan")

    names = {"train_loss": "loss", "train_accuracy": "acc", "eval_accuracy": "eval acc"}
    parts = [f"{len(histories)} runs"] + [
        f"mean {short} {mean(k):.4g}" for k, short in names.items() if k in histories[0]
    ]
    return "  ".join(parts)


class Bar:
    """A rich progress bar over epochs (rich is imported only when one is shown)."""

    def __init__(self, enabled: bool, total: int, start: int):
        self.progress: Any = None
        if not enabled:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("epoch {task.completed}/{task.total}"),
            BarColumn(bar_width=16),
            TimeElapsedColumn(),
            TextColumn("{task.fields[metrics]}"),
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=total, completed=start, metrics="")

    def update(self, text: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=1, metrics=text)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
