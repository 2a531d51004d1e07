"""Training: a jit-compiled step, scan-fused epochs on the device, batched evaluation.

* :func:`make_step` compiles one optimizer step ``step(state, x, y) -> (state, metrics)``
  that donates the state's buffers; the gradient comes from ``jax.value_and_grad``
  (``grad="autodiff"``) or from the hand-written sweep :func:`fnn.backprop.value_and_grad`
  (``grad="manual"``).
* :func:`fit` trains for whole epochs. An epoch is **one** compiled program: the shuffled
  minibatches are gathered from the dataset held on the device and a ``lax.scan`` runs the
  step over them; the host is touched once per epoch to read the epoch's metrics. The
  compiled epoch is cached per (model, loss, optimizer) object, so later epochs and later
  calls of :func:`fit` with the same shapes do not recompile.
* :func:`evaluate` computes the mean loss and accuracy in batches, exactly (a padded last
  batch is masked).

Randomness is derived from ``TrainState.key``: dropout at step ``s`` uses
``jax.random.fold_in(key, s)``; the order of epoch ``e`` is a NumPy permutation seeded by the
key's data and ``e`` (:func:`epoch_indices`). Same key, same device count: bitwise the same
parameters, and a run resumed from an end-of-epoch state continues exactly.

Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import fnn
    >>> from fnn import train
    >>> model = fnn.mlp([2, 8, 2], activation="tanh")
    >>> x = jax.random.normal(jax.random.key(1), (64, 2), jnp.float32)
    >>> y = (x[:, 0] * x[:, 1] > 0).astype(jnp.int32)
    >>> state, history = train.fit(model, "softmax_cross_entropy", optax.adam(0.05), (x, y),
    ...                            epochs=3, batch_size=16, key=jax.random.key(0),
    ...                            progress=False)
    >>> int(state.step), len(history["train_loss"])
    (12, 3)
"""

from __future__ import annotations

import collections
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnn import backprop as _backprop
from fnn import losses as _losses
from fnn import optim as _optim
from fnn import parallel as _parallel
from fnn.models import Model, check_params

Array = jax.Array
GRADS = ("autodiff", "manual")
ON_NONFINITE = ("raise", "skip")


