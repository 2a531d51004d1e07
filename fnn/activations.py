"""Activation functions, each with its hand-written vector-Jacobian product beside it.

An activation is an :class:`Activation` record of pure functions. Every forward ``fn`` sits
next to its backward ``vjp`` and both are registered together in ``_REGISTRY``, which
:func:`get` reads; :func:`define` registers a user's own. Elementwise activations have a
diagonal Jacobian, so their VJP is ``dx = dy * f'(x)``; softmax and log_softmax couple the
entries along ``axis`` and get the full Jacobian-vector product instead. Where the derivative
is cheaper from the output ``y = fn(x)`` (sigmoid, tanh, relu, softmax), the record also
carries ``vjp_from_output(y, dy)``, which the activation layer uses.

Numerics. Every forward is written so that ``jax.grad`` of it is right too, at 0 included: a
``maximum``, ``abs`` or ``minimum`` there hands autodiff a subgradient that is not the
derivative (``jax.grad(jnp.abs)(0.0)`` is 1, ``jax.grad(jnp.maximum)`` splits a tie 0.5/0.5).
So ``e = exp(-|x|)`` is formed as ``exp(where(x > 0, -x, x))``: it never overflows and its
autodiff is the left-hand derivative at 0, the true one for a smooth function.

Formulas and kinks (``a`` = negative_slope, ``m`` = the row maximum, ``s`` = sigmoid). At a
kink every derivative (``vjp``, ``vjp_from_output`` and ``jax.grad`` of ``fn``) takes the
left-hand value; ``kinks`` on the record is the single list of kink points, which
:func:`fnn.check.kink_pattern` reads (it sorts inputs by ``x > k``, i.e. this left side).

===========  ==================================  ===================================  =========
activation   fn, as computed                     derivative, as computed              kink side
===========  ==================================  ===================================  =========
identity     ``x``                               ``1``                                none
sigmoid      ``where(x > 0, 1, e) / (1 + e)``    ``e / (1 + e)**2``;                  none
                                                 from y ``y (1 - y)``
tanh         ``jnp.tanh(x)``                     ``4 e**2 / (1 + e**2)**2``;          none
                                                 from y ``(1 - y) (1 + y)``
relu         ``where(x > 0, x, 0)``              ``1 if x > 0 else 0``                x=0: 0
leaky_relu   ``where(x > 0, x, a x)``            ``1 if x > 0 else a``                x=0: a
elu          ``where(x > 0, x, alpha expm1(x))`` ``1 if x > 0 else alpha exp(x)``     x=0:
             (``exp(x) - 1`` below -1)                                                alpha
softplus     ``where(x > 0, x, 0) + log1p(e)``   ``s(x)``                             none
silu         ``x s(x)``                          ``s(x) (1 + x s(-x))``               none
gelu         ``x erfc(-x / sqrt 2) / 2``         ``Phi(x) + x phi(x)``                none
gelu, tanh   ``x s(2u)``, ``u = sqrt(2/pi)``     ``s(2u) + 2 x s(2u) s(-2u) u'``      none
approximate  ``(x + 0.044715 x**3)``
softmax      ``exp(x - m) / sum exp(x - m)``     ``y (c - sum(c y))``,                none
                                                 ``c = dy - sum(dy y)``
log_softmax  ``x - m - log1p(r)``, ``r`` = sum   ``dy - softmax(x) sum(dy)``;         none
             of ``exp(x - m)`` but one maximum   from y ``dy - exp(y) sum(dy)``
===========  ==================================  ===================================  =========

(elu has a kink only for ``alpha != 1``: ``get("elu", alpha=0.7).kinks == (0.0,)``.)

Worst error against a 50-digit mpmath truth on a grid spanning +-1000 (``tests/test_numerics.py``;
``python tests/test_numerics.py`` prints it), in ulp (the dtype's eps relative to the truth),
float32/float64; in brackets the jax.nn counterpart's (``jax.grad`` of it for the derivatives)
where it is over 8 and over twice fnn's. Left out: errors below the smallest normal and truths
below ``tiny / eps``, where a denormal intermediate that the CPU flushes to 0 decides.
``8e6/4e15`` (``1/eps``) means all digits lost at some point; here jax.nn loses them too:
from ``y`` alone the derivative of sigmoid and tanh is limited by ``1 - y``, which rounds to 0
(``jax.grad`` of ``jnp.tanh`` uses that rule). gelu's 32/128 come from rounding ``x / sqrt 2``
before ``erfc`` in the far tail, gelu(tanh)'s from rounding ``u``, softmax's from rounding
``x - m`` before ``exp`` and from cancellation in ``dy - sum(dy y)``.

===========  ==================  ==================  =================  ==================
activation   fn                  vjp                 from y             jax.grad(fn)
===========  ==================  ==================  =================  ==================
identity     0/0                 0/0                 0/0                0/0
sigmoid      0.6/0.8             1.2[8e6]/1.5[4e15]  8e6/4e15           1.6[8e6]/1.5[4e15]
tanh         0.3/1.6             1.5[8e6]/1.1[4e15]  8e6/4e15           8e6/4e15
relu         0/0                 0/0                 0/0                0/0
leaky_relu   0.5/0.3             0.2/0               0.2/0              0.2/0
elu          0.2/0.3             0.5[8e6]/0.5[4e15]  -                  0.5[8e6]/0.5[4e15]
softplus     0.5/0.5             0.6/0.8             -                  0.6/0.8
silu         0.6/0.7             1.3/1.4[8.9]        -                  1.4/1.4[8.9]
gelu         32[8e6]/128[4e15]   0.9[8e6]/0.6[4e15]  -                  32[8e6]/128[4e15]
softmax      1.0/28              5.1[1e7]/28[8e15]   5.1[1e7]/28[8e15]  17[1e7]/69[8e15]
log_softmax  1.1[8e6]/8.3[4e15]  8.0/9.5             8.0/10             8.0/10
leaky(a=.2)  0.5/0.2             0.1/0               0.1/0              0.1/0
elu(a=.7)    0.5/0.4             0.9[8e6]/0.7[4e15]  -                  0.9[8e6]/0.7[4e15]
gelu(tanh)   17[8e6]/177[4e15]   17[8e6]/177[4e15]   -                  18[8e6]/177[4e15]
===========  ==================  ==================  =================  ==================

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
import inspect
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erfc

Array = jax.Array


class Activation(NamedTuple):
    """An activation function, its hand-written derivative, and what other code needs to know.

    Attributes:
        name: the registry name, e.g. ``"tanh"``.
        fn: ``fn(x) -> y``, with ``x, y: [..., features]`` of the same shape and dtype.
        vjp: ``vjp(x, dy) -> dx``: the vector-Jacobian product at input ``x`` for the
            cotangent ``dy`` (same shape as ``x``).
        vjp_from_output: optional ``vjp_from_output(y, dy) -> dx`` taking the forward's
            output instead of its input, for activations whose derivative is cheaper that way;
            ``None`` where it is not.
        elementwise: whether the Jacobian is diagonal (all but softmax and log_softmax).
        kinks: points where the function is not differentiable. The derivative there is the
            left-hand one (see the module's table); finite-difference checks skip coordinates
            whose step straddles a kink.
        family: ``"relu"`` for the rectifier family, which He initialisation suits, or
            ``"smooth"`` (roughly linear around 0: Glorot); see
            :func:`fnn.layers.default_w_init`.
        dead: ``dead(y) -> bool array`` (same shape as ``y``), for the rectifier family: True
            where the unit is in its flat region (input ``<= 0``), read from the output. A
            unit dead on every example passes no gradient. ``None`` for the others.
        saturated: ``saturated(y, threshold=0.05) -> bool array`` for saturating activations
            (sigmoid, tanh): True where the derivative, read from ``y``, is below
            ``threshold * peak``. ``None`` for the others.
        peak: the largest value of the derivative (0.25 for sigmoid, 1 for tanh and relu;
            the supremum for softplus), or ``None`` where it is not elementwise.
    """

    name: str
    fn: Callable[[Array], Array]
    vjp: Callable[[Array, Array], Array]
    vjp_from_output: Callable[[Array, Array], Array] | None = None
    elementwise: bool = True
    kinks: tuple[float, ...] = ()
    family: str = "smooth"
    dead: Callable[[Array], Array] | None = None
    saturated: Callable[..., Array] | None = None
    peak: float | None = None


def _exp_neg_abs(x: Array) -> Array:
    """``exp(-|x|)`` in (0, 1]: never overflows, and autodiff at 0 takes the left side (+1)."""
    return jnp.exp(jnp.where(x > 0, -x, x))


def _off(y: Array) -> Array:
    return y <= 0


# ---------------------------------------------------------------------------------------------
# identity: f(x) = x, f'(x) = 1.


def identity(x: Array) -> Array:
    """``f(x) = x``; derivative 1 everywhere."""
    return x


def _identity_vjp(x: Array, dy: Array) -> Array:
    del x
    return dy


# ---------------------------------------------------------------------------------------------
# sigmoid: s(x) = 1 / (1 + exp(-x)), s'(x) = s(x) s(-x) = e / (1 + e)^2 with e = exp(-|x|).


def sigmoid(x: Array) -> Array:
    """Logistic sigmoid ``s(x) = 1 / (1 + exp(-x))``, to about 1 ulp over the whole range.

    Computed as ``1 / (1 + e)`` for ``x > 0`` and ``e / (1 + e)`` otherwise, ``e = exp(-|x|)``:
    nothing cancels (``0.5 * (1 + tanh(x / 2))`` loses every digit below about -17 in
    float32) and nothing overflows, and autodiff of this form gives ``e / (1 + e)**2``, the
    derivative without the cancellation of ``s (1 - s)`` near 1.

    Derivative: ``s(x) s(-x) = e / (1 + e)**2``; from the output ``y (1 - y)``, which is all
    ``y`` can tell (it rounds to 1 above about 17 in float32).
    """
    e = _exp_neg_abs(x)
    return jnp.where(x > 0, 1.0, e) / (1.0 + e)


def _sigmoid_vjp_y(y: Array, dy: Array) -> Array:
    return dy * y * (1.0 - y)


def _sigmoid_vjp(x: Array, dy: Array) -> Array:
    e = _exp_neg_abs(x)
    r = 1.0 / (1.0 + e)
    return dy * (e * r) * r


def _sigmoid_saturated(y: Array, threshold: float = 0.05) -> Array:
    return y * (1.0 - y) < threshold * 0.25


# ---------------------------------------------------------------------------------------------
# tanh: f'(x) = 1 - tanh(x)^2 = 4 e2 / (1 + e2)^2 with e2 = exp(-2|x|).


def tanh(x: Array) -> Array:
    """Hyperbolic tangent.

    Derivative ``1 - tanh(x)**2``. From the input it is computed as ``4 e2 / (1 + e2)**2``,
    ``e2 = exp(-2|x|)``, which keeps its digits where ``tanh(x)`` rounds to +-1; from the
    output as ``(1 - y)(1 + y)`` (exact subtraction near +-1, unlike ``1 - y * y``).
    """
    return jnp.tanh(x)


def _tanh_vjp_y(y: Array, dy: Array) -> Array:
    return dy * ((1.0 - y) * (1.0 + y))


def _tanh_vjp(x: Array, dy: Array) -> Array:
    e2 = _exp_neg_abs(2.0 * x)
    r = 1.0 / (1.0 + e2)
    return dy * (4.0 * e2 * r) * r


def _tanh_saturated(y: Array, threshold: float = 0.05) -> Array:
    return (1.0 - y) * (1.0 + y) < threshold


# ---------------------------------------------------------------------------------------------
# relu: f(x) = max(x, 0); f'(x) = 1 for x > 0, 0 for x <= 0 (0 at the kink).


def relu(x: Array) -> Array:
    """Rectified linear unit ``max(x, 0)``.

    Derivative: 1 where ``x > 0`` and 0 where ``x <= 0``; at the kink ``x = 0`` fnn takes 0
    (the left-hand derivative; ``where`` rather than ``maximum`` makes it ``jax.grad``'s too).
    From the output: ``y > 0`` iff ``x > 0``, so the mask can be read off ``y``.
    """
    return jnp.where(x > 0, x, jnp.zeros_like(x))


def _relu_vjp(x: Array, dy: Array) -> Array:
    return jnp.where(x > 0, dy, jnp.zeros_like(dy))


# ---------------------------------------------------------------------------------------------
# leaky_relu: f(x) = x for x > 0, a x otherwise; f'(x) = 1 or a (a at the kink).


def leaky_relu(x: Array, negative_slope: float = 0.01) -> Array:
    """Leaky ReLU: ``x`` where ``x > 0``, ``negative_slope * x`` elsewhere.

    Derivative: 1 where ``x > 0``, ``negative_slope`` where ``x <= 0`` (so ``negative_slope``
    at the kink, the left-hand value; ``jax.nn.leaky_relu`` takes 1 there). Units never stop
    passing gradient, which is why leaky ReLU keeps units alive that plain ReLU lets die.
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

    Derivative: 1 for ``x > 0``, ``alpha * exp(x)`` for ``x <= 0`` (``alpha`` at 0, the
    left-hand value; for the default ``alpha = 1`` the derivative is continuous there).
    ``exp`` sees ``where(x > 0, 0, x)`` only, so large inputs cannot overflow the unused
    branch, and autodiff at 0 takes the left side (``minimum`` would split it 0.5/0.5).
    """
    neg = jnp.where(x > 0, jnp.zeros_like(x), x)
    # Below -1, exp(x) - 1 does not cancel, and autodiff of it gives exp(x) itself; autodiff
    # of expm1 forms its derivative as expm1(x) + 1, which is 0 below about -17 in float32.
    em1 = jnp.where(neg > -1.0, jnp.expm1(neg), jnp.exp(neg) - 1.0)
    return jnp.where(x > 0, x, alpha * em1)


def _elu_vjp(x: Array, dy: Array, alpha: float = 1.0) -> Array:
    neg = jnp.where(x > 0, jnp.zeros_like(x), x)
    return jnp.where(x > 0, dy, dy * alpha * jnp.exp(neg))


# ---------------------------------------------------------------------------------------------
# softplus: f(x) = log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)); f'(x) = sigmoid(x).


def softplus(x: Array) -> Array:
    """``log(1 + exp(x))``, as ``where(x > 0, x, 0) + log1p(exp(-|x|))``: it never overflows.

    Derivative: ``sigmoid(x)``. Autodiff of this form gives it too, at 0 included
    (``maximum(x, 0) + log1p(exp(-abs(x)))`` gives 0 there instead of 0.5).
    """
    return jnp.where(x > 0, x, jnp.zeros_like(x)) + jnp.log1p(_exp_neg_abs(x))


def _softplus_vjp(x: Array, dy: Array) -> Array:
    return dy * sigmoid(x)


def _softplus_dead(y: Array) -> Array:
    return y <= math.log(2.0)  # softplus(0): the output of an input <= 0


# ---------------------------------------------------------------------------------------------
# silu (swish): f(x) = x s(x); f'(x) = s(x) (1 + x s(-x))   (s(-x) = 1 - s(x), uncancelled).


def silu(x: Array) -> Array:
    """SiLU / swish ``x * sigmoid(x)``. Derivative ``s(x) * (1 + x * s(-x))``."""
    return x * sigmoid(x)


def _silu_vjp(x: Array, dy: Array) -> Array:
    e = _exp_neg_abs(x)
    r = 1.0 / (1.0 + e)
    s, s_neg = jnp.where(x > 0, 1.0, e) * r, jnp.where(x > 0, e, 1.0) * r
    return dy * s * (1.0 + x * s_neg)


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

    ``approximate=True``: ``0.5 x (1 + tanh(u))``, ``u = sqrt(2/pi) (x + 0.044715 x**3)``,
    computed as ``x * sigmoid(2 u)`` (the same function; ``1 + tanh(u)`` cancels to 0 in the
    left tail). Derivative: ``s(2u) + x s(2u) s(-2u) 2 u'``, ``u' = sqrt(2/pi) (1 + 3 *
    0.044715 x**2)``.
    """
    if approximate:
        return x * sigmoid(_gelu_2u(x))
    return x * 0.5 * erfc(-x * _SQRT_HALF)


def _gelu_2u(x: Array) -> Array:
    return (2.0 * _SQRT_2_OVER_PI) * (x + _GELU_CUBIC * x**3)


def _gelu_vjp(x: Array, dy: Array, approximate: bool = False) -> Array:
    if approximate:
        v = _gelu_2u(x)
        e = _exp_neg_abs(v)
        r = 1.0 / (1.0 + e)
        dv = (2.0 * _SQRT_2_OVER_PI) * (1.0 + 3.0 * _GELU_CUBIC * x * x)
        return dy * (jnp.where(v > 0, 1.0, e) * r + x * (e * r * r) * dv)
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
    # Autodiff sees the maximum: its path adds -sum(dz) at the argmax (split among ties),
    # 0 in exact arithmetic; in floating point it takes off the rounding residue, so jax.grad
    # keeps the digits of y_max - 1 (17 ulp worst in float32, jax.nn's 1e7 under
    # stop_gradient).
    e = jnp.exp(x - jnp.max(x, axis=axis, keepdims=True))
    return e / jnp.sum(e, axis=axis, keepdims=True)


def _softmax_vjp_y(y: Array, dy: Array, axis: int = -1) -> Array:
    # y (dy - s), s = sum(dy y): where one y_i dominates, dy_i - s is a small difference of
    # two numbers near dy_i and s's rounding would swamp it. The second sum, of (dy - s) y,
    # is 0 in exact arithmetic and recovers that rounding (and sum(y) != 1) in floating point.
    a = dy - jnp.sum(dy * y, axis=axis, keepdims=True)
    return y * (a - jnp.sum(a * y, axis=axis, keepdims=True))


def _softmax_vjp(x: Array, dy: Array, axis: int = -1) -> Array:
    return _softmax_vjp_y(softmax(x, axis=axis), dy, axis=axis)


# ---------------------------------------------------------------------------------------------
# log_softmax: y_i = x_i - logsumexp(x); dx = dy - softmax(x) * sum(dy).


def log_softmax(x: Array, axis: int = -1) -> Array:
    """``x - logsumexp(x)`` along ``axis``, stabilised by subtracting the maximum first.

    With ``z = x - max(x)``, ``logsumexp(z) = log1p(r)``, ``r`` the sum of ``exp(z)`` over
    all but one maximum: ``log(sum(exp(z)))`` would round that sum near 1 first and lose every
    digit of a log-probability near 0 (about ``-exp(-17)`` and up in float32). The maxima
    enter ``r`` as ``expm1(0) = 0``, so autodiff still sees their derivative ``exp(0) = 1``.

    VJP: ``dx = dy - softmax(x) * sum(dy, axis)``; from the output, ``softmax(x) = exp(y)``.
    """
    # Here the maximum is under stop_gradient, as in jax.nn: for a general dy the argmax
    # path's residue adds rounding rather than removing it (11 ulp instead of 1.5 measured).
    z = x - jax.lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
    top = z == 0
    rest = jnp.sum(jnp.where(top, jnp.expm1(z), jnp.exp(z)), axis=axis, keepdims=True)
    ties = jnp.sum(top, axis=axis, keepdims=True) - 1
    return z - jnp.log1p(rest + ties.astype(z.dtype))


def _log_softmax_vjp_y(y: Array, dy: Array, axis: int = -1) -> Array:
    return dy - jnp.exp(y) * jnp.sum(dy, axis=axis, keepdims=True)


def _log_softmax_vjp(x: Array, dy: Array, axis: int = -1) -> Array:
    return dy - softmax(x, axis=axis) * jnp.sum(dy, axis=axis, keepdims=True)


# ---------------------------------------------------------------------------------------------
# The registry: forward and backward registered together, with what init and diagnostics need.

# Peaks of the derivative, from mpmath (the maximum of f' where f'' = 0).
_SILU_PEAK = 1.0998393201288669  # at x = 2.39936
_GELU_PEAK = 1.1289041451851548  # at x = sqrt(2): Phi(sqrt 2) + sqrt 2 phi(sqrt 2)
_GELU_TANH_PEAK = 1.1289930686587718  # at x = 1.41850

_REGISTRY: dict[str, Activation] = {
    r.name: r
    for r in (
        Activation("identity", identity, _identity_vjp, _identity_vjp, peak=1.0),
        Activation(
            "sigmoid",
            sigmoid,
            _sigmoid_vjp,
            _sigmoid_vjp_y,
            saturated=_sigmoid_saturated,
            peak=0.25,
        ),
        Activation("tanh", tanh, _tanh_vjp, _tanh_vjp_y, saturated=_tanh_saturated, peak=1.0),
        Activation("relu", relu, _relu_vjp, _relu_vjp, True, (0.0,), "relu", _off, peak=1.0),
        Activation(
            "leaky_relu",
            leaky_relu,
            _leaky_relu_vjp,
            _leaky_relu_vjp_y,
            True,
            (0.0,),
            "relu",
            _off,
            peak=1.0,
        ),  # fmt: skip
        Activation("elu", elu, _elu_vjp, None, True, (), "relu", _off, peak=1.0),
        Activation(
            "softplus", softplus, _softplus_vjp, None, True, (), "relu", _softplus_dead, peak=1.0
        ),
        Activation("silu", silu, _silu_vjp, None, True, (), "relu", _off, peak=_SILU_PEAK),
        Activation("gelu", gelu, _gelu_vjp, None, True, (), "relu", _off, peak=_GELU_PEAK),
        Activation("softmax", softmax, _softmax_vjp, _softmax_vjp_y, elementwise=False),
        Activation(
            "log_softmax", log_softmax, _log_softmax_vjp, _log_softmax_vjp_y, elementwise=False
        ),
    )
}

#: Every registered activation name: the built-ins in registry order, then any added by
#: :func:`define`.
NAMES: tuple[str, ...] = tuple(_REGISTRY)

#: The ReLU family (``family == "relu"``): units that are exactly zero (or nearly linear)
#: below 0. He initialisation suits them (see :func:`fnn.layers.default_w_init`).
RELU_FAMILY: frozenset[str] = frozenset(n for n, r in _REGISTRY.items() if r.family == "relu")


@functools.lru_cache(maxsize=256)
def _bind(rec: Activation, items: tuple) -> Activation:
    """``rec`` with ``settings`` bound into its functions, and the fields they change.

    Cached by value, so that equal settings give an equal record (and jit's caches hit).
    """
    settings = dict(items)
    allowed = list(inspect.signature(rec.fn).parameters)[1:]
    bad = sorted(set(settings) - set(allowed))
    if bad:
        raise ValueError(f"activation {rec.name!r} takes settings {allowed or 'none'}, got {bad}")
    vjp_y = rec.vjp_from_output
    rec = rec._replace(
        fn=functools.partial(rec.fn, **settings),
        vjp=functools.partial(rec.vjp, **settings),
        vjp_from_output=None if vjp_y is None else functools.partial(vjp_y, **settings),
    )
    if rec.name == "leaky_relu":
        slope = settings.get("negative_slope", 0.01)
        if slope < 0:  # the sign of y no longer tells the branch
            rec = rec._replace(vjp_from_output=None, dead=None)
        rec = rec._replace(peak=max(1.0, abs(slope)))
    if rec.name == "elu":
        alpha = settings.get("alpha", 1.0)
        rec = rec._replace(kinks=() if alpha == 1.0 else (0.0,), peak=max(1.0, alpha))
    if rec.name == "gelu" and settings.get("approximate", False):
        rec = rec._replace(peak=_GELU_TANH_PEAK)
    return rec


def get(name: str | Activation, **settings) -> Activation:
    """Look an activation up by name.

    Args:
        name: a registered name (see :data:`NAMES`, and :func:`define` for your own), or an
            :class:`Activation`, returned as is.
        **settings: keyword settings bound into both ``fn`` and ``vjp``, e.g.
            ``negative_slope=0.2`` for leaky_relu, ``alpha`` for elu, ``axis`` for softmax,
            ``approximate=True`` for gelu.

    Returns:
        The :class:`Activation` record.

    Raises:
        ValueError: for an unknown name (the message lists the valid ones) or a setting the
            activation does not take.
        TypeError: for a bare function such as ``jnp.tanh`` (the message shows
            :func:`define`, which pairs it with its derivative).

    Example:
        >>> get("leaky_relu", negative_slope=0.2).fn(jnp.array([-1.0])).tolist()
        [-0.2]
    """
    if isinstance(name, Activation):
        if settings:
            raise ValueError("settings can only be given with an activation name, not a record")
        return name
    if callable(name):
        label = getattr(name, "__name__", None) or repr(name)
        raise TypeError(
            f"activation: got the function {label}, but fnn needs its derivative as well. Pass "
            f"a registered name ({', '.join(NAMES)}), or register yours once with "
            f"fnn.activations.define('my_act', fn, vjp), where vjp(x, dy) returns dy * f'(x), "
            f"e.g. define('my_tanh', jnp.tanh, lambda x, dy: dy * (1 - jnp.tanh(x) ** 2)), "
            f"and then pass 'my_act'"
        )
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(
            f"unknown activation {name!r}; expected one of: {', '.join(NAMES)} (or register "
            f"your own with fnn.activations.define)"
        )
    rec = _REGISTRY[name]
    if not settings:
        return rec
    items = tuple(sorted(settings.items()))
    try:
        hash(items)
    except TypeError:  # an unhashable setting: bind it uncached (the checks still run)
        return _bind.__wrapped__(rec, items)
    return _bind(rec, items)


# ---------------------------------------------------------------------------------------------
# define: a user's own activation.

_PROBE_X = ((-1.7, -0.45, 0.3), (1.2, 2.6, -3.1))
_PROBE_DY = ((0.6, -1.1, 0.9), (-0.4, 1.3, 0.7))


def define(
    name: str,
    fn: Callable[[Array], Array],
    vjp: Callable[[Array, Array], Array],
    *,
    kinks: tuple[float, ...] = (),
    vjp_from_output: Callable[[Array, Array], Array] | None = None,
    elementwise: bool = True,
    family: str = "smooth",
) -> Activation:
    """Register an activation of your own, usable by name wherever :func:`get` is.

    ``fnn.layers.activation(name)``, ``fnn.mlp(..., activation=name)`` and the checkers then
    take it like a built-in. Before registering, ``vjp`` (and ``vjp_from_output``) are
    compared with ``jax.vjp`` of ``fn`` at a few points of a ``[2, 3]`` probe, so a wrong
    derivative is caught here rather than in training.

    Args:
        name: a new name (a str not in :data:`NAMES`).
        fn: ``fn(x) -> y``, same shape and dtype.
        vjp: ``vjp(x, dy) -> dx``; for an elementwise activation ``dy * f'(x)``.
        kinks: points where ``fn`` is not differentiable; ``vjp`` must take the left-hand
            derivative there (the convention :mod:`fnn.check` assumes).
        vjp_from_output: optional ``vjp_from_output(y, dy) -> dx``.
        elementwise: whether the Jacobian is diagonal.
        family: ``"relu"`` (He initialisation, dead-unit counting) or ``"smooth"`` (Glorot).

    Returns:
        The registered :class:`Activation`.

    Raises:
        TypeError: ``name`` not a str, or ``fn``/``vjp``/``vjp_from_output`` not callable.
        ValueError: ``name`` taken, ``family`` unknown, or the derivative disagrees with
            ``jax.vjp`` of ``fn`` on the probe (the message shows where).

    Example:
        >>> rec = define("softsign_doc", lambda x: x / (1 + jnp.abs(x)),
        ...              lambda x, dy: dy / (1 + jnp.abs(x)) ** 2)
        >>> get("softsign_doc").fn(jnp.array([1.0])).tolist()
        [0.5]
    """
    global NAMES, RELU_FAMILY
    if not isinstance(name, str) or not name:
        raise TypeError(f"define: name must be a non-empty str, got {name!r}")
    if name in _REGISTRY:
        raise ValueError(
            f"define: the activation name {name!r} is already registered (taken: "
            f"{', '.join(NAMES)}); pick another name"
        )
    for arg, f in (("fn", fn), ("vjp", vjp), ("vjp_from_output", vjp_from_output)):
        if not callable(f) and not (arg == "vjp_from_output" and f is None):
            raise TypeError(f"define: {arg} must be a function, got {type(f).__name__} {f!r}")
    if family not in ("relu", "smooth"):
        raise ValueError(f"define: family must be 'relu' or 'smooth', got {family!r}")
    kinks = tuple(float(k) for k in kinks)
    rec = Activation(
        name, fn, vjp, vjp_from_output, bool(elementwise), kinks, family,
        _off if family == "relu" else None,
    )  # fmt: skip
    _self_check(rec)
    _REGISTRY[name] = rec
    NAMES = tuple(_REGISTRY)
    RELU_FAMILY = frozenset(n for n, r in _REGISTRY.items() if r.family == "relu")
    return rec


def _self_check(rec: Activation) -> None:
    """Compare ``rec.vjp`` (and ``vjp_from_output``) with ``jax.vjp(rec.fn)`` on a probe."""
    dtype = jnp.result_type(float)  # float64 when x64 is on
    x = np.array(_PROBE_X)
    for k in rec.kinks:  # keep the probe off the kinks
        x = np.where(np.abs(x - k) < 0.05, x + 0.1, x)
    x, dy = jnp.asarray(x, dtype), jnp.asarray(_PROBE_DY, dtype)
    try:
        y, pullback = jax.vjp(rec.fn, x)
        (want,) = pullback(dy)
        got = {"vjp": rec.vjp(x, dy)}
        if rec.vjp_from_output is not None:
            got["vjp_from_output"] = rec.vjp_from_output(y, dy)
    except Exception as err:  # a user's function: say where it failed, keep the cause
        raise ValueError(
            f"define({rec.name!r}): evaluating fn, jax.vjp(fn) or vjp on a {x.shape} {dtype} "
            f"probe failed: {type(err).__name__}: {err}"
        ) from err
    tol = 1e-4 if dtype == jnp.float32 else 1e-8
    for what, g in got.items():
        if jnp.shape(g) != x.shape:
            raise ValueError(
                f"define({rec.name!r}): {what} returned shape {jnp.shape(g)} for x of shape "
                f"{x.shape}; it must return dx shaped like x"
            )
        scale = 1.0 + float(jnp.max(jnp.abs(want)))
        if not float(jnp.max(jnp.abs(g - want))) <= tol * scale:
            raise ValueError(
                f"define({rec.name!r}): {what} disagrees with jax.vjp of fn at x = "
                f"{np.asarray(x).tolist()}, dy = {np.asarray(dy).tolist()}: got "
                f"{np.asarray(g).tolist()}, jax.vjp gives {np.asarray(want).tolist()}; for an "
                f"elementwise activation {what} must return dy * f'(x)"
            )
