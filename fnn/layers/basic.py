"""Leaf layers of an MLP: dense, activation, flatten, dropout; and the user's own ``custom``.

Each forward sits beside its hand-written backward, with the rule in the comment above them.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from fnn import layers
    >>> lin = layers.dense(3)
    >>> out_shape, p = lin.init(jax.random.key(0), (2,), jnp.float32)
    >>> out_shape, p["w"].shape, p["b"].shape
    ((3,), (2, 3), (3,))
    >>> y, res = lin.forward(p, jnp.ones((5, 2), jnp.float32))
    >>> dp, dx = lin.backward(p, res, jnp.ones_like(y))
    >>> dp["w"].shape, dx.shape
    ((2, 3), (5, 2))
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from fnn import activations as _act
from fnn.layers.base import Layer, check_float, check_positive_int

# ---------------------------------------------------------------------------------------------
# Initialisers


def default_w_init(activation="identity") -> Callable:
    """The weight initialiser fnn picks for a dense layer followed by ``activation``.

    * ReLU family (relu, leaky_relu, elu, gelu, silu, softplus): He normal, variance
      ``2 / fan_in``. ReLU zeroes about half of its inputs, halving the variance of what
      passes; the factor 2 compensates so activations keep their scale with depth
      (He et al., 2015, "Delving deep into rectifiers").
    * Everything else (sigmoid, tanh, identity, softmax outputs): Glorot uniform, variance
      ``2 / (fan_in + fan_out)``, which keeps both forward activations and backward gradients
      near unit scale for activations that are roughly linear around 0
      (Glorot & Bengio, 2010).

    Args:
        activation: an activation name or record.

    Returns:
        A ``jax.nn.initializers`` function ``(key, shape, dtype) -> Array``.
    """
    name = activation.name if isinstance(activation, _act.Activation) else activation
    if name in _act.RELU_FAMILY:
        return jax.nn.initializers.he_normal()
    return jax.nn.initializers.glorot_uniform()


# ---------------------------------------------------------------------------------------------
# dense: y = x W + b over the last axis; res = x
#   dW = sum over leading axes of x^T dy,   db = sum of dy over leading axes,   dx = dy W^T


def dense(fan_out: int, *, w_init: Callable | None = None, b_init: Callable | None = None) -> Layer:
    """A fully connected layer ``y = x @ w + b`` on the last axis.

    Args:
        fan_out: number of output features (a positive int).
        w_init: ``jax.nn.initializers`` function for ``w``; default Glorot uniform
            (see :func:`default_w_init`; :func:`fnn.mlp` picks He for the ReLU family).
        b_init: initialiser for ``b``; default zeros.

    Shapes:
        ``params = {"w": [fan_in, fan_out], "b": [fan_out]}``, ``x: [batch, ..., fan_in]``,
        ``y: [batch, ..., fan_out]``: every leading axis (a sequence, say) shares the weights.

    Backward (keeps ``x``):
        ``dw = X.T @ DY`` and ``db = sum(DY, axis=0)`` with ``X, DY`` the inputs and cotangents
        with all leading axes merged (the weights are shared by every row, so their gradient
        sums over rows), ``dx = dy @ w.T``.
    """
    check_positive_int("dense", "fan_out", fan_out)
    w_init = w_init or default_w_init()
    b_init = b_init or jax.nn.initializers.zeros
    name = f"dense({fan_out})"

    def init(key, in_shape, dtype=jnp.float32):
        if len(in_shape) < 1:
            raise ValueError(f"{name}: expects inputs [batch, ..., fan_in], got feature shape ()")
        kw, kb = jax.random.split(key)
        fan_in = int(in_shape[-1])
        return (*tuple(in_shape[:-1]), fan_out), {
            "w": w_init(kw, (fan_in, fan_out), dtype),
            "b": b_init(kb, (fan_out,), dtype),
        }

    def forward(params, x, *, key=None, train=False, state=None):
        del key, train, state
        check_float(name, x)
        fan_in = params["w"].shape[0]
        if jnp.ndim(x) < 2 or jnp.shape(x)[-1] != fan_in:
            raise ValueError(
                f"{name}: input x must have shape [batch, ..., {fan_in}], got {jnp.shape(x)}"
            )
        # Explicit broadcast of b: users may run with jax_numpy_rank_promotion="raise".
        b = jnp.reshape(params["b"], (1,) * (jnp.ndim(x) - 1) + (-1,))
        return x @ params["w"] + b, x

    def backward(params, x, dy):
        x2 = jnp.reshape(x, (-1, x.shape[-1]))
        dy2 = jnp.reshape(dy, (-1, dy.shape[-1]))
        return {"w": x2.T @ dy2, "b": jnp.sum(dy2, axis=0)}, dy @ params["w"].T

    return Layer(name, init, forward, backward)


# ---------------------------------------------------------------------------------------------
# activation layers: y = f(x); res = y where the derivative is cheaper from the output
# (sigmoid, tanh, relu, softmax: dx = vjp_from_output(y, dy)), else x (dx = vjp(x, dy))


def activation(name, **settings) -> Layer:
    """A parameterless layer applying a registered activation.

    Args:
        name: an activation name from :data:`fnn.activations.NAMES`, or a record
            (e.g. from :func:`fnn.activations.define`).
        **settings: passed to :func:`fnn.activations.get` (e.g. ``negative_slope=0.2``).

    Backward: the activation's own VJP; from the output ``y`` where the activation says that
    is cheaper (sigmoid, tanh, relu, softmax), so nothing transcendental is recomputed.
    """
    act = _act.get(name, **settings)
    from_y = act.vjp_from_output is not None

    def init(key, in_shape, dtype=jnp.float32):
        del key, dtype
        return tuple(in_shape), {}

    def forward(params, x, *, key=None, train=False, state=None):
        del params, key, train, state
        check_float(act.name, x)
        y = act.fn(x)
        return y, (y if from_y else x)

    def backward(params, res, dy):
        del params
        return {}, (act.vjp_from_output(res, dy) if from_y else act.vjp(res, dy))

    return Layer(act.name, init, forward, backward, info=(("activation", act),))


# ---------------------------------------------------------------------------------------------
# flatten: y = reshape(x, [batch, -1]); res = x's shape; dx = reshape(dy, x.shape)


def flatten() -> Layer:
    """Flatten every axis but the batch: ``[batch, *shape] -> [batch, prod(shape)]``.

    Backward: ``dx = dy.reshape(x.shape)`` (keeps only the static shape).
    """

    def init(key, in_shape, dtype=jnp.float32):
        del key, dtype
        return (math.prod(in_shape),), {}

    def forward(params, x, *, key=None, train=False, state=None):
        del params, key, train, state
        return jnp.reshape(x, (x.shape[0], -1)), jnp.zeros((0, *x.shape[1:]), x.dtype)

    def backward(params, res, dy):
        del params
        return {}, jnp.reshape(dy, (dy.shape[0], *res.shape[1:]))

    return Layer("flatten", init, forward, backward)


# ---------------------------------------------------------------------------------------------
# dropout: y = m * x / (1 - rate), m ~ Bernoulli(1 - rate); res = m; dx = m * dy / (1 - rate)


def dropout(rate: float) -> Layer:
    """Inverted dropout: in training, zero each unit with probability ``rate``.

    Args:
        rate: the probability of *dropping* a unit, in ``[0, 1)``. (Not the keep
            probability, which is what stax's ``Dropout(rate)`` confusingly took.)

    In training (``train=True``, ``key`` required) kept units are scaled by
    ``1 / (1 - rate)`` so the expected output equals the input, and evaluation
    (``train=False``) is then the identity. Backward: ``dx = mask * dy / (1 - rate)`` with the
    mask kept from the forward (the residual), so no key is needed.
    """
    if not 0.0 <= float(rate) < 1.0:
        raise ValueError(f"dropout: rate must be in [0, 1), got {rate!r}")
    keep = 1.0 - float(rate)
    name = f"dropout({rate})"

    def init(key, in_shape, dtype=jnp.float32):
        del key, dtype
        return tuple(in_shape), {}

    def forward(params, x, *, key=None, train=False, state=None):
        del params, state
        if not train or rate == 0.0:
            return x, None
        if key is None:
            raise ValueError(f"{name}: train=True needs a key (jax.random.key) for the mask")
        mask = jax.random.bernoulli(key, keep, x.shape)
        return jnp.where(mask, x / keep, jnp.zeros_like(x)), mask

    def backward(params, mask, dy):
        del params
        if mask is None:
            return {}, dy
        return {}, jnp.where(mask, dy / keep, jnp.zeros_like(dy))

    return Layer(name, init, forward, backward)


# ---------------------------------------------------------------------------------------------
# custom: the user's own layer, with a hand-written backward or autodiff's


def custom(
    apply: Callable,
    *,
    init: Callable | None = None,
    backward: Callable | None = None,
    name: str | None = None,
) -> Layer:
    """A layer from the user's own functions.

    Args:
        apply: ``apply(params, x) -> y``, ``x: [batch, *in_shape]``.
        init: ``init(key, in_shape, dtype) -> (out_shape, params)``; default: no parameters
            (``{}``) and the output shape from ``jax.eval_shape`` of ``apply``.
        backward: ``backward(params, x, y, dy) -> (dparams, dx)``, written by hand. Without it
            the layer's rule is autodiff (``jax.vjp`` of ``apply``, residuals = its closure),
            and every report marks the layer ``"autodiff rule"``, so rules can be replaced one
            at a time and each replacement proven.
        name: for reports; default ``apply.__name__``.

    Example:
        >>> import jax.numpy as jnp
        >>> from fnn import layers
        >>> square = layers.custom(lambda p, x: x * x,
        ...                        backward=lambda p, x, y, dy: ({}, 2 * x * dy), name="square")
        >>> y, res = square.forward({}, jnp.array([[3.0]]))
        >>> square.backward({}, res, jnp.array([[1.0]]))[1].tolist()
        [[6.0]]
    """
    if not callable(apply):
        raise TypeError(f"custom: apply must be callable, got {type(apply).__name__}")
    for arg, fn in (("init", init), ("backward", backward)):
        if fn is not None and not callable(fn):
            raise TypeError(f"custom: {arg} must be callable or None, got {type(fn).__name__}")
    name = name or getattr(apply, "__name__", "custom")

    def default_init(key, in_shape, dtype=jnp.float32):
        del key
        x = jax.ShapeDtypeStruct((1, *in_shape), dtype)
        return tuple(jax.eval_shape(apply, {}, x).shape[1:]), {}

    def forward(params, x, *, key=None, train=False, state=None):
        del key, train, state
        if backward is None:
            return jax.vjp(apply, params, x)
        y = apply(params, x)
        return y, (x, y)

    def manual_backward(params, res, dy):
        x, y = res
        return backward(params, x, y, dy)

    def autodiff_backward(params, vjp_fn, dy):
        del params
        return vjp_fn(dy)

    if backward is None:
        return Layer(name, init or default_init, forward, autodiff_backward, rule="autodiff")
    return Layer(name, init or default_init, forward, manual_backward)
