"""The layer record, and the helpers every layer file uses.

A layer is a :class:`Layer`: a ``NamedTuple`` of pure functions, closed over by ``jax.jit`` and
never traced. Its forward returns the output *and the residuals its backward needs*; its
backward takes the parameters, those residuals and the output cotangent. That is the shape of
``jax.custom_vjp``'s ``fwd``/``bwd``, so a layer bridges to autodiff directly
(:func:`fnn.backprop.manual_vjp`), and a composite layer (:func:`fnn.models.serial`,
``residual``, ``parallel``) is nothing but its children's forwards and backwards composed.

Each leaf chooses its residuals: ``dense`` keeps its input ``x``; ``sigmoid`` and ``tanh``
keep their output ``y`` (their derivatives are cheapest from it); ``dropout`` keeps its mask.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
Params = Any


class Layer(NamedTuple):
    """A layer: an initialiser, a forward and a hand-written backward, all pure.

    Attributes:
        name: a short description, e.g. ``"dense(128)"``; used in errors and reports.
        init: ``init(key, in_shape, dtype) -> (out_shape, params)``; shapes exclude the batch
            axis. Parameterless layers return ``params = {}``.
        forward: ``forward(params, x, *, key=None, train=False, state=None) -> (y, res)`` with
            ``x: [batch, *in_shape]``, ``y: [batch, *out_shape]`` and ``res`` any pytree of what
            the backward needs. ``key`` drives randomness (dropout), ``train`` the mode, ``state``
            the running statistics of stateful layers (batch norm); others ignore them.
        backward: ``backward(params, res, dy) -> (dparams, dx)``, the chain rule for this layer
            alone: ``dy`` shaped like ``y``, ``dx`` like ``x``, ``dparams`` like ``params``.
        rule: ``"manual"`` for a hand-written backward, ``"autodiff"`` for a layer whose rule is
            ``jax.vjp`` of its forward (:func:`fnn.layers.custom` without ``backward``);
            reports mark the latter.
        parts: for composite layers, ``((path, child), ...)`` with paths like ``"[2]"`` that
            match the params tree; empty for leaves. Reports and diagnostics name sub-layers
            through it (:func:`fnn.models.sublayers`); the sweep never reads it.
        taps: for composite layers, ``taps(res) -> {path: {"in": x_i, "out": y_i}}`` giving
            every descendant's input and output from the residuals, paths relative to this
            layer; ``None`` for leaves. The one way to name intermediates
            (:func:`fnn.models.taps`).
        init_state: stateful layers only (batch norm): ``init_state(in_shape, dtype) -> state``.
        next_state: stateful layers only: ``next_state(state, res) -> state``, the running
            statistics after a training forward whose residuals are ``res``.
        info: static facts about the layer as ``((key, value), ...)``, e.g.
            ``(("activation", <Activation>),)``; read with :func:`info`.
    """

    name: str
    init: Callable
    forward: Callable
    backward: Callable
    rule: str = "manual"
    parts: tuple = ()
    taps: Callable | None = None
    init_state: Callable | None = None
    next_state: Callable | None = None
    info: tuple = ()


def apply(layer: Layer, params, x, *, key=None, train: bool = False, state=None):
    """The forward output alone: ``layer.forward(...)[0]`` (XLA drops unused residuals)."""
    return layer.forward(params, x, key=key, train=train, state=state)[0]


def info(layer: Layer, name: str, default=None):
    """The static fact ``name`` of ``layer`` (see :attr:`Layer.info`), or ``default``."""
    return dict(layer.info).get(name, default)


def out_shape(layer: Layer, in_shape, dtype=jnp.float32) -> tuple[int, ...]:
    """The output feature shape of ``layer`` for inputs of feature shape ``in_shape``."""
    shapes = []

    def _init(k):
        out, p = layer.init(k, tuple(in_shape), dtype)
        shapes.append(tuple(int(s) for s in out))
        return p

    jax.eval_shape(_init, jax.random.key(0))
    return shapes[0]


def check_float(layer: str, x: Array) -> None:
    """Trace-time check that a layer input has a floating dtype."""
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise TypeError(
            f"{layer}: input x must have a floating dtype, got {jnp.result_type(x)}; "
            f"convert it with x.astype(jnp.float32)"
        )


def check_positive_int(layer: str, arg: str, value) -> int:
    """``value`` as an int, or a ``ValueError`` naming the layer and the argument."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{layer}: {arg} must be a positive int, got {value!r}")
    return value
