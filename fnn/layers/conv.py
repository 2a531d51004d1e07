"""Two-dimensional convolution (NHWC) with its backward written out as two more convolutions.

Notation, one spatial axis (the other is the same): input length ``H``, kernel length ``k``,
stride ``s``, dilation ``d`` (the effective kernel spans ``K = (k - 1) d + 1`` inputs), padding
``lo`` before and ``hi`` after, output length ``Ho = (H + lo + hi - K) // s + 1``. The forward is

    y[n, o, f] = b[f] + sum_{t, c} xpad[n, o s + t d, c] w[t, c, f]      (xpad: x padded by lo, hi)

with the channels of ``x`` and ``y`` split into ``groups`` blocks that see only each other.
Each output position ``o`` reads inputs ``i = o s + t d - lo``; reading that sum the other way
round gives the backward:

* ``dx[n, i, c] = sum_{o, t, f: o s + t d - lo = i} dy[n, o, f] w[t, c, f]``: spread ``dy``
  out by inserting ``s - 1`` zeros between its entries (``lhs_dilation = s``), pad it by
  ``K - 1 - lo`` in front, and correlate with the kernel *flipped* in space and with its input
  and output channels swapped (per group): the transposed convolution.
* ``dw[t, c, f] = sum_{n, o} xpad[n, o s + t d, c] dy[n, o, f]``: a correlation of ``x`` with
  ``dy`` in which the batch is the summed axis, ``dy`` plays the kernel dilated by ``s`` and
  the kernel offset ``t`` steps by ``d``; with groups, channel block ``g`` of ``x`` meets only
  feature block ``g`` of ``dy`` (``batch_group_count``).
* ``db[f] = sum_{n, o} dy[n, o, f]``.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from fnn import layers
    >>> conv = layers.conv2d(4, 3, stride=2)
    >>> shape, p = conv.init(jax.random.key(0), (8, 8, 1), jnp.float32)
    >>> shape, p["w"].shape
    ((4, 4, 4), (3, 3, 1, 4))
    >>> y, res = conv.forward(p, jnp.ones((2, 8, 8, 1), jnp.float32))
    >>> dp, dx = conv.backward(p, res, jnp.ones_like(y))
    >>> dx.shape, dp["b"].tolist()
    ((2, 8, 8, 1), [32.0, 32.0, 32.0, 32.0])
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from fnn.layers.base import Layer, check_float, check_positive_int

NHWC = ("NHWC", "HWIO", "NHWC")


def pair(layer: str, arg: str, value) -> tuple[int, int]:
    """``value`` (an int or a pair of positive ints) as a pair, or a ``ValueError``."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        raise ValueError(f"{layer}: {arg} must be a positive int or a pair of them, got {value!r}")
    return int(value[0]), int(value[1])


def check_padding(layer: str, padding):
    """Validate ``padding``: ``"SAME"``, ``"VALID"``, an int >= 0 or ``((lo, hi), (lo, hi))``."""
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(f"{layer}: padding must be 'SAME', 'VALID' or an int, got {padding!r}")
        return padding.upper()
    if isinstance(padding, int) and not isinstance(padding, bool) and padding >= 0:
        return ((padding, padding), (padding, padding))
    ok = (
        isinstance(padding, (tuple, list))
        and len(padding) == 2
        and all(isinstance(p, (tuple, list)) and len(p) == 2 for p in padding)
        and all(isinstance(v, int) and v >= 0 for p in padding for v in p)
    )
    if not ok:
        raise ValueError(
            f"{layer}: padding must be 'SAME', 'VALID', an int >= 0 or ((lo, hi), (lo, hi)), "
            f"got {padding!r}"
        )
    return tuple((int(a), int(b)) for a, b in padding)


