"""The training state and one optimizer step.

:func:`make_step` compiles ``step(state, x, y) -> (state, metrics)``, donating the state's
buffers; the gradient comes from ``jax.value_and_grad`` (``grad="autodiff"``) or from the
hand-written sweep :func:`fnn.backprop.value_and_grad` (``grad="manual"``). The epoch
programs (:mod:`fnn.train.epoch`) scan the same two halves, :func:`step_parts`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fnn import backprop as _backprop
from fnn import losses as _losses
from fnn.models import Model
from fnn.train.validate import GRADS, check_choice, check_key

Array = jax.Array

#: The metrics a step can report; :func:`make_step` computes only those asked for.
METRICS = ("loss", "accuracy", "grad_norm")


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
        model_state: the model's state pytree (``model.init_state()``: batch norm's running
            statistics), updated by every training step and read by evaluation; ``{}`` for a
            stateless model.
    """

    params: Any
    opt_state: Any
    step: Array
    key: Array
    model_state: Any = {}  # noqa: RUF012 - an empty pytree, replaced, never mutated


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite value (``on_nonfinite="raise"``).

    Attributes:
        state: the last finite :class:`TrainState` (every step before the bad one applied).
        history: the history of the epochs completed before this one.
        epoch: the epoch of the bad step (0-based); ``step``: its index in the epoch;
            ``global_step``: its index in the run; ``what``: ``"loss"``, ``"gradients"``
            or ``"parameters"`` (finite gradients whose update overflowed); ``runs``: the
            faulty runs of a sweep (:func:`fnn.train.fit_many`), ``[0]`` for one run.
    """

    def __init__(self, message, *, state, history, epoch, step, global_step, what, runs=(0,)):
        super().__init__(message)
        self.state, self.history = state, history
        self.epoch, self.step, self.global_step, self.what = epoch, step, global_step, what
        self.runs = list(runs)


def strong(tree):
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


def init_state(
    params, optimizer: optax.GradientTransformation, key, model_state=None
) -> TrainState:
    """A fresh :class:`TrainState`: ``optimizer.init(params)``, ``step = 0``.

    Args:
        params: model parameters, e.g. ``model.init(key)``.
        optimizer: any optax ``GradientTransformation`` (e.g. from :func:`fnn.optim.get`).
        key: the run's PRNG key (dropout and shuffling derive from it).
        model_state: the model's state, ``model.init_state()`` (needed for a stateful model
            such as one with batch norm; ``None``: ``{}``, a stateless model).

    ``params`` are used as they are, not copied: a step from :func:`make_step` donates them.
    """
    check_key(key)
    params = strong(params)
    model_state = {} if model_state is None else strong(model_state)
    opt_state = strong(optimizer.init(params))
    return TrainState(params, opt_state, jnp.zeros((), jnp.int32), key, model_state)


def _value_and_grad(model: Model, loss, grad: str, accuracy: bool):
    """``f(params, x, y, key, model_state) -> (loss, output or None, grads, model_state)``,
    by autodiff or the hand-written sweep; a stateless model's state passes through."""
    if grad == "manual":
        sweep = _backprop.value_grad_state(model, loss)

        def manual(params, x, y, key, ms):
            ms_in = ms if model.stateful else None
            value, grads, new = sweep(params, x, y, key=key, train=True, state=ms_in)
            # The same forward as the sweep's (same params, input, key): XLA's CSE merges it,
            # so the accuracy costs no second forward pass (checked: equal dot counts).
            out = model.apply(params, x, key=key, train=True, state=ms_in) if accuracy else None
            return value, out, grads, new if model.stateful else ms

        return manual

    def objective(params, x, y, key, ms):
        if not model.stateful:
            out = model.apply(params, x, key=key, train=True)
            return loss.fn(out, y), (out, ms)
        out, res = model.forward(params, x, key=key, train=True, state=ms)
        return loss.fn(out, y), (out, model.layer.next_state(ms, res))

    vag = jax.value_and_grad(objective, has_aux=True)

    def autodiff(params, x, y, key, ms):
        (value, (out, new)), grads = vag(params, x, y, key, ms)
        return value, out, grads, new

    return autodiff


