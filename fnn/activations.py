"""Activation functions, each with its hand-written vector-Jacobian product beside it.

An activation is an :class:`Activation` record of pure functions. Every forward ``fn`` sits
next to its backward ``vjp`` and both are registered together in ``_REGISTRY``, which
:func:`get` reads. Elementwise activations have a diagonal Jacobian, so their VJP is
``dx = dy * f'(x)``; softmax and log_softmax couple the entries along ``axis`` and get the
full Jacobian-vector product instead.

Where the derivative is cheaper from the output ``y = fn(x)`` (sigmoid, tanh, relu, softmax),
the record also carries ``vjp_from_output(y, dy)``; the activation layer uses it so the
backward pass needs no second transcendental.

Kinks: relu and leaky_relu are not differentiable at 0. fnn takes the left-hand derivative
there (0 for relu, ``negative_slope`` for leaky_relu), which is also what ``jax.grad`` of the
forwards below returns, so the manual and autodiff paths agree even at exactly 0.

Example:
    >>> import jax.numpy as jnp
    >>> from fnn import activations
    >>> act = activations.get("tanh")
    >>> x = jnp.array([0.0, 1.0])
    >>> [round(float(v), 4) for v in act.vjp(x, jnp.ones(2))]
    [1.0, 0.42]
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import erfc

Array = jax.Array


class Activation(NamedTuple):
    """An activation function and its hand-written derivative.

    Attributes:
        name: the registry name, e.g. ``"tanh"``.
        fn: ``fn(x) -> y``, with ``x, y: [..., features]`` of the same shape and dtype.
        vjp: ``vjp(x, dy) -> dx``: the vector-Jacobian product at input ``x`` for the
            cotangent ``dy`` (same shape as ``x``).
        vjp_from_output: optional ``vjp_from_output(y, dy) -> dx`` taking the forward's
            output instead of its input, for activations whose derivative is cheaper that way;
            ``None`` where it is not.
        elementwise: whether the Jacobian is diagonal (all but softmax and log_softmax).
        kinks: points where the function is not differentiable (finite-difference checks
            skip coordinates whose step straddles one).
    """

    name: str
    fn: Callable[[Array], Array]
    vjp: Callable[[Array, Array], Array]
    vjp_from_output: Callable[[Array, Array], Array] | None = None
    elementwise: bool = True
    kinks: tuple[float, ...] = ()


# ---------------------------------------------------------------------------------------------
# identity: f(x) = x, f'(x) = 1.


def identity(x: Array) -> Array:
    """``f(x) = x``; derivative 1 everywhere."""
    return x


def _identity_vjp(x: Array, dy: Array) -> Array:
    del x
    return dy


# ---------------------------------------------------------------------------------------------
# sigmoid: s(x) = 1 / (1 + exp(-x)), s'(x) = s(x) (1 - s(x)).


def sigmoid(x: Array) -> Array:
    """Logistic sigmoid ``s(x) = 1 / (1 + exp(-x))``.

    Written as ``0.5 * (1 + tanh(x / 2))``: the same function, but it never forms
    ``exp(-x)``, which overflows for ``x`` below about -88 in float32.

    Derivative: ``s'(x) = s(x) * (1 - s(x))``, cheaper from the output ``y = s(x)``.
    """
    return 0.5 * (jnp.tanh(0.5 * x) + 1.0)


def _sigmoid_vjp_y(y: Array, dy: Array) -> Array:
    return dy * y * (1.0 - y)


def _sigmoid_vjp(x: Array, dy: Array) -> Array:
    return _sigmoid_vjp_y(sigmoid(x), dy)


# ---------------------------------------------------------------------------------------------
# tanh: f'(x) = 1 - tanh(x)^2.


def tanh(x: Array) -> Array:
    """Hyperbolic tangent. Derivative ``1 - tanh(x)**2``, cheaper from the output."""
    return jnp.tanh(x)


def _tanh_vjp_y(y: Array, dy: Array) -> Array:
    return dy * (1.0 - y * y)


def _tanh_vjp(x: Array, dy: Array) -> Array:
    return _tanh_vjp_y(jnp.tanh(x), dy)


# ---------------------------------------------------------------------------------------------
# relu: f(x) = max(x, 0); f'(x) = 1 for x > 0, 0 for x <= 0 (0 at the kink).


def relu(x: Array) -> Array:
    """Rectified linear unit ``max(x, 0)``.

    Derivative: 1 where ``x > 0`` and 0 where ``x <= 0``; at the kink ``x = 0`` fnn takes 0
    (the left-hand derivative, also what ``jax.grad`` gives). From the output: ``y > 0`` iff
    ``x > 0``, so the mask can be read off ``y``.
    """
    return jnp.where(x > 0, x, jnp.zeros_like(x))


def _relu_vjp(x: Array, dy: Array) -> Array:
    return jnp.where(x > 0, dy, jnp.zeros_like(dy))


# ---------------------------------------------------------------------------------------------
# leaky_relu: f(x) = x for x > 0, a x otherwise; f'(x) = 1 or a (a at the kink).


def leaky_relu(x: Array, negative_slope: float = 0.01) -> Array:
    """Leaky ReLU: ``x`` where ``x > 0``, ``negative_slope * x`` elsewhere.

    Derivative: 1 where ``x > 0``, ``negative_slope`` where ``x <= 0`` (so ``negative_slope``
    at the kink, the left-hand value). Units never stop passing gradient, which is why leaky
    ReLU keeps units alive that plain ReLU lets die.
    """
    return jnp.where(x > 0, x, negative_slope * x)


def _leaky_relu_vjp(x: Array, dy: Array, negative_slope: float = 0.01) -> Array:
    return jnp.where(x > 0, dy, negative_slope * dy)


def _leaky_relu_vjp_y(y: Array, dy: Array, negative_slope: float = 0.01) -> Array:
    # For a positive slope, sign(y) == sign(x), so the output tells which branch was taken.
    return jnp.where(y > 0, dy, negative_slope * dy)


# ---------------------------------------------------------------------------------------------
# elu: f(x) = x for x > 0, alpha (exp(x) - 1) otherwise; f'(x) = 1 or alpha exp(x).


def elu(x: Array, alpha: float = 1.0) -> Array:
    """Exponential linear unit: ``x`` for ``x > 0``, ``alpha * (exp(x) - 1)`` otherwise.

    Derivative: 1 for ``x > 0``, ``alpha * exp(x)`` for ``x <= 0`` (equal to ``alpha`` at 0,
    so for the default ``alpha = 1`` the derivative is continuous). ``exp`` is evaluated at
    ``min(x, 0)`` only, so large positive inputs cannot overflow the unused branch.
    """
    neg = jnp.minimum(x, 0.0)
    return jnp.where(x > 0, x, alpha * jnp.expm1(neg))


def _elu_vjp(x: Array, dy: Array, alpha: float = 1.0) -> Array:
    neg = jnp.minimum(x, 0.0)
    return jnp.where(x > 0, dy, dy * alpha * jnp.exp(neg))


# ---------------------------------------------------------------------------------------------
# softplus: f(x) = log(1 + exp(x)); f'(x) = sigmoid(x).


def softplus(x: Array) -> Array:
    """``log(1 + exp(x))``, computed as ``max(x, 0) + log1p(exp(-|x|))`` so it never overflows.

    Derivative: ``sigmoid(x)``.
    """
    return jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


def _softplus_vjp(x: Array, dy: Array) -> Array:
    return dy * sigmoid(x)


# ---------------------------------------------------------------------------------------------
# silu (swish): f(x) = x s(x); f'(x) = s(x) (1 + x (1 - s(x))).


def silu(x: Array) -> Array:
    """SiLU / swish ``x * sigmoid(x)``. Derivative ``s(x) * (1 + x * (1 - s(x)))``."""
    return x * sigmoid(x)


def _silu_vjp(x: Array, dy: Array) -> Array:
    s = sigmoid(x)
    return dy * s * (1.0 + x * (1.0 - s))


# ---------------------------------------------------------------------------------------------
# gelu: f(x) = x Phi(x); f'(x) = Phi(x) + x phi(x).

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_CUBIC = 0.044715  # Hendrycks & Gimpel (2016), the tanh approximation's constant.


def gelu(x: Array, approximate: bool = False) -> Array:
    """Gaussian error linear unit ``x * Phi(x)``, ``Phi`` the standard normal CDF.

    Exact form (default): ``Phi(x) = erfc(-x / sqrt(2)) / 2`` (``erfc`` keeps precision in
    the far left tail where ``1 + erf`` cancels). Derivative: ``Phi(x) + x * phi(x)`` with
    ``phi(x) = exp(-x**2 / 2) / sqrt(2 pi)``.

    ``approximate=True`` uses ``0.5 x (1 + tanh(u))``, ``u = sqrt(2/pi) (x + 0.044715 x**3)``,
    with derivative ``0.5 (1 + t) + 0.5 x (1 - t**2) sqrt(2/pi) (1 + 3 * 0.044715 x**2)``.
    """
    if approximate:
        u = _SQRT_2_OVER_PI * (x + _GELU_CUBIC * x**3)
        return 0.5 * x * (1.0 + jnp.tanh(u))
    return x * 0.5 * erfc(-x * _SQRT_HALF)


def _gelu_vjp(x: Array, dy: Array, approximate: bool = False) -> Array:
    if approximate:
        t = jnp.tanh(_SQRT_2_OVER_PI * (x + _GELU_CUBIC * x**3))
        du = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_CUBIC * x * x)
        return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du)
    cdf = 0.5 * erfc(-x * _SQRT_HALF)
    pdf = _INV_SQRT_2PI * jnp.exp(-0.5 * x * x)
    return dy * (cdf + x * pdf)


# ---------------------------------------------------------------------------------------------
# softmax: y_i = exp(x_i) / sum_j exp(x_j); dx = y * (dy - sum(dy * y)).


def softmax(x: Array, axis: int = -1) -> Array:
    """Softmax along ``axis``: ``y_i = exp(x_i - m) / sum_j exp(x_j - m)``, ``m = max_j x_j``.

    Subtracting the maximum changes nothing mathematically but keeps ``exp`` from overflowing
    (every exponent is <= 0, and the largest is exactly 0, so the sum is >= 1).

    VJP (the full Jacobian ``diag(y) - y y^T`` applied to ``dy``, cheaper from the output):
    ``dx = y * (dy - sum(dy * y, axis))``.
    """
    z = x - jnp.max(x, axis=axis, keepdims=True)
    e = jnp.exp(z)
    return e / jnp.sum(e, axis=axis, keepdims=True)


def _softmax_vjp_y(y: Array, dy: Array, axis: int = -1) -> Array:
    return y * (dy - jnp.sum(dy * y, axis=axis, keepdims=True))


def _softmax_vjp(x: Array, dy: Array, axis: int = -1) -> Array:
    return _softmax_vjp_y(softmax(x, axis=axis), dy, axis=axis)


# ---------------------------------------------------------------------------------------------
# log_softmax: y_i = x_i - logsumexp(x); dx = dy - softmax(x) * sum(dy).


def log_softmax(x: Array, axis: int = -1) -> Array:
    """``x - logsumexp(x)`` along ``axis``, stabilised by subtracting the maximum first.

    VJP: ``dx = dy - softmax(x) * sum(dy, axis)``; from the output, ``softmax(x) = exp(y)``.
    """
    z = x - jnp.max(x, axis=axis, keepdims=True)
    return z - jnp.log(jnp.sum(jnp.exp(z), axis=axis, keepdims=True))


def _log_softmax_vjp_y(y: Array, dy: Array, axis: int = -1) -> Array:
    return dy - jnp.exp(y) * jnp.sum(dy, axis=axis, keepdims=True)


def _log_softmax_vjp(x: Array, dy: Array, axis: int = -1) -> Array:
    return _log_softmax_vjp_y(log_softmax(x, axis=axis), dy, axis=axis)


# ---------------------------------------------------------------------------------------------
# The registry: forward and backward registered together, read by get().

_REGISTRY: dict[str, tuple] = {
    # name: (fn, vjp, vjp_from_output, elementwise, kinks)
    "identity": (identity, _identity_vjp, _identity_vjp, True, ()),
    "sigmoid": (sigmoid, _sigmoid_vjp, _sigmoid_vjp_y, True, ()),
    "tanh": (tanh, _tanh_vjp, _tanh_vjp_y, True, ()),
    "relu": (relu, _relu_vjp, _relu_vjp, True, (0.0,)),
    "leaky_relu": (leaky_relu, _leaky_relu_vjp, _leaky_relu_vjp_y, True, (0.0,)),
    "elu": (elu, _elu_vjp, None, True, ()),
    "softplus": (softplus, _softplus_vjp, None, True, ()),
    "silu": (silu, _silu_vjp, None, True, ()),
    "gelu": (gelu, _gelu_vjp, None, True, ()),
    "softmax": (softmax, _softmax_vjp, _softmax_vjp_y, False, ()),
    "log_softmax": (log_softmax, _log_softmax_vjp, _log_softmax_vjp_y, False, ()),
}

#: Every registered activation name, in registry order.
NAMES: tuple[str, ...] = tuple(_REGISTRY)

#: The ReLU family: units that are exactly zero (or nearly linear) below 0. He initialisation
#: suits them (see :func:`fnn.layers.default_w_init`).
RELU_FAMILY: frozenset[str] = frozenset({"relu", "leaky_relu", "elu", "gelu", "silu", "softplus"})


def get(name: str | Activation, **settings) -> Activation:
    """Look an activation up by name.

    Args:
        name: a registered name (see :data:`NAMES`), or an :class:`Activation`, returned as is.
        **settings: keyword settings bound into both ``fn`` and ``vjp``, e.g.
            ``negative_slope=0.2`` for leaky_relu, ``alpha`` for elu, ``axis`` for softmax,
            ``approximate=True`` for gelu.

    Returns:
        The :class:`Activation` record.

    Raises:
        ValueError: for an unknown name (the message lists the valid ones) or a setting the
            activation does not take.

    Example:
        >>> get("leaky_relu", negative_slope=0.2).fn(jnp.array([-1.0])).tolist()
        [-0.2]
    """
    if isinstance(name, Activation):
        if settings:
            raise ValueError("settings can only be given with an activation name, not a record")
        return name
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown activation {name!r}; expected one of: {', '.join(NAMES)}")
    fn, vjp, vjp_y, elementwise, kinks = _REGISTRY[name]
    if settings:
        import inspect

        allowed = [p for p in inspect.signature(fn).parameters if p != "x"]
        bad = sorted(set(settings) - set(allowed))
        if bad:
            raise ValueError(f"activation {name!r} takes settings {allowed or 'none'}, got {bad}")
        fn = functools.partial(fn, **settings)
        vjp = functools.partial(vjp, **settings)
        vjp_y = functools.partial(vjp_y, **settings) if vjp_y is not None else None
        if name == "leaky_relu" and settings.get("negative_slope", 0.01) < 0:
            vjp_y = None  # the sign of y no longer tells the branch
    return Activation(name, fn, vjp, vjp_y, elementwise, kinks)
