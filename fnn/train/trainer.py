"""The public entry points: :func:`fit` (one run), :func:`fit_many` (K runs), :func:`evaluate`.

Both trainers check their input, build the compiled programs (:mod:`fnn.train.epoch`,
:mod:`fnn.train.runs`), place state and data, and hand over to the one host loop,
:func:`fnn.train.loop.run_epochs`: one run is the loop with unstacked summaries, K runs the
same loop over a vmapped program.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnn import losses as _losses
from fnn import parallel as _parallel
from fnn.models import Model, check_params
from fnn.train import memory as _memory
from fnn.train import runs as _runs
from fnn.train.epoch import epoch_indices, epoch_spec, key_words, make_epoch, make_eval, run_key
from fnn.train.loop import Program, run_epochs
from fnn.train.step import TrainState, init_state
from fnn.train.validate import (
    GRADS,
    ON_NONFINITE,
    check_batch_size,
    check_choice,
    check_data,
    check_epochs,
    check_key,
)

_copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))


def _start(model, optimizer, init, key):
    """fit's first state: ``model.init(key)``, given parameters, or a given state."""
    if init is None or not isinstance(init, TrainState):
        check_key(key)
        params = model.init(key) if init is None else init
        check_params(model, params)
        return init_state(params, optimizer, run_key(key), model.init_state())
    check_params(model, init.params)
    return init


def _placers(mesh):
    """(place data and state, place an index table) for one device or a batch mesh."""
    if mesh is None:
        return jax.device_put, jax.device_put
    sharding = _parallel.batch_sharding(mesh, axis=1)
    return (
        lambda a: _parallel.put_replicated(a, mesh),
        lambda a: _parallel.put_sharded(a, sharding),
    )


