"""Compiled epochs and evaluation: one ``lax.scan`` over the shuffled minibatches.

An epoch is **one** program: the minibatches are gathered from the dataset held on the
device and a scan runs the step of :mod:`fnn.train.step` over them. The programs are
module-level ``jax.jit`` functions whose first argument is a static, hashable
:class:`EpochSpec` (model, loss, optimizer and settings, compared by value): ``jax.jit``'s own
cache reuses a compiled epoch across epochs, calls and equal records; fnn keeps no cache.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fnn import losses as _losses
from fnn import optim as _optim
from fnn import parallel as _parallel
from fnn.train.step import TrainState, step_parts
from fnn.train.validate import GRADS, check_choice

#: How an epoch treats non-finite steps (see :func:`make_epoch`).
MODES = ("fast", "skip", "replay")
GUARDS = ("cond", "select")


class _Identity:
    """A static argument that is not hashable, compared by identity (kept alive by jit)."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __eq__(self, other):
        return isinstance(other, _Identity) and other.obj is self.obj

    def __hash__(self):
        return id(self.obj)


def value_key(obj):
    """What a static argument is compared by: its value where it can be hashed; a record
    with an unhashable field (a model's ``params_spec`` list) field by field; a pytree of
    hashable leaves by its structure and leaves; anything else by identity.

    Functions inside records compare by identity, so two records are equal exactly when
    they run the same code on the same settings.
    """
    try:
        hash(obj)
    except TypeError:
        pass
    else:
        return obj
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a NamedTuple record
        return (type(obj), tuple(value_key(f) for f in obj))
    leaves, treedef = jax.tree.flatten(obj)
    try:
        hash(tuple(leaves))
    except TypeError:
        return _Identity(obj)
    return (treedef, tuple(leaves))


@dataclasses.dataclass(frozen=True, eq=False)
class Static:
    """A bundle of records and settings passed to ``jax.jit`` as one static argument.

    Equal (and equally hashed) when every field's :func:`value_key` is equal, so a new
    ``optim.get(...)`` of the same settings, or a loss record rebuilt from the same
    functions, hits the compiled program of the first. The hash is computed once.
    """

    fields: tuple
    key: Any = dataclasses.field(init=False, repr=False)
    digest: int = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        key = tuple(value_key(f) for f in self.fields)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "digest", hash(key))

    def __eq__(self, other):
        return isinstance(other, Static) and (self is other or self.key == other.key)

    def __hash__(self):
        return self.digest


@dataclasses.dataclass(frozen=True)
class EpochSpec:
    """What an epoch program is compiled for (the static argument of its ``jax.jit``).

    Attributes:
        records: ``Static((model, loss, optimizer))``.
        grad: ``"autodiff"`` or ``"manual"``; mode: one of :data:`MODES`; guard: one of
            :data:`GUARDS`; mesh: a batch mesh or ``None``; trace: also return the loss and
            learning rate of every step (``summary["trace_loss"]``, ``["trace_lr"]``).
    """

    records: Static
    grad: str
    mode: str
    mesh: Any
    guard: str
    trace: bool = False

    @property
    def model(self):
        return self.records.fields[0]

    @property
    def loss(self):
        return self.records.fields[1]

    @property
    def optimizer(self):
        return self.records.fields[2]


def _select(take, new: TrainState, old: TrainState) -> TrainState:
    pick = lambda a, b: jnp.where(take, a, b)  # a scalar predicate; fuses into the update
    return TrainState(
        jax.tree.map(pick, new.params, old.params),
        jax.tree.map(pick, new.opt_state, old.opt_state),
        pick(new.step, old.step),
        old.key,
        jax.tree.map(pick, new.model_state, old.model_state),
    )


def guard_kind(mesh) -> str:
    """How the skip mode leaves a non-finite update out: ``lax.cond`` on CPU, else ``where``.

    Measured on CPU (small MLP epoch): a select over the state cost 50% (XLA copies the
    loop-carried state to keep both versions), a cond ~0. On GPU a cond inside the loop
    costs a device-to-host sync per step while the select fuses into the update kernels.
    """
    platform = (mesh.devices.flat[0] if mesh is not None else jax.devices()[0]).platform
    return "cond" if platform == "cpu" else "select"