class TrainState(NamedTuple):
    """Everything a training run carries from one step to the next (a pytree).

    Attributes:
        params: the model parameters, the pytree ``model.init`` returns (float arrays of the
            model's dtype, e.g. ``[{"w": [fan_in, fan_out], "b": [fan_out]}, {}, ...]``).
        opt_state: the optimizer's state for ``params`` (an optax pytree: counters are int32
            ``[]``, moments are shaped like ``params``).
        step: int32 ``[]``, the number of steps taken (in ``on_nonfinite="skip"`` mode the
            skipped ones count too, so ``step // steps_per_epoch`` is the epoch).
        key: PRNG key ``[]`` (typed, ``jax.random.key``) or raw uint32 ``[2]``, constant over
            the run: dropout at step ``s`` uses ``fold_in(key, s)`` and shuffling seeds from it.
    """

    params: Any
    opt_state: Any
    step: Array
    key: Array


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite value (``on_nonfinite="raise"``).

    Attributes:
        state: the last finite :class:`TrainState` (every step before the bad one applied).
        history: the history of the epochs completed before this one.
        epoch: the epoch of the bad step (0-based); ``step``: its index in the epoch;
            ``global_step``: its index in the run; ``what``: ``"loss"``, ``"gradients"``
            or ``"parameters"`` (finite gradients whose update overflowed).
    """

    def __init__(self, message, *, state, history, epoch, step, global_step, what):
        super().__init__(message)
        self.state, self.history = state, history
        self.epoch, self.step, self.global_step, self.what = epoch, step, global_step, what


# ---------------------------------------------------------------------------------------------
# Input checks, all before anything is compiled.


def _check_key(key) -> None:
    ok = isinstance(key, jax.Array) and (
        jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
        or (key.dtype == jnp.uint32 and key.shape == (2,))
    )
    if not ok:
        raise TypeError(
            f"key: expected a JAX PRNG key such as jax.random.key(0), got "
            f"{type(key).__name__} {getattr(key, 'dtype', '')}".rstrip()
        )


def _batch_size(batch_size, n: int, name: str) -> int:
    if batch_size is None or batch_size == "full":
        return n
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool):
        raise TypeError(f"{name}: expected an int, None or 'full', got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"{name}: expected a positive int, got {batch_size}")
    if batch_size > n:
        raise ValueError(
            f"{name}: {batch_size} is larger than the dataset ({n} rows); use a batch size "
            f"<= {n}, or batch_size=None for full-batch gradient descent"
        )
    return int(batch_size)


def _nonfinite_rows(a) -> tuple[int, int]:
    """(number of rows holding NaN or inf, index of the first), on the host or the device."""
    xp = jnp if isinstance(a, jax.Array) else np
    bad = ~xp.all(xp.isfinite(a.reshape(a.shape[0], -1)), axis=1)
    count = int(bad.sum())
    return count, (int(xp.argmax(bad)) if count else -1)


def _check_labels(model: Model, loss, y, n: int, name: str):
    """Validate targets for the built-in losses; returns them cast for the program."""
    out = tuple(model.out_shape)
    kind = y.dtype
    if loss.name == "softmax_cross_entropy":
        classes = out[-1] if out else 1
        if jnp.issubdtype(kind, jnp.integer) and y.ndim == 1:
            lo, hi = int(y.min()), int(y.max())
            if lo < 0 or hi >= classes:
                raise ValueError(
                    f"{name} y: class labels must lie in 0..{classes - 1} (the model has "
                    f"{classes} outputs), got values from {lo} to {hi}"
                )
            return y.astype(jnp.int32)
        if jnp.issubdtype(kind, jnp.floating) and y.shape == (n, classes):
            _check_unit_interval(y, name, "one-hot / probability targets")
            return y.astype(model.dtype)
        if jnp.issubdtype(kind, jnp.floating) and y.ndim == 1:
            raise TypeError(
                f"{name} y: softmax_cross_entropy takes integer class labels [n] or float "
                f"one-hot rows [n, {classes}], got float labels of shape {y.shape}; convert "
                f"them with y.astype(np.int32)"
            )
        raise TypeError(
            f"{name} y: softmax_cross_entropy takes integer class labels [{n}] or float one-hot "
            f"rows [{n}, {classes}], got {kind} of shape {y.shape}"
        )
    if loss.name == "binary_cross_entropy":
        if y.shape != (n, *out):
            hint = " (add the output axis: y[:, None])" if y.shape == (n,) and out == (1,) else ""
            raise ValueError(
                f"{name} y: binary_cross_entropy needs targets shaped like the model output "
                f"{(n, *out)}, got {y.shape}{hint}"
            )
        if not (jnp.issubdtype(kind, jnp.number) or kind == jnp.bool_):
            raise TypeError(f"{name} y: expected 0/1 targets, got dtype {kind}")
        _check_unit_interval(y, name, "binary targets")
        return y.astype(model.dtype)
    if loss.name == "mse":
        if not jnp.issubdtype(kind, jnp.floating):
            raise TypeError(
                f"{name} y: mse needs float targets, got {kind}; convert them with "
                f"y.astype(np.float32)"
            )
        if y.shape != (n, *out):
            raise ValueError(
                f"{name} y: mse needs targets shaped like the model output {(n, *out)}, got "
                f"{y.shape}"
            )
        return y.astype(model.dtype)
    return y  # a custom loss validates its own targets when traced


def _check_unit_interval(y, name: str, what: str) -> None:
    xp = jnp if isinstance(y, jax.Array) else np
    lo, hi = float(xp.min(y)), float(xp.max(y))
    if not (0.0 <= lo and hi <= 1.0):  # NaN fails too
        raise ValueError(f"{name} y: {what} must lie in [0, 1], got values from {lo} to {hi}")


def _check_data(model: Model, loss, data, name: str):
    """Check ``(x, y)`` against the model and loss; return them cast (x to the model dtype)."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"{name}: expected a pair (x, y), got {type(data).__name__}")
    x, y = (a if isinstance(a, jax.Array) else np.asarray(a) for a in data)
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError(
            f"{name}: x and y need a leading example axis, got shapes {x.shape} and {y.shape}"
        )
    n = x.shape[0]
    if n == 0:
        raise ValueError(
            f"{name}: the dataset is empty (x has shape {x.shape}); pass at least one example"
        )
    if y.shape[0] != n:
        raise ValueError(
            f"{name}: x and y must have the same number of rows, got x {x.shape} "
            f"({n} rows) and y {y.shape} ({y.shape[0]} rows)"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{name} x: expected a floating dtype, got {x.dtype}; convert it with "
            f"x.astype(np.float32)"
        )
    if tuple(x.shape[1:]) != tuple(model.in_shape):
        raise ValueError(
            f"{name} x: expected shape [n, {', '.join(map(str, model.in_shape))}] "
            f"for this model, got {x.shape}"
        )
    for label, a in (("x", x), ("y", y)):
        if jnp.issubdtype(a.dtype, jnp.inexact):
            count, first = _nonfinite_rows(a)
            if count:
                raise ValueError(
                    f"{name} {label}: {count} of {n} rows hold NaN or inf (the first is row "
                    f"{first}); remove or impute them before training"
                )
    return x.astype(model.dtype), _check_labels(model, _losses.get(loss), y, n, name)


