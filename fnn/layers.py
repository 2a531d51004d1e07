"""Layers: small records of pure functions, each with a hand-written backward rule.

A layer is a :class:`Layer` (a ``NamedTuple`` closed over by ``jax.jit``, never traced):

* ``init(key, in_shape, dtype) -> (out_shape, params)``; shapes exclude the batch axis.
* ``apply(params, x, *, key=None, train=False) -> y``: the forward pass, ``x: [batch, ...]``.
* ``backward(params, x, y, dy, *, key=None, train=False) -> (dparams, dx)``: the chain rule
  for this layer alone, given its input ``x``, its output ``y`` and the cotangent ``dy`` of
  the output; ``dparams`` has the structure of ``params``. Layers with randomness (dropout)
  must be given the same ``key`` and ``train`` in both passes.

Parameterless layers have ``params == {}`` (an empty dict contributes no leaves), so a serial
model's parameters are a list with one entry per layer, e.g.
``[{"w": ..., "b": ...}, {}, {"w": ..., "b": ...}]``.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from fnn import layers
    >>> lin = layers.dense(3)
    >>> out_shape, p = lin.init(jax.random.key(0), (2,), jnp.float32)
    >>> out_shape, p["w"].shape, p["b"].shape
    ((3,), (2, 3), (3,))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fnn import activations as _act

Array = jax.Array
Params = Any


class Layer(NamedTuple):
    """A layer: an initialiser, a forward and a hand-written backward, all pure.

    Attributes:
        name: a short description, e.g. ``"dense(128)"``; used in error messages and reports.
        init: ``init(key, in_shape, dtype) -> (out_shape, params)``. ``in_shape`` and
            ``out_shape`` are feature shapes without the batch axis.
        apply: ``apply(params, x, *, key=None, train=False) -> y`` with ``x: [batch, *in_shape]``
            and ``y: [batch, *out_shape]``.
        backward: ``backward(params, x, y, dy, *, key=None, train=False) -> (dparams, dx)``
            with ``dy`` shaped like ``y``, ``dx`` like ``x`` and ``dparams`` like ``params``.
        children: the sub-layers of a composite layer (:func:`fnn.models.serial`), in order;
            empty for a leaf layer. The manual reverse sweep walks them.
        activation: for activation layers, the :class:`fnn.activations.Activation` record
            (diagnostics read it); ``None`` otherwise.
    """

    name: str
    init: Callable
    apply: Callable
    backward: Callable
    children: tuple = ()
    activation: _act.Activation | None = None


def _check_input(layer: str, x: Array, feature_shape: tuple[int, ...]) -> None:
    """Trace-time checks of a layer input: floating dtype, rank, feature shape."""
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise TypeError(
            f"{layer}: input x must have a floating dtype, got {jnp.result_type(x)}; "
            f"convert it with x.astype(jnp.float32)"
        )
    want = ("batch", *feature_shape)
    if jnp.ndim(x) != len(want) or tuple(jnp.shape(x)[1:]) != tuple(feature_shape):
        raise ValueError(
            f"{layer}: input x must have shape [{', '.join(map(str, want))}], "
            f"got {tuple(jnp.shape(x))}"
        )


# ---------------------------------------------------------------------------------------------
# Initialisers


def default_w_init(activation: str = "identity") -> Callable:
    """The weight initialiser fnn picks for a dense layer followed by ``activation``.

    * ReLU family (relu, leaky_relu, elu, gelu, silu, softplus): He normal, variance
      ``2 / fan_in``. ReLU zeroes about half of its inputs, halving the variance of what
      passes; the factor 2 compensates so activations keep their scale with depth
      (He et al., 2015, "Delving deep into rectifiers").
    * Everything else (sigmoid, tanh, identity, softmax outputs): Glorot uniform, variance
      ``2 / (fan_in + fan_out)``, which keeps both forward activations and backward gradients
      near unit scale for activations that are roughly linear around 0
      (Glorot & Bengio, 2010).

    Returns:
        A ``jax.nn.initializers`` function ``(key, shape, dtype) -> Array``.
    """
    if activation in _act.RELU_FAMILY:
        return jax.nn.initializers.he_normal()
    return jax.nn.initializers.glorot_uniform()


# ---------------------------------------------------------------------------------------------
# dense: y = x W + b
#   dW = x^T dy,   db = sum_batch dy,   dx = dy W^T


def dense(
    fan_out: int,
    *,
    w_init: Callable | None = None,
    b_init: Callable | None = None,
) -> Layer:
    """A fully connected layer ``y = x @ w + b``.

    Args:
        fan_out: number of output features (a positive int).
        w_init: ``jax.nn.initializers`` function for ``w``; default Glorot uniform
            (see :func:`default_w_init`; :func:`fnn.mlp` picks He for the ReLU family).
        b_init: initialiser for ``b``; default zeros.

    Shapes:
        ``params = {"w": [fan_in, fan_out], "b": [fan_out]}``, ``x: [batch, fan_in]``,
        ``y: [batch, fan_out]``.

    Backward:
        ``dw = x.T @ dy``, ``db = sum(dy, axis=0)`` (the bias is shared by every row of the
        batch, so its gradient sums over the batch), ``dx = dy @ w.T``.
    """
    if not isinstance(fan_out, int) or isinstance(fan_out, bool) or fan_out < 1:
        raise ValueError(f"dense: fan_out must be a positive int, got {fan_out!r}")
    w_init = w_init or default_w_init()
    b_init = b_init or jax.nn.initializers.zeros
    name = f"dense({fan_out})"

    def init(key, in_shape, dtype=jnp.float32):
        if len(in_shape) != 1:
            raise ValueError(
                f"{name}: expects flat inputs [batch, fan_in], got feature shape "
                f"{tuple(in_shape)}; put layers.flatten() before it"
            )
        kw, kb = jax.random.split(key)
        fan_in = int(in_shape[0])
        return (fan_out,), {
            "w": w_init(kw, (fan_in, fan_out), dtype),
            "b": b_init(kb, (fan_out,), dtype),
        }

    def apply(params, x, *, key=None, train=False):
        del key, train
        _check_input(name, x, (params["w"].shape[0],))
        # Explicit [1, fan_out] bias: users may run with jax_numpy_rank_promotion="raise".
        return x @ params["w"] + params["b"][None, :]

    def backward(params, x, y, dy, *, key=None, train=False):
        del y, key, train
        dw = x.T @ dy
        db = jnp.sum(dy, axis=0)
        dx = dy @ params["w"].T
        return {"w": dw, "b": db}, dx

    return Layer(name, init, apply, backward)


# ---------------------------------------------------------------------------------------------
# activation layers: y = f(x), dx = vjp(x, dy) (or vjp_from_output(y, dy) where cheaper)


def activation(name: str | _act.Activation, **settings) -> Layer:
    """A parameterless layer applying a registered activation.

    Args:
        name: an activation name from :data:`fnn.activations.NAMES`, or a record.
        **settings: passed to :func:`fnn.activations.get` (e.g. ``negative_slope=0.2``).

    Backward: the activation's own VJP; from the output ``y`` where the activation says that
    is cheaper (sigmoid, tanh, relu, softmax), so nothing transcendental is recomputed.
    """
    act = _act.get(name, **settings)
    layer_name = act.name

    def init(key, in_shape, dtype=jnp.float32):
        del key, dtype
        return tuple(in_shape), {}

    def apply(params, x, *, key=None, train=False):
        del params, key, train
        if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
            raise TypeError(
                f"{layer_name}: input x must have a floating dtype, got {jnp.result_type(x)}"
            )
        return act.fn(x)

    def backward(params, x, y, dy, *, key=None, train=False):
        del params, key, train
        if act.vjp_from_output is not None:
            return {}, act.vjp_from_output(y, dy)
        return {}, act.vjp(x, dy)

    return Layer(layer_name, init, apply, backward, activation=act)


# ---------------------------------------------------------------------------------------------
# flatten: y = reshape(x, [batch, -1]); dx = reshape(dy, x.shape)


def flatten() -> Layer:
    """Flatten every axis but the batch: ``[batch, *shape] -> [batch, prod(shape)]``.

    Backward: ``dx = dy.reshape(x.shape)``.
    """

    def init(key, in_shape, dtype=jnp.float32):
        del key, dtype
        return (math.prod(in_shape),), {}

    def apply(params, x, *, key=None, train=False):
        del params, key, train
        return jnp.reshape(x, (x.shape[0], -1))

    def backward(params, x, y, dy, *, key=None, train=False):
        del params, y, key, train
        return {}, jnp.reshape(dy, x.shape)

    return Layer("flatten", init, apply, backward)


# ---------------------------------------------------------------------------------------------
# dropout: y = m * x / (1 - rate), m ~ Bernoulli(1 - rate); dx = m * dy / (1 - rate)


def dropout(rate: float) -> Layer:
    """Inverted dropout: in training, zero each unit with probability ``rate``.

    Args:
        rate: the probability of *dropping* a unit, in ``[0, 1)``. (Not the keep
            probability, which is what stax's ``Dropout(rate)`` confusingly took.)

    In training (``train=True``, ``key`` required) kept units are scaled by
    ``1 / (1 - rate)`` so the expected output equals the input, and evaluation
    (``train=False``) is then the identity. Backward: ``dx = mask * dy / (1 - rate)`` with the
    mask regenerated from the same ``key``, so both passes must get the same key.
    """
    if not 0.0 <= float(rate) < 1.0:
        raise ValueError(f"dropout: rate must be in [0, 1), got {rate!r}")
    keep = 1.0 - float(rate)
    name = f"dropout({rate})"

    def init(key, in_shape, dtype=jnp.float32):
        del key, dtype
        return tuple(in_shape), {}

    def _mask(key, x):
        if key is None:
            raise ValueError(f"{name}: train=True needs a key (jax.random.key) for the mask")
        return jax.random.bernoulli(key, keep, x.shape)

    def apply(params, x, *, key=None, train=False):
        del params
        if not train or rate == 0.0:
            return x
        return jnp.where(_mask(key, x), x / keep, jnp.zeros_like(x))

    def backward(params, x, y, dy, *, key=None, train=False):
        del params, y
        if not train or rate == 0.0:
            return {}, dy
        return {}, jnp.where(_mask(key, x), dy / keep, jnp.zeros_like(dy))

    return Layer(name, init, apply, backward)