def all_finite(tree):
    """A boolean scalar: every inexact leaf of ``tree`` is finite."""
    leaves = [
        jnp.all(jnp.isfinite(a))
        for a in jax.tree.leaves(tree)
        if jnp.issubdtype(a.dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _step_body(spec: EpochSpec, keys):
    """The scan body of one epoch: a step, its guard, and the running sums."""
    mode, guard = spec.mode, spec.guard
    names = ("loss", "accuracy") if mode == "fast" else METRICS_GUARDED
    measure, apply = step_parts(spec.model, spec.loss, spec.optimizer, spec.grad, names)

    def keep(state, update):
        del update
        return state._replace(step=state.step + 1) if mode == "skip" else state

    def body(carry, inp):
        state, sums, first_bad, what = carry
        i, xb, yb = inp
        update, m = measure(state, xb, yb)
        ok_loss = jnp.isfinite(m["loss"])
        fresh = first_bad < 0
        if mode == "fast":
            state, take, bad = apply(state, update), jnp.bool_(True), ~ok_loss
        else:
            ok_grad = jnp.isfinite(m["grad_norm"])
            if mode == "replay":
                new = apply(state, update)
                ok_params = all_finite((new.params, new.model_state))
                bad = ~(ok_loss & ok_grad & ok_params)
                take = fresh & ~bad
                state = _select(take, new, state)
                what = jnp.where(fresh & bad, jnp.where(ok_loss, jnp.where(ok_grad, 3, 2), 1), what)
            else:
                bad = ~(ok_loss & ok_grad)
                take = ~bad
                if guard == "cond":
                    state = jax.lax.cond(take, apply, keep, state, update)
                else:
                    new = apply(state, update)
                    state = _select(take, new, state)._replace(step=new.step)
            sums["skipped"] = sums["skipped"] + bad.astype(jnp.int32)
        first_bad = jnp.where(fresh & bad, i, first_bad)
        dtype = sums["taken"].dtype
        for k in keys:
            sums[k] = sums[k] + jnp.where(take, m[k].astype(dtype), jnp.zeros((), dtype))
        sums["taken"] = sums["taken"] + take.astype(dtype)
        out = None
        if spec.trace:
            lr = _optim.learning_rate(state.opt_state)
            out = (m["loss"], jnp.full((), jnp.nan) if lr is None else lr)
        return (state, sums, first_bad, what), out

    return body


METRICS_GUARDED = ("loss", "accuracy", "grad_norm")


def epoch_program(spec: EpochSpec):
    """The pure epoch ``(state, x, y, idx) -> (state, summary)`` of ``spec`` (see
    :func:`make_epoch`), for :func:`make_epoch` to compile or the K-run programs to map."""
    loss = _losses.get(spec.loss)
    keys = ("loss",) + (("accuracy",) if loss.accuracy is not None else ())
    body = _step_body(spec, keys)
    idx_sharding = None if spec.mesh is None else _parallel.batch_sharding(spec.mesh, axis=1)

    def epoch(state: TrainState, x, y, idx):
        # One gather of the whole epoch, then a scan over contiguous slices: measured faster
        # than gathering each minibatch inside the loop (12.6 vs 16.9 ms, small MLP, CPU).
        idx = _parallel.constrain(idx, idx_sharding)
        xs, ys = x[idx], y[idx]
        leaves = jax.tree.leaves(state.params)
        zero = jnp.zeros((), leaves[0].dtype if leaves else jnp.float32)
        sums = {k: zero for k in (*keys, "taken")}
        if spec.mode != "fast":
            sums["skipped"] = jnp.int32(0)
        steps = jnp.arange(idx.shape[0], dtype=jnp.int32)
        carry = (state, sums, jnp.int32(-1), jnp.int32(0))
        (state, sums, first_bad, what), trace = jax.lax.scan(body, carry, (steps, xs, ys))
        summary = {k: sums[k] / sums["taken"] for k in keys}
        summary.update(first_bad=first_bad, what=what)
        if spec.mode == "fast":
            summary["finite"] = all_finite((state.params, state.opt_state, state.model_state))
        else:
            summary["skipped"] = sums["skipped"]
        lr = _optim.learning_rate(state.opt_state)
        if lr is not None:
            summary["lr"] = lr
        if spec.trace:
            summary["trace_loss"], summary["trace_lr"] = trace
        return state, summary

    return epoch


def _run_epoch(spec: EpochSpec, state, x, y, idx):
    out = epoch_program(spec)(state, x, y, idx)
    if spec.mesh is None:
        return out
    return jax.lax.with_sharding_constraint(out, _parallel.replicated(spec.mesh))


# fast mode keeps its input (the start-of-epoch state) alive for a replay after a fault;
# XLA copies it into the loop once per epoch, which is nothing next to the steps.
_EPOCH_KEEP = jax.jit(_run_epoch, static_argnums=0)
_EPOCH_DONATE = jax.jit(_run_epoch, static_argnums=0, donate_argnums=1)


def epoch_spec(
    model, loss, optimizer, *, grad="autodiff", mode="fast", mesh=None, guard=None, trace=False
) -> EpochSpec:
    """The checked :class:`EpochSpec` of :func:`make_epoch`'s arguments."""
    loss = _losses.get(loss)
    check_choice("mode", mode, MODES)
    check_choice("grad", grad, GRADS)
    guard = guard or guard_kind(mesh)
    check_choice("guard", guard, GUARDS)
    return EpochSpec(Static((model, loss, optimizer)), grad, mode, mesh, guard, bool(trace))


def make_epoch(
    model, loss, optimizer, *, grad="autodiff", mode="fast", mesh=None, guard=None, trace=False
):
    """The compiled epoch :func:`fnn.train.fit` runs, for resumable or custom loops.

    Args:
        model, loss, optimizer, grad: as for :func:`fnn.train.make_step`.
        mode: ``"fast"`` (no per-step guard; the input state is kept, not donated),
            ``"skip"`` (non-finite steps leave the state unchanged; donates) or ``"replay"``
            (stops updating at the first non-finite loss, gradient or parameter; donates).
        mesh: a :func:`fnn.parallel.make_mesh` mesh for data-parallel epochs (``x, y`` and
            the state replicated on it, ``idx`` sharded along its minibatch axis).
        guard: ``"cond"`` or ``"select"``, how ``"skip"`` mode leaves an update out
            (default: by platform, see :func:`guard_kind`); both give the same result.
        trace: also return every step's loss and learning rate (``trace_loss``, ``trace_lr``
            of ``[steps]``), as :func:`fnn.diagnostics.lr_find` reads them.

    Returns:
        ``epoch(state, x, y, idx) -> (state, summary)``: ``x, y`` the whole dataset on the
        device, ``idx`` int32 ``[steps, batch]`` from :func:`epoch_indices`. It scans the step
        over the minibatches ``x[idx[i]]``. ``summary`` holds the means over the applied
        steps of ``loss`` (and ``accuracy``), ``lr`` (the rate of the last update, when the
        optimizer state exposes it), ``first_bad`` (the first non-finite step, or -1),
        ``what`` (replay: 1 loss, 2 gradients, 3 parameters), and ``finite`` (fast: the final
        state is finite) or ``skipped`` (the number of non-finite steps). Equal arguments
        give the same compiled program (``jax.jit``'s cache, keyed by value).
    """
    spec = epoch_spec(
        model, loss, optimizer, grad=grad, mode=mode, mesh=mesh, guard=guard, trace=trace
    )
    return functools.partial(_EPOCH_KEEP if mode == "fast" else _EPOCH_DONATE, spec)


def run_key(key):
    """The key :func:`fnn.train.fit` gives a fresh state: ``fold_in(key, 2**32 - 1)``.

    ``model.init(key)`` gives layer ``i`` the key ``fold_in(key, i)``; the largest uint32 is
    an index no model reaches, so dropout masks and shuffles never reuse an init key.
    """
    return jax.random.fold_in(key, 0xFFFFFFFF)


def key_words(key, runs: bool = False) -> list:
    """A key's data as a list of Python ints (the seed of :func:`epoch_indices`); with
    ``runs``, a list of K such lists from K stacked keys (one transfer from the device)."""
    raw = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    raw = np.asarray(raw).astype(np.uint32)
    if runs:
        return [[int(w) for w in row.ravel()] for row in raw]
    return [int(w) for w in raw.ravel()]


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
    words = key if isinstance(key, list) else key_words(key)
    seq = np.random.SeedSequence(words, spawn_key=(int(epoch),))
    perm = np.random.Generator(np.random.PCG64(seq)).permutation(n)
    return perm[: steps * batch_size].astype(np.int32).reshape(steps, batch_size)


# ---------------------------------------------------------------------------------------------
# Evaluation


def eval_program(model, loss, batch_size: int | None, mesh=None):
    """The pure ``(params, model_state, x, y) -> {"loss", "accuracy"?}``: exact means over
    the dataset in padded, masked batches of ``batch_size``, the model in evaluation mode
    reading ``model_state`` (running statistics)."""
    loss = _losses.get(loss)
    sharding = None if mesh is None else _parallel.batch_sharding(mesh, axis=1)

    def per_example(fn, out, y):
        # Every fnn loss is a mean over the batch of per-example terms (mse and bce also over
        # the outputs, which each example has equally many of), so a 1-row batch is one term.
        return jax.vmap(lambda o, t: fn(o[None], t[None]))(out, y)

    def run(params, model_state, x, y):
        n = x.shape[0]
        ms = model_state if model.stateful else None
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
            out = model.apply(params, xb, state=ms)
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

    return run


@functools.partial(jax.jit, static_argnums=(0, 1))
def _eval(records: Static, settings: tuple, params, model_state, x, y):
    model, loss = records.fields
    return eval_program(model, loss, *settings)(params, model_state, x, y)


def make_eval(model, loss, batch_size: int | None, mesh=None):
    """The compiled :func:`eval_program`, ``f(params, model_state, x, y)`` (``jax.jit``'s
    cache, keyed by value)."""
    return functools.partial(_eval, Static((model, _losses.get(loss))), (batch_size, mesh))