# ---------------------------------------------------------------------------------------------
# State and step.


def _strong(tree):
    """Drop weak types so that a step's output state has exactly its input's avals."""

    def fix(a):
        a = jnp.asarray(a)
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) or not a.weak_type:
            return a
        return jax.lax.convert_element_type(a, a.dtype)

    return jax.tree.map(fix, tree)


def _match(new, old):
    # Trace-time only: cast where an update changed a dtype (e.g. a float64 schedule value
    # against float32 parameters), which would make the next call retrace.
    return jax.tree.map(
        lambda n, o: (
            n
            if (n.dtype == o.dtype and not n.weak_type)
            else jax.lax.convert_element_type(n, o.dtype)
        ),
        new,
        old,
    )


def init_state(params, optimizer: optax.GradientTransformation, key) -> TrainState:
    """A fresh :class:`TrainState`: ``optimizer.init(params)``, ``step = 0``.

    Args:
        params: model parameters, e.g. ``model.init(key)``.
        optimizer: any optax ``GradientTransformation`` (e.g. from :func:`fnn.optim.get`).
        key: the run's PRNG key (dropout and shuffling derive from it).

    ``params`` are used as they are, not copied: a step from :func:`make_step` donates them.
    """
    _check_key(key)
    params = _strong(params)
    return TrainState(params, _strong(optimizer.init(params)), jnp.zeros((), jnp.int32), key)


def _step_parts(model: Model, loss, optimizer, grad: str, grad_norm: bool = True):
    """The two halves of a step: ``measure(state, x, y) -> (grads, metrics)`` and
    ``apply(state, grads) -> state``, kept apart so that an epoch can guard the second."""
    loss = _losses.get(loss)
    if grad not in GRADS:
        raise ValueError(f"grad: expected one of {GRADS}, got {grad!r}")
    if grad == "manual":
        sweep = _backprop.value_and_grad(model, loss)

        def value_and_grad(params, x, y, key):
            value, grads = sweep(params, x, y, key=key, train=True)
            # The same forward as the sweep's (same params, input, key): XLA's CSE merges it,
            # so the accuracy costs no second forward pass (checked: equal dot counts).
            out = model.apply(params, x, key=key, train=True) if loss.accuracy else None
            return value, out, grads
    else:

        def objective(params, x, y, key):
            out = model.apply(params, x, key=key, train=True)
            return loss.fn(out, y), out

        vag = jax.value_and_grad(objective, has_aux=True)

        def value_and_grad(params, x, y, key):
            (value, out), grads = vag(params, x, y, key)
            return value, out, grads

    def measure(state: TrainState, x, y):
        # A key is always passed; without dropout nothing reads it and XLA drops the fold_in.
        key = jax.random.fold_in(state.key, state.step)
        value, out, grads = value_and_grad(state.params, x, y, key)
        # The barrier makes XLA materialise the gradients before reducing them: left free,
        # CPU XLA fused the norm's reductions into the gradients' producers, which cost
        # 12-17% of a step (medium MLP) against 3-7% with it.
        metrics = {"loss": value}
        if grad_norm:
            metrics["grad_norm"] = optax.tree.norm(jax.lax.optimization_barrier(grads))
        if loss.accuracy is not None:
            metrics["accuracy"] = loss.accuracy(out, y)
        return grads, metrics

    def apply(state: TrainState, grads) -> TrainState:
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(
            _match(params, state.params),
            _match(opt_state, state.opt_state),
            state.step + 1,
            state.key,
        )

    return measure, apply