def explicit_pads(padding, in_hw, window, stride, dilation) -> tuple[tuple[int, int], ...]:
    """``((lo, hi), (lo, hi))`` for a checked ``padding`` on inputs of spatial shape ``in_hw``.

    ``"SAME"`` pads so that ``Ho = ceil(H / s)``, the extra element after (``lo = total // 2``),
    as ``lax`` does; ``"VALID"`` pads nothing.
    """
    if padding == "VALID":
        return ((0, 0), (0, 0))
    if padding != "SAME":
        return padding
    pads = []
    for n, k, s, d in zip(in_hw, window, stride, dilation, strict=True):
        span = (k - 1) * d + 1
        total = max((-(-n // s) - 1) * s + span - n, 0)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


def out_size(n: int, k: int, s: int, d: int, pad: tuple[int, int]) -> int:
    """Output length of a window ``k`` dilated ``d`` sliding by ``s`` over ``n`` padded ``pad``."""
    return (n + pad[0] + pad[1] - (k - 1) * d - 1) // s + 1


def transpose_kernel(w, groups: int):
    """``w: [kh, kw, C/g, F]`` flipped in space, channels swapped per group: ``[kh, kw, F/g, C]``.

    Input channel ``c`` of group ``g`` and feature ``f`` of the same group trade places, so
    that a grouped convolution of ``dy`` with the result sums over the features of each group.
    """
    kh, kw, cg, f = w.shape
    w = jnp.reshape(w, (kh, kw, cg, groups, f // groups))
    w = jnp.transpose(w, (0, 1, 4, 3, 2))
    return jnp.reshape(w, (kh, kw, f // groups, groups * cg))[::-1, ::-1]


def input_grad(dy, w, in_hw, *, stride, pads, dilation, groups: int, precision=None):
    """``dx`` of a convolution: ``dy`` spread by the stride, correlated with the flipped kernel.

    Args:
        dy: ``[N, Ho, Wo, F]``; w: the forward kernel ``[kh, kw, C/groups, F]``.
        in_hw: the forward input's spatial shape ``(H, W)``.
        stride, pads, dilation, groups: the forward's, ``pads`` explicit ``((lo, hi), ...)``.

    Returns:
        ``dx: [N, H, W, C]``.
    """
    bwd_pads = []
    for n, o, k, s, d, (lo, _) in zip(
        in_hw, dy.shape[1:3], w.shape[:2], stride, dilation, pads, strict=True
    ):
        span = (k - 1) * d + 1
        front = span - 1 - lo
        # the spread dy has (o - 1) s + 1 entries; pad the back so the output has n of them
        bwd_pads.append((front, n - ((o - 1) * s + 1) - front + span - 1))
    return lax.conv_general_dilated(
        dy,
        transpose_kernel(w, groups),
        window_strides=(1, 1),
        padding=bwd_pads,
        lhs_dilation=stride,
        rhs_dilation=dilation,
        dimension_numbers=NHWC,
        feature_group_count=groups,
        precision=precision,
    )


def kernel_grad(x, dy, window, *, stride, pads, dilation, groups: int):
    """``dw`` of a convolution: the correlation of ``x`` with ``dy``, summed over the batch.

    The batch becomes the contracted axis and the channels of ``x`` the "batch" of this
    convolution; ``dy`` is the kernel, dilated by the forward stride, and the kernel offset
    advances by the forward dilation. Returns ``dw: [kh, kw, C/groups, F]``.
    """
    back = []
    for n, o, k, s, d, (lo, _) in zip(
        x.shape[1:3], dy.shape[1:3], window, stride, dilation, pads, strict=True
    ):
        # output length must be k: (n + lo + hi' - ((o - 1) s + 1)) // d + 1 == k
        back.append((lo, (k - 1) * d + (o - 1) * s + 1 - n - lo))
    dw = lax.conv_general_dilated(
        x,
        dy,
        window_strides=dilation,
        padding=back,
        rhs_dilation=stride,
        dimension_numbers=("CHWN", "IHWO", "NHWC"),
        batch_group_count=groups,
    )  # [C/groups, kh, kw, F]
    return jnp.transpose(dw, (1, 2, 0, 3))


# ---------------------------------------------------------------------------------------------
# conv2d: y = conv(x, w) + b; res = x
#   dx = conv(spread(dy, s), flip(w)^T), dw = corr(x, dy) over the batch, db = sum(dy)


def conv2d(
    features: int,
    kernel_size,
    *,
    stride=1,
    padding="SAME",
    dilation=1,
    groups: int = 1,
    use_bias: bool = True,
    w_init: Callable | None = None,
) -> Layer:
    """A 2-D convolution on NHWC inputs.

    Args:
        features: output channels ``F`` (a multiple of ``groups``).
        kernel_size: ``k`` or ``(kh, kw)``.
        stride: ``s`` or ``(sh, sw)``.
        padding: ``"SAME"`` (output ``ceil(H / s)``), ``"VALID"`` (none), an int ``p`` (``p``
            zeros on every side) or ``((top, bottom), (left, right))``.
        dilation: the kernel's dilation, ``d`` or ``(dh, dw)``.
        groups: channel groups; input channels ``C`` must be a multiple of it.
        use_bias: add a bias ``b: [F]``.
        w_init: initialiser of ``w: [kh, kw, C/groups, F]``; default He normal (fan in
            ``kh kw C/groups``): convolutions are nearly always followed by a ReLU.

    Shapes:
        ``x: [N, H, W, C] -> y: [N, Ho, Wo, F]``, params ``{"w": [kh, kw, C/groups, F],
        "b": [F]}`` (no ``"b"`` without bias).

    Backward (keeps ``x``): see the module docstring; ``dx`` is the transposed convolution of
    ``dy`` with the flipped kernel (:func:`input_grad`), ``dw`` the correlation of ``x`` with
    ``dy`` (:func:`kernel_grad`), ``db`` the sum of ``dy``.
    """
    check_positive_int("conv2d", "features", features)
    check_positive_int("conv2d", "groups", groups)
    window = pair("conv2d", "kernel_size", kernel_size)
    stride = pair("conv2d", "stride", stride)
    dilation = pair("conv2d", "dilation", dilation)
    padding = check_padding("conv2d", padding)
    if features % groups:
        raise ValueError(
            f"conv2d: features ({features}) must be a multiple of groups ({groups}); "
            f"use features={groups * max(1, features // groups)}"
        )
    w_init = w_init or jax.nn.initializers.he_normal()
    name = f"conv2d({features}, {window[0]}x{window[1]})"

    def init(key, in_shape, dtype=jnp.float32):
        if len(in_shape) != 3:
            raise ValueError(
                f"{name}: expects NHWC inputs, feature shape (H, W, C), got {tuple(in_shape)}; "
                "start the model with fnn.layers.reshape((H, W, C)) for flat inputs"
            )
        h, w, c = (int(s) for s in in_shape)
        if c % groups:
            raise ValueError(
                f"{name}: input channels ({c}) must be a multiple of groups ({groups})"
            )
        pads = explicit_pads(padding, (h, w), window, stride, dilation)
        ho, wo = (
            out_size(n, k, s, d, p)
            for n, k, s, d, p in zip((h, w), window, stride, dilation, pads, strict=True)
        )
        if ho < 1 or wo < 1:
            raise ValueError(
                f"{name}: input {h}x{w} is smaller than the dilated kernel; pad it or use a "
                "smaller kernel_size/dilation"
            )
        kw_, kb = jax.random.split(key)
        params = {"w": w_init(kw_, (*window, c // groups, features), dtype)}
        if use_bias:
            params["b"] = jnp.zeros((features,), dtype)
        return (ho, wo, features), params

    def forward(params, x, *, key=None, train=False, state=None):
        del key, train, state
        check_float(name, x)
        w = params["w"]
        if jnp.ndim(x) != 4 or x.shape[3] != w.shape[2] * groups:
            raise ValueError(
                f"{name}: input x must have shape [N, H, W, {w.shape[2] * groups}], "
                f"got {jnp.shape(x)}"
            )
        pads = explicit_pads(padding, x.shape[1:3], window, stride, dilation)
        y = lax.conv_general_dilated(
            x,
            w,
            window_strides=stride,
            padding=pads,
            rhs_dilation=dilation,
            dimension_numbers=NHWC,
            feature_group_count=groups,
        )
        if use_bias:
            y = y + jnp.reshape(params["b"], (1, 1, 1, -1))
        return y, x

    def backward(params, x, dy):
        pads = explicit_pads(padding, x.shape[1:3], window, stride, dilation)
        conf = {"stride": stride, "pads": pads, "dilation": dilation, "groups": groups}
        grads = {"w": kernel_grad(x, dy, window, **conf)}
        if use_bias:
            grads["b"] = jnp.sum(dy, axis=(0, 1, 2))
        return grads, input_grad(dy, params["w"], x.shape[1:3], **conf)

    return Layer(name, init, forward, backward)