def fit(
    model: Model,
    loss,
    optimizer: optax.GradientTransformation,
    data,
    *,
    epochs: int,
    batch_size,
    key,
    eval_data=None,
    grad: str = "autodiff",
    devices=None,
    progress: bool = True,
    init=None,
    on_nonfinite: str = "raise",
    callback=None,
    eval_batch_size: int | None = None,
):
    """Train ``model`` for whole epochs; each epoch is one compiled ``lax.scan``.

    Args:
        model: a :class:`fnn.models.Model`.
        loss: a loss name or record. ``softmax_cross_entropy`` takes integer labels ``[n]`` in
            ``0..classes-1`` or float rows ``[n, classes]`` with entries in ``[0, 1]``
            (one-hot or probabilities); ``binary_cross_entropy`` takes targets shaped like
            the output (``[n, 1]`` for one logit), integer, bool or float in ``[0, 1]``;
            ``mse`` takes float targets shaped like the output.
        optimizer: any optax ``GradientTransformation`` (:func:`fnn.optim.get` builds the
            usual ones with a readable learning rate).
        data: ``(x, y)``, NumPy or JAX arrays, ``x: [n, *in_shape]`` floating (cast to the
            model's dtype). It is placed on the device once per call.
        epochs: the epoch to stop at (total count; a resumed run continues up to it).
        batch_size: examples per step: an int in ``[1, n]`` (1 is SGD), or ``None`` /
            ``"full"`` for full-batch gradient descent. The last ``n % batch_size``
            examples of each epoch's permutation are dropped.
        key: PRNG key: the parameters start as ``model.init(key)`` and the state's key is
            :func:`run_key` ``(key)``. Unused when ``init`` is a :class:`TrainState`.
        eval_data: optional ``(x, y)`` evaluated after every epoch.
        grad: ``"autodiff"`` or ``"manual"`` (the hand-written sweep).
        devices: ``None`` (default device), an int, ``"all"`` or a device list:
            data-parallel over a one-axis mesh; ``batch_size`` must divide evenly. In a
            multi-process job (:func:`fnn.parallel.initialize`) the devices are global,
            ``None`` means ``"all"``, and each process passes the same ``data`` and ``key``.
        progress: show a rich progress bar over epochs with live metrics.
        init: ``None`` (``model.init``), parameters, or a :class:`TrainState` at an epoch
            boundary to resume from (epoch ``state.step // steps_per_epoch``; resuming
            there with the same data and batch size reproduces the uninterrupted run
            bitwise). The caller's arrays are never donated.
        on_nonfinite: ``"raise"``: stop at the first non-finite loss or gradient with
            :class:`NonFiniteError`, whose ``.state`` is the last finite state. The epoch
            itself runs unguarded (no per-step check costs time); when its loss or final
            state is non-finite, fit replays it from its start with a per-step guard to find
            the step (so the start-of-epoch state is kept while an epoch runs: twice the
            state's memory). ``"skip"``: such steps leave parameters and optimizer state
            unchanged (the optimizer's count, hence its schedule, does not advance) and are
            counted in ``skipped``; each step then also computes the gradient norm.
        callback: ``callback(epoch, state, history)`` after each epoch; return ``True`` to
            stop. In ``"skip"`` mode ``state`` is donated to the next epoch: copy what you
            keep beyond the call.
        eval_batch_size: batch of the evaluation (default ``max(batch_size, 256)``).

    Returns:
        ``(state, history)``. ``history`` maps names to one value per epoch run in this call:
        ``train_loss``, ``train_accuracy`` (classification; means over the epoch's applied
        steps, each measured on its minibatch before its update), ``eval_loss`` and
        ``eval_accuracy`` (with ``eval_data``), ``lr`` (the rate of the epoch's last update,
        present when the optimizer state is an ``optax.inject_hyperparams`` one),
        ``seconds`` (wall time, the first including compilation), ``skipped`` (skip mode).

    Raises:
        ValueError, TypeError: for bad data, settings or devices, before any compilation.
        NonFiniteError: see ``on_nonfinite``.
    """
    loss = _losses.get(loss)
    epochs = check_epochs(epochs)
    x, y = check_data(model, loss, data, "data")
    n = len(x)
    b = check_batch_size(batch_size, n, "batch_size")
    if devices is None and jax.process_count() > 1:  # multi-process (issue 9): one global mesh
        devices = "all"
    mesh = None if devices is None else _parallel.make_mesh(devices)
    _parallel.check_divisible(b, mesh)
    check_choice("on_nonfinite", on_nonfinite, ON_NONFINITE)
    mode = "fast" if on_nonfinite == "raise" else "skip"
    kw = dict(grad=grad, mesh=mesh)
    epoch_fn = make_epoch(model, loss, optimizer, mode=mode, **kw)
    replay = make_epoch(model, loss, optimizer, mode="replay", **kw) if mode == "fast" else None
    eval_fn = evals = None
    if eval_data is not None:
        evals = check_data(model, loss, eval_data, "eval_data")
        eb = min(eval_batch_size or max(b, 256), len(evals[0]))
        if mesh is not None:
            eb = -(-eb // mesh.size) * mesh.size
        eval_fn = make_eval(model, loss, eb, mesh)
    state = _start(model, optimizer, init, key)
    if mode == "skip":  # the skip epoch donates its input: keep the caller's arrays intact
        state = _copy(state)
    place, place_idx = _placers(mesh)
    if mesh is not None:  # put_*: jax.device_put, or each process's part (multi-process)
        state = place(state)
    steps = n // b
    done = int(state.step)
    if done % steps:
        raise ValueError(
            f"init: state.step={done} is not at an epoch boundary ({steps} steps per epoch "
            f"with n={n}, batch_size={b}); resume from an end-of-epoch state, or pass "
            f"init=state.params to start a new run from these parameters"
        )
    words = key_words(state.key)  # read now: later, state.key would wait for the device
    program = Program(
        epoch=epoch_fn,
        replay=replay,
        evaluate=eval_fn,
        tables=lambda e: place_idx(epoch_indices(words, e, n, b)),
        sync=mesh is not None,
    )
    return run_epochs(
        program,
        state,
        (place(x), place(y)),
        None if evals is None else tuple(place(a) for a in evals),
        first=done // steps,
        epochs=epochs,
        steps=steps,
        on_nonfinite=on_nonfinite,
        progress=progress,
        callback=callback,
    )


def evaluate(model: Model, loss, params, data, batch_size: int | None = None) -> dict:
    """Mean loss (and accuracy, for classification losses) over a dataset, in batches.

    Args:
        model, loss: the model and a loss name or record.
        params: parameters of ``model``, or a :class:`TrainState` (its parameters and model
            state: a stateful model is evaluated with its running statistics; given bare
            parameters, it uses ``model.init_state()``).
        data: ``(x, y)``, checked like :func:`fit`'s data.
        batch_size: examples per compiled batch (``None``: all at once). The last batch is
            padded and its padding masked, so the result is the exact mean over the dataset
            whatever its size.

    Returns:
        ``{"loss": float, "accuracy": float}`` (``accuracy`` only for classification losses).
    """
    loss = _losses.get(loss)
    x, y = check_data(model, loss, data, "data")
    b = check_batch_size(batch_size, len(x), "batch_size")
    if isinstance(params, TrainState):
        params, model_state = params.params, params.model_state
    else:
        model_state = model.init_state()
    check_params(model, params)
    out = make_eval(model, loss, b, None)(params, model_state, x, y)
    return {k: float(v) for k, v in jax.device_get(out).items()}


def _many_data(model, loss, data, name):
    """``((x, y), axis)``: a shared pair has axis None; a list of K pairs is stacked, axis 0."""
    per_run = (
        isinstance(data, list)
        and len(data) > 0
        and all(isinstance(d, tuple) and len(d) == 2 for d in data)
    )
    if not per_run:
        return check_data(model, loss, data, name), None
    pairs = [check_data(model, loss, d, f"{name}[{i}]") for i, d in enumerate(data)]
    first = (pairs[0][0].shape, pairs[0][1].shape)
    for i, (x, y) in enumerate(pairs):
        if (x.shape, y.shape) != first:
            raise ValueError(
                f"{name}[{i}]: every run's data must have the same shapes, got x "
                f"{x.shape}, y {y.shape} against {first[0]}, {first[1]} for run 0"
            )
    xp = jnp if any(isinstance(a, jax.Array) for p in pairs for a in p) else np
    return (xp.stack([p[0] for p in pairs]), xp.stack([p[1] for p in pairs])), 0


def _check_many_settings(loss, epochs, grad, shuffle, on_nonfinite, chunk):
    check_epochs(epochs)
    check_choice("grad", grad, GRADS)
    check_choice("shuffle", shuffle, _runs.SHUFFLES)
    check_choice("on_nonfinite", on_nonfinite, ON_NONFINITE)
    if chunk is not None and (
        not isinstance(chunk, (int, np.integer)) or isinstance(chunk, bool) or chunk < 0
    ):
        raise ValueError(
            f"chunk: expected None (automatic), 0 (one vmap) or a positive int, got {chunk!r}"
        )


def _index_tables(words, shuffle, n, b, place):
    """``tables(e)``: each run's epoch order (``fit``'s for its key), or run 0's for all."""

    def tables(e):
        if shuffle == "shared":
            return place(epoch_indices(words[0], e, n, b), None)
        memo = {}  # runs sharing a key (an lr sweep of one seed) share the permutation
        for w in words:
            if tuple(w) not in memo:
                memo[tuple(w)] = epoch_indices(w, e, n, b)
        return place(np.stack([memo[tuple(w)] for w in words]), 0)

    return tables


def fit_many(
    model,
    loss,
    optimizer,
    data,
    *,
    epochs: int,
    batch_size,
    keys=None,
    seeds=None,
    hparams=None,
    eval_data=None,
    grad: str = "autodiff",
    shuffle: str = "per_run",
    on_nonfinite: str = "raise",
    devices=None,
    chunk: int | None = None,
    progress: bool = True,
    callback=None,
    eval_batch_size: int | None = None,
    memory: int | None = None,
):
    """Train K runs at once: one vmapped, scan-fused program per epoch for all of them.

    Args:
        model, loss, grad, epochs, batch_size, eval_batch_size: as for :func:`fit` (the
            same for every run).
        optimizer: an optax ``GradientTransformation`` shared by all runs, or a factory
            (``optax.adam``, or any ``f(**hparams) -> GradientTransformation``) that run ``k``
            calls as ``optax.inject_hyperparams(f)(**{name: hparams[name][k]})``.
        data: ``(x, y)`` shared by all runs, or a list of K ``(x, y)`` tuples of equal shapes
            (one dataset per run, e.g. a different split per seed); checked like ``fit``'s.
        keys: K PRNG keys (``jax.random.split(key, K)`` or a list); run ``k`` derives its
            init and run keys from ``keys[k]`` exactly as ``fit(key=keys[k])`` does.
        seeds: instead of ``keys``, K ints: ``keys[k] = jax.random.key(seeds[k])``.
        hparams: ``{name: K values}`` of numeric hyper-parameters of the factory, e.g.
            ``{"learning_rate": [1e-3, 3e-3, 1e-2]}``. Any list (``keys`` too) may hold one
            value, used by every run.
        eval_data: ``(x, y)`` or a list of K pairs, evaluated per run after every epoch.
        shuffle: ``"per_run"``: run ``k`` sees ``fit``'s order for its key; ``"shared"``:
            every run sees run 0's order (one gathered epoch instead of K).
        on_nonfinite: ``"raise"``: a non-finite loss or gradient in any run stops the sweep
            with :class:`NonFiniteError` (``.runs`` lists the faulty runs, ``.state`` holds
            every run's last finite state); ``"skip"``: such steps leave that run's state
            unchanged, as in ``fit``.
        devices: ``None`` (the default device), an int, ``"all"`` or a device list: the
            runs are split evenly over a one-axis mesh (``"runs"``), each device training
            its share with no communication; K must be a multiple of the device count. On a
            CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` makes N devices, one
            core each: the way to use several cores for a sweep of small models.
        chunk: runs trained together per group: ``None`` chooses (on CPU, groups whose
            footprint fits :data:`fnn.train.memory.CHUNK_BYTES`, so that large sweeps stay
            in cache; one vmap over all runs elsewhere), ``0`` forces one vmap, an int sets
            it (a divisor of the runs per device; otherwise one vmap). The parameters do
            not depend on it.
        progress: a rich progress bar with the runs' mean metrics.
        callback: ``callback(epoch, states, histories)`` after each epoch; ``True`` stops.
            In ``"skip"`` mode ``states`` is donated to the next epoch: copy what you keep.
        memory: bytes the sweep may use (per device); default
            :data:`fnn.train.memory.MEMORY_FRACTION` of :func:`fnn.many.available_memory`.
            Checked before anything is allocated.

    Returns:
        ``(states, histories)``: ``states`` a :class:`TrainState` whose leaves have a
        leading run axis ``[K, ...]`` (:func:`fnn.many.take` gives run ``k``); ``histories``
        a list of K dicts with ``fit``'s keys (``seconds``: the whole sweep's epoch time).

    Raises:
        ValueError, TypeError: bad data, settings, keys or hparams, or a sweep too large for
            ``memory`` (the message says how many runs fit), before any compilation.
        NonFiniteError: see ``on_nonfinite``.
    """
    loss = _losses.get(loss)
    _check_many_settings(loss, epochs, grad, shuffle, on_nonfinite, chunk)
    sweep = _plan_sweep(
        model,
        loss,
        optimizer,
        data,
        eval_data=eval_data,
        keys=keys,
        seeds=seeds,
        hparams=hparams,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        shuffle=shuffle,
        devices=devices,
        chunk=chunk,
        memory=memory,
    )
    mesh, place = sweep.layout.mesh, _runs.placer(sweep.layout.mesh)
    states = _runs.init_states(model, sweep.rep, sweep.hp, sweep.optimizers, sweep.keys)
    states = place(states, 0)
    words = key_words(states.key, runs=True)
    mode = "fast" if on_nonfinite == "raise" else "skip"

    def epoch(mode):
        return _runs.make_many_epoch(
            epoch_spec(model, loss, sweep.rep, grad=grad, mode=mode), sweep.layout
        )

    k_runs, (x, y), evals = len(sweep.keys), sweep.data, sweep.evals
    program = Program(
        epoch=epoch(mode),
        replay=epoch("replay") if mode == "fast" else None,
        evaluate=None
        if evals is None
        else _runs.make_many_eval(model, loss, sweep.eval_batch, sweep.eval_axis, mesh),
        tables=_index_tables(words, shuffle, sweep.n, sweep.batch, place),
        runs=k_runs,
        labels=tuple(
            f"run {k}" + "".join(f", {h}={v[k]}" for h, v in sweep.hp.items())
            for k in range(k_runs)
        ),
    )
    return run_epochs(
        program,
        states,
        (place(x, sweep.layout.data_axis), place(y, sweep.layout.data_axis)),
        None if evals is None else tuple(place(a, sweep.eval_axis) for a in evals),
        first=0,
        epochs=epochs,
        steps=sweep.n // sweep.batch,
        on_nonfinite=on_nonfinite,
        progress=progress,
        callback=callback,
    )


class _Sweep(NamedTuple):
    """A checked sweep: K keys and hparams, the data and how the runs are laid out."""

    keys: list
    hp: dict
    data: tuple
    n: int
    batch: int
    evals: tuple | None
    eval_axis: Any
    eval_batch: int
    rep: Any
    optimizers: list
    layout: _runs.RunsSpec


def _plan_sweep(
    model,
    loss,
    optimizer,
    data,
    *,
    eval_data,
    keys,
    seeds,
    hparams,
    batch_size,
    eval_batch_size,
    shuffle,
    devices,
    chunk,
    memory,
) -> _Sweep:
    """Check a sweep's inputs, size it (K, memory, groups) and lay its runs out."""
    keys, hp = _runs.as_keys(keys, seeds), _runs.as_hparams(hparams)
    (x, y), data_axis = _many_data(model, loss, data, "data")
    lists = {"keys": keys, **{f"hparams[{n!r}]": v for n, v in hp.items()}}
    if data_axis == 0:
        lists["data"] = list(range(x.shape[0]))
    k_runs = _runs.count_runs(lists)
    keys, hp = _runs.widen(keys, k_runs), {n: _runs.widen(v, k_runs) for n, v in hp.items()}
    if data_axis == 0 and x.shape[0] != k_runs:  # one dataset given as a list: share it
        (x, y), data_axis = (x[0], y[0]), None
    n = x.shape[0 if data_axis is None else 1]
    b = check_batch_size(batch_size, n, "batch_size")
    evals, eval_axis, eval_n, eb = None, None, 0, 0
    if eval_data is not None:
        evals, eval_axis = _many_data(model, loss, eval_data, "eval_data")
        eval_n = evals[0].shape[0 if eval_axis is None else 1]
        eb = min(eval_batch_size or max(b, 256), eval_n)
    rep, optimizers = _runs.optimizers(optimizer, hp, k_runs)
    y_row = int(np.prod(y.shape[1 if data_axis is None else 2 :], dtype=np.int64))
    shared, per_run = _memory.footprint(
        model,
        rep,
        b,
        n,
        shuffle=shuffle,
        per_run_data=data_axis == 0 or eval_axis == 0,
        eval_n=eval_n,
        eval_batch=eb,
        y_row=y_row * y.dtype.itemsize,
    )
    mesh = _runs.runs_mesh(devices, k_runs)
    k_local = k_runs // (1 if mesh is None else mesh.size)
    _memory.check_memory(k_local, shared, per_run, memory)
    if chunk is None:
        platform = (jax.devices()[0] if mesh is None else mesh.devices.flat[0]).platform
        chunk = _memory.auto_chunk(k_local, per_run, platform)
    layout = _runs.RunsSpec(data_axis, 0 if shuffle == "per_run" else None, mesh, chunk or None)
    return _Sweep(keys, hp, (x, y), n, b, evals, eval_axis, eb, rep, optimizers, layout)