def _step_fn(model: Model, loss, optimizer, grad: str, grad_norm: bool = True):
    """The pure step ``(state, x, y) -> (state, metrics)`` that make_step compiles."""
    measure, apply = _step_parts(model, loss, optimizer, grad, grad_norm)

    def step(state: TrainState, x, y):
        grads, metrics = measure(state, x, y)
        return apply(state, grads), metrics

    return step


def make_step(
    model: Model,
    loss,
    optimizer: optax.GradientTransformation,
    grad: str = "autodiff",
    *,
    grad_norm: bool = True,
):
    """A jit-compiled training step that donates the state's buffers.

    Args:
        model: a :class:`fnn.models.Model`.
        loss: a loss name from :data:`fnn.losses.NAMES` or a :class:`fnn.losses.Loss`.
        optimizer: any optax ``GradientTransformation``.
        grad: ``"autodiff"`` (``jax.value_and_grad`` of ``loss.fn(model.apply(...))``) or
            ``"manual"`` (:func:`fnn.backprop.value_and_grad`, the hand-written sweep).

    Returns:
        ``step(state, x, y) -> (state, metrics)`` with ``x: [batch, *in_shape]``, ``y`` the
        loss's targets, and ``metrics`` the scalars ``loss`` and ``grad_norm`` (global L2 norm
        of the gradient), plus ``accuracy`` for classification losses, all measured on the
        batch with the parameters *before* the update. The model runs with ``train=True`` and
        the key ``fold_in(state.key, state.step)``. The input state is donated: do not use it
        after the call.

    ``grad_norm=False`` leaves the gradient norm out of ``metrics``: its reductions are
    5-10% of a small MLP's step on CPU, where each extra kernel costs about a microsecond.
    """
    return jax.jit(_step_fn(model, loss, optimizer, grad, grad_norm), donate_argnums=0)


def _select(take, new: TrainState, old: TrainState) -> TrainState:
    pick = lambda a, b: jnp.where(take, a, b)  # a scalar predicate; fuses into the update
    return TrainState(
        jax.tree.map(pick, new.params, old.params),
        jax.tree.map(pick, new.opt_state, old.opt_state),
        pick(new.step, old.step),
        old.key,
    )


def _guard_kind(mesh) -> str:
    """How the skip mode leaves a non-finite update out: ``lax.cond`` on CPU, else ``where``.

    Measured on CPU (small MLP epoch): a select over the state cost 50% (XLA copies the
    loop-carried state to keep both versions), a cond ~0. On GPU a cond inside the loop
    costs a device-to-host sync per step while the select fuses into the update kernels.
    """
    platform = (mesh.devices.flat[0] if mesh is not None else jax.devices()[0]).platform
    return "cond" if platform == "cpu" else "select"