def step_parts(model: Model, loss, optimizer, grad: str, metrics=METRICS):
    """The two halves of a step: ``measure(state, x, y) -> (update, metrics)`` and
    ``apply(state, update) -> state``, kept apart so that an epoch can guard the second.

    ``update`` is ``(grads, model_state)``: the gradients and the model's next state (batch
    statistics folded into the running ones), both applied together or not at all.
    ``metrics`` names what ``measure`` reports besides ``"loss"`` (always there):
    ``"accuracy"`` (classification losses only) and ``"grad_norm"``.
    """
    loss = _losses.get(loss)
    check_choice("grad", grad, GRADS)
    for name in metrics:
        check_choice("metrics[i]", name, METRICS)
    accuracy = "accuracy" in metrics and loss.accuracy is not None
    value_and_grad = _value_and_grad(model, loss, grad, accuracy)

    def measure(state: TrainState, x, y):
        # A key is always passed; without dropout nothing reads it and XLA drops the fold_in.
        key = jax.random.fold_in(state.key, state.step)
        value, out, grads, model_state = value_and_grad(state.params, x, y, key, state.model_state)
        found = {"loss": value}
        if "grad_norm" in metrics:
            # The barrier makes XLA materialise the gradients before reducing them: left
            # free, CPU XLA fused the norm's reductions into the gradients' producers, which
            # cost 12-17% of a step (medium MLP) against 3-7% with it.
            found["grad_norm"] = optax.tree.norm(jax.lax.optimization_barrier(grads))
        if accuracy:
            found["accuracy"] = loss.accuracy(out, y)
        return (grads, model_state), found

    def apply(state: TrainState, update) -> TrainState:
        grads, model_state = update
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(
            _match(params, state.params),
            _match(opt_state, state.opt_state),
            state.step + 1,
            state.key,
            _match(model_state, state.model_state),
        )

    return measure, apply


def step_fn(model: Model, loss, optimizer, grad: str = "autodiff", metrics=METRICS):
    """The pure step ``(state, x, y) -> (state, metrics)`` that :func:`make_step` compiles."""
    measure, apply = step_parts(model, loss, optimizer, grad, metrics)

    def step(state: TrainState, x, y):
        update, found = measure(state, x, y)
        return apply(state, update), found

    return step


def make_step(
    model: Model,
    loss,
    optimizer: optax.GradientTransformation,
    grad: str = "autodiff",
    *,
    accuracy: bool = False,
    grad_norm: bool = False,
):
    """A jit-compiled training step that donates the state's buffers.

    Args:
        model: a :class:`fnn.models.Model`.
        loss: a loss name from :data:`fnn.losses.NAMES` or a :class:`fnn.losses.Loss`.
        optimizer: any optax ``GradientTransformation``.
        grad: ``"autodiff"`` (``jax.value_and_grad`` of ``loss.fn(model.apply(...))``) or
            ``"manual"`` (:func:`fnn.backprop.value_and_grad`, the hand-written sweep).
        accuracy: also report the accuracy (classification losses only): an argmax and a
            mean, 3 more kernels on CPU.
        grad_norm: also report the gradient's global L2 norm: a reduction per parameter,
            ~13 more kernels for a 3-layer MLP.

    Returns:
        ``step(state, x, y) -> (state, metrics)`` with ``x: [batch, *in_shape]``, ``y`` the
        loss's targets, and ``metrics`` the scalar ``loss`` (plus ``accuracy`` and
        ``grad_norm`` when asked for), all measured on the batch with the parameters
        *before* the update. The model runs with ``train=True`` and the key
        ``fold_in(state.key, state.step)``; a stateful model's ``state.model_state`` is
        updated from the batch. The input state is donated: do not use it after the call.

    The default reports only the loss, so that the step does the work of a hand-written
    one: on a 2-core CPU each extra kernel costs about a microsecond, which is 5-20% of a
    small MLP's step at batch 1 (``benchmarks/RESULTS.md``).
    """
    names = ("loss",) + ("accuracy",) * bool(accuracy) + ("grad_norm",) * bool(grad_norm)
    return jax.jit(step_fn(model, loss, optimizer, grad, names), donate_argnums=0)