def _all_finite(tree):
    leaves = [
        jnp.all(jnp.isfinite(a))
        for a in jax.tree.leaves(tree)
        if jnp.issubdtype(a.dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _build_epoch(model, loss, optimizer, grad, mode, mesh, guard):
    """One epoch as one program. ``mode``:

    * ``"fast"`` (fit's default): no per-step guard and no gradient norm. It records the
      first step whose loss is non-finite and whether the final state is finite, which
      together catch every non-finite loss or gradient (a non-finite gradient poisons the
      state it is applied to); fit then replays the epoch in ``"replay"`` mode.
    * ``"skip"``: steps whose loss or gradient norm is non-finite leave the state unchanged
      (but count, so ``step // steps_per_epoch`` stays the epoch).
    * ``"replay"``: from the first non-finite loss, gradient or updated parameter on, leave
      the state unchanged; returns the last finite state and where it stopped.
    """
    loss = _losses.get(loss)
    measure, apply = _step_parts(model, loss, optimizer, grad, grad_norm=mode != "fast")
    idx_sharding = None if mesh is None else _parallel.batch_sharding(mesh, axis=1)
    keys = ("loss",) + (("accuracy",) if loss.accuracy is not None else ())

    def keep(state, grads):
        del grads
        return state._replace(step=state.step + 1) if mode == "skip" else state

    def body(carry, inp):
        state, sums, first_bad, what = carry
        i, xb, yb = inp
        grads, m = measure(state, xb, yb)
        ok_loss = jnp.isfinite(m["loss"])
        fresh = first_bad < 0
        if mode == "fast":
            state, take, bad = apply(state, grads), jnp.bool_(True), ~ok_loss
        else:
            ok_grad = jnp.isfinite(m["grad_norm"])
            if mode == "replay":
                new = apply(state, grads)
                ok_params = _all_finite(new.params)
                bad = ~(ok_loss & ok_grad & ok_params)
                take = fresh & ~bad
                state = _select(take, new, state)
                what = jnp.where(fresh & bad, jnp.where(ok_loss, jnp.where(ok_grad, 3, 2), 1), what)
            else:
                bad = ~(ok_loss & ok_grad)
                take = ~bad
                if guard == "cond":
                    state = jax.lax.cond(take, apply, keep, state, grads)
                else:
                    new = apply(state, grads)
                    state = _select(take, new, state)._replace(step=new.step)
            sums["skipped"] = sums["skipped"] + bad.astype(jnp.int32)
        first_bad = jnp.where(fresh & bad, i, first_bad)
        dtype = sums["taken"].dtype
        for k in keys:
            sums[k] = sums[k] + jnp.where(take, m[k].astype(dtype), jnp.zeros((), dtype))
        sums["taken"] = sums["taken"] + take.astype(dtype)
        return (state, sums, first_bad, what), None

    def epoch(state: TrainState, x, y, idx):
        # One gather of the whole epoch, then a scan over contiguous slices: measured faster
        # than gathering each minibatch inside the loop (12.6 vs 16.9 ms, small MLP, CPU).
        idx = _parallel.constrain(idx, idx_sharding)
        xs, ys = x[idx], y[idx]
        leaves = jax.tree.leaves(state.params)
        zero = jnp.zeros((), leaves[0].dtype if leaves else jnp.float32)
        sums = {k: zero for k in (*keys, "taken")}
        if mode != "fast":
            sums["skipped"] = jnp.int32(0)
        steps = jnp.arange(idx.shape[0], dtype=jnp.int32)
        carry = (state, sums, jnp.int32(-1), jnp.int32(0))
        (state, sums, first_bad, what), _ = jax.lax.scan(body, carry, (steps, xs, ys))
        summary = {k: sums[k] / sums["taken"] for k in keys}
        summary.update(first_bad=first_bad, what=what)
        if mode == "fast":
            summary["finite"] = _all_finite((state.params, state.opt_state))
        else:
            summary["skipped"] = sums["skipped"]
        lr = _optim.learning_rate(state.opt_state)
        if lr is not None:
            summary["lr"] = lr
        return state, summary

    # fast mode keeps its input (the start-of-epoch state) alive for a replay after a fault;
    # XLA copies it into the loop once per epoch, which is nothing next to the steps.
    donate = () if mode == "fast" else (0,)
    shardings = {} if mesh is None else {"out_shardings": _parallel.replicated(mesh)}
    return jax.jit(epoch, donate_argnums=donate, **shardings)


def _build_eval(model, loss, batch_size, mesh):
    loss = _losses.get(loss)
    sharding = None if mesh is None else _parallel.batch_sharding(mesh, axis=1)

    def per_example(fn, out, y):
        # Every fnn loss is a mean over the batch of per-example terms (mse and bce also over
        # the outputs, which each example has equally many of), so a 1-row batch is one term.
        return jax.vmap(lambda o, t: fn(o[None], t[None]))(out, y)

    def run(params, x, y):
        n = x.shape[0]
        b = min(batch_size or n, n)
        nb = -(-n // b)
        pad = nb * b - n
        xp = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape(nb, b, *x.shape[1:])
        yp = jnp.pad(y, [(0, pad)] + [(0, 0)] * (y.ndim - 1)).reshape(nb, b, *y.shape[1:])
        mask = (jnp.arange(nb * b) < n).reshape(nb, b)
        if sharding is not None and b % mesh.size == 0:
            xp = _parallel.constrain(xp, sharding)

        def body(acc, inp):
            xb, yb, mb = inp
            out = model.apply(params, xb)
            acc = dict(acc)
            acc["loss"] = acc["loss"] + jnp.sum(jnp.where(mb, per_example(loss.fn, out, yb), 0))
            if loss.accuracy is not None:
                hits = per_example(loss.accuracy, out, yb)
                acc["accuracy"] = acc["accuracy"] + jnp.sum(jnp.where(mb, hits, 0))
            return acc, None

        dtype = jnp.result_type(x)
        acc = {"loss": jnp.zeros((), dtype)}
        if loss.accuracy is not None:
            acc["accuracy"] = jnp.zeros((), dtype)
        acc, _ = jax.lax.scan(body, acc, (xp, yp, mask))
        return {k: v / n for k, v in acc.items()}

    return jax.jit(run)


# Compiled functions keyed on the identity of the model, loss and optimizer records (which
# hold functions and are closed over, never traced). The entry keeps the objects alive, so an
# id cannot be reused by another object while its entry exists.
_CACHE: collections.OrderedDict = collections.OrderedDict()
_CACHE_SIZE = 32


def _cached(kind, objects, settings, build):
    key = (kind, tuple(id(o) for o in objects), settings)
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit[1]
    fn = build()
    _CACHE[key] = (tuple(objects), fn)
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return fn


def make_epoch(
    model: Model, loss, optimizer, *, grad="autodiff", mode="fast", mesh=None, guard=None
):
    """The compiled epoch :func:`fit` runs, for resumable or custom loops (cached).

    Args:
        model, loss, optimizer, grad: as for :func:`make_step`.
        mode: ``"fast"`` (no per-step guard; the input state is kept, not donated),
            ``"skip"`` (non-finite steps leave the state unchanged; donates) or ``"replay"``
            (stops updating at the first non-finite loss, gradient or parameter; donates).
        mesh: a :func:`fnn.parallel.make_mesh` mesh for data-parallel epochs (``x, y`` and
            the state replicated on it, ``idx`` sharded along its minibatch axis).
        guard: ``"cond"`` or ``"select"``, how ``"skip"`` mode leaves an update out
            (default: by platform, see :func:`_guard_kind`); both give the same result.

    Returns:
        ``epoch(state, x, y, idx) -> (state, summary)``: ``x, y`` the whole dataset on the
        device, ``idx`` int32 ``[steps, batch]`` from :func:`epoch_indices`. It scans the step
        over the minibatches ``x[idx[i]]``. ``summary`` holds the means over the applied
        steps of ``loss`` (and ``accuracy``), ``lr`` (the rate of the last update, when the
        optimizer state exposes it), ``first_bad`` (the first non-finite step, or -1),
        ``what`` (replay: 1 loss, 2 gradients, 3 parameters), and ``finite`` (fast: the final
        state is finite) or ``skipped`` (the number of non-finite steps).
    """
    loss = _losses.get(loss)
    if mode not in ("fast", "skip", "replay"):
        raise ValueError(f"mode: expected 'fast', 'skip' or 'replay', got {mode!r}")
    if grad not in GRADS:
        raise ValueError(f"grad: expected one of {GRADS}, got {grad!r}")
    guard = guard or _guard_kind(mesh)
    if guard not in ("cond", "select"):
        raise ValueError(f"guard: expected 'cond' or 'select', got {guard!r}")
    return _cached(
        "epoch",
        (model, loss, optimizer),
        (grad, mode, mesh, guard),
        lambda: _build_epoch(model, loss, optimizer, grad, mode, mesh, guard),
    )


def run_key(key):
    """The key :func:`fit` gives a fresh :class:`TrainState`: ``fold_in(key, 2**32 - 1)``.

    ``model.init(key)`` gives layer ``i`` the key ``fold_in(key, i)``; the largest uint32 is
    an index no model reaches, so dropout masks and shuffles never reuse an init key.
    """
    return jax.random.fold_in(key, 0xFFFFFFFF)


def _key_words(key) -> list[int]:
    raw = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    return [int(w) for w in np.asarray(raw).astype(np.uint32).ravel()]


def epoch_indices(key, epoch: int, n: int, batch_size: int) -> np.ndarray:
    """The minibatch index table of one epoch: int32 ``[n // batch_size, batch_size]``.

    A permutation of ``range(n)`` by NumPy's PCG64 seeded with ``SeedSequence(key data,
    spawn_key=(epoch,))``; the last ``n % batch_size`` examples of it are dropped (a
    different subset each epoch), so every step has the same shape and nothing recompiles.
    Computed on the host while the device runs the previous epoch: 66 us for 8192 examples,
    against 1.3 ms for ``jax.random.permutation``'s sort on a 2-core CPU; and the order is
    the same on every backend. Full-batch (``batch_size == n``) keeps the data in order.

    Args:
        key: the run's key (``TrainState.key``), or its data as a list of ints.
        epoch: the epoch number (0-based).
        n: the number of examples; batch_size: examples per step.
    """
    steps = n // batch_size
    if steps == 1 and batch_size == n:
        return np.arange(n, dtype=np.int32)[None, :]
    words = key if isinstance(key, list) else _key_words(key)
    seq = np.random.SeedSequence(words, spawn_key=(int(epoch),))
    perm = np.random.Generator(np.random.PCG64(seq)).permutation(n)
    return perm[: steps * batch_size].astype(np.int32).reshape(steps, batch_size)


def evaluate(model: Model, loss, params, data, batch_size: int | None = None) -> dict:
    """Mean loss (and accuracy, for classification losses) over a dataset, in batches.

    Args:
        model, loss: the model and a loss name or record.
        params: parameters of ``model``.
        data: ``(x, y)``, checked like :func:`fit`'s data.
        batch_size: examples per compiled batch (``None``: all at once). The last batch is
            padded and its padding masked, so the result is the exact mean over the dataset
            whatever its size.

    Returns:
        ``{"loss": float, "accuracy": float}`` (``accuracy`` only for classification losses).
    """
    loss = _losses.get(loss)
    x, y = _check_data(model, loss, data, "data")
    b = _batch_size(batch_size, len(x), "batch_size")
    check_params(model, params)
    fn = _cached("eval", (model, loss), (b, None), lambda: _build_eval(model, loss, b, None))
    return {k: float(v) for k, v in jax.device_get(fn(params, x, y)).items()}


_copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))


def _raise_nonfinite(model, loss, optimizer, grad, mesh, start, x, y, idx, epoch, steps, history):
    """Replay a faulty epoch from its start with a per-step guard, and raise with its result."""
    replay = make_epoch(model, loss, optimizer, grad=grad, mode="replay", mesh=mesh)
    kept, summary = replay(_copy(start), x, y, idx)
    i, code = (int(v) for v in jax.device_get((summary["first_bad"], summary["what"])))
    if i < 0:  # pragma: no cover - the replay computes the same steps as the epoch
        i, code, kept = 0, 3, start
    what = {1: "loss", 2: "gradients", 3: "parameters"}[code]
    done = epoch * steps + i
    raise NonFiniteError(
        f"non-finite {what} at epoch {epoch}, step {i} of {steps} (global step {done}); "
        f"training stopped. The exception's .state is the last finite state ({done} steps "
        f"done); lower the learning rate, clip gradients (fnn.optim.get(..., clip_norm=1.0)) "
        f"or use on_nonfinite='skip'",
        state=kept,
        history=history,
        epoch=epoch,
        step=i,
        global_step=done,
        what=what,
    )


def _fmt(history) -> str:
    names = {
        "train_loss": "loss",
        "train_accuracy": "acc",
        "eval_loss": "eval loss",
        "eval_accuracy": "eval acc",
        "lr": "lr",
    }
    return "  ".join(f"{short} {history[k][-1]:.3g}" for k, short in names.items() if k in history)


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
    if not isinstance(epochs, (int, np.integer)) or isinstance(epochs, bool) or epochs < 0:
        raise ValueError(f"epochs: expected an int >= 0, got {epochs!r}")
    x, y = _check_data(model, loss, data, "data")
    n = len(x)
    b = _batch_size(batch_size, n, "batch_size")
    if devices is None and jax.process_count() > 1:  # multi-process (issue 9): one global mesh
        devices = "all"
    mesh = None if devices is None else _parallel.make_mesh(devices)
    _parallel.check_divisible(b, mesh)
    if on_nonfinite not in ON_NONFINITE:
        raise ValueError(f"on_nonfinite: expected one of {ON_NONFINITE}, got {on_nonfinite!r}")
    mode = "fast" if on_nonfinite == "raise" else "skip"
    epoch_fn = make_epoch(model, loss, optimizer, grad=grad, mode=mode, mesh=mesh)
    if eval_data is not None:
        ex, ey = _check_data(model, loss, eval_data, "eval_data")
        eb = min(eval_batch_size or max(b, 256), len(ex))
        if mesh is not None:
            eb = -(-eb // mesh.size) * mesh.size
        eval_fn = _cached(
            "eval", (model, loss), (eb, mesh), lambda: _build_eval(model, loss, eb, mesh)
        )
    if init is None or not isinstance(init, TrainState):
        _check_key(key)
        params = model.init(key) if init is None else init
        check_params(model, params)
        state = init_state(params, optimizer, run_key(key))
    else:
        check_params(model, init.params)
        state = init
    if mode == "skip":  # the skip epoch donates its input: keep the caller's arrays intact
        state = _copy(state)
    if mesh is not None:  # put_*: jax.device_put, or each process's part (multi-process)
        state = _parallel.put_replicated(state, mesh)
    steps = n // b
    done = int(state.step)
    if done % steps:
        raise ValueError(
            f"init: state.step={done} is not at an epoch boundary ({steps} steps per epoch "
            f"with n={n}, batch_size={b}); resume from an end-of-epoch state, or pass "
            f"init=state.params to start a new run from these parameters"
        )
    place = (
        (lambda a: jax.device_put(a))
        if mesh is None
        else (lambda a: _parallel.put_replicated(a, mesh))
    )
    x, y = place(x), place(y)
    if eval_data is not None:
        ex, ey = place(ex), place(ey)
    idx_place = (
        (lambda a: jax.device_put(a))
        if mesh is None
        else (lambda a: _parallel.put_sharded(a, _parallel.batch_sharding(mesh, axis=1)))
    )

    history: dict[str, list] = {}
    first = done // steps
    words = _key_words(state.key)  # read now: later, state.key would wait for the device
    bar = _Bar(progress, epochs, first)
    try:
        idx = idx_place(epoch_indices(words, first, n, b)) if first < epochs else None
        for e in range(first, epochs):
            t0 = time.perf_counter()
            start, idx_e = state, idx
            state, summary = epoch_fn(start, x, y, idx_e)
            if e + 1 < epochs:  # the host shuffles the next epoch while the device trains
                idx = idx_place(epoch_indices(words, e + 1, n, b))
            if mesh is not None:
                # One multi-device program in flight at a time: queued ones can deadlock in
                # XLA's CPU collectives on a machine with few cores.
                jax.block_until_ready(summary)
            evals = eval_fn(state.params, ex, ey) if eval_data is not None else {}
            summary, evals = jax.device_get(jax.block_until_ready((summary, evals)))
            if mode == "fast" and (summary["first_bad"] >= 0 or not summary["finite"]):
                _raise_nonfinite(
                    model, loss, optimizer, grad, mesh, start, x, y, idx_e, e, steps, history
                )
            row = {"train_loss": summary["loss"]}
            if "accuracy" in summary:
                row["train_accuracy"] = summary["accuracy"]
            row.update({f"eval_{k}": v for k, v in evals.items()})
            if "lr" in summary:
                row["lr"] = summary["lr"]
            row["seconds"] = time.perf_counter() - t0
            if mode == "skip":
                row["skipped"] = int(summary["skipped"])
            for k, v in row.items():
                history.setdefault(k, []).append(v if isinstance(v, int) else float(v))
            bar.update(_fmt(history))
            if callback is not None and callback(e, state, history):
                break
    finally:
        bar.close()
    return state, history


class _Bar:
    """A rich progress bar over epochs (imported only when shown)."""

    def __init__(self, enabled: bool, total: int, start: int):
        self.progress = None
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


def __getattr__(name: str):
    # fnn.train.fit_many lives in fnn.many, which builds on this module; resolve it lazily
    # so the two modules do not import each other at load time.
    if name == "fit_many":
        from fnn.many import fit_many

        return fit_many
    raise AttributeError(f"module 'fnn.train' has no attribute {name!r}")
