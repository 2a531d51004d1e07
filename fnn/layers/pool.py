"""Pooling and reshaping (NHWC): max_pool, avg_pool, global_avg_pool, reshape.

A pooling window is a convolution with a fixed kernel applied to each channel alone, so the
backwards reuse the convolution's transposed form (:func:`fnn.layers.conv.input_grad`):

* :func:`patches` lays every window out along a new axis: for non-overlapping windows a
  reshape, otherwise a depthwise convolution with a one-hot kernel (entry ``j`` of the
  window -> output slot ``j``); :func:`unpatches` is its transpose, adding each window slot
  back onto the input position it came from (overlapping windows add up).
* max pool: ``dx = unpatches(onehot(argmax of each window) * dy)``.
* avg pool: ``dx = unpatches(dy / count)`` broadcast over the window, ``count`` the number of
  real (non-padding) inputs in the window.

Example:
    >>> import jax.numpy as jnp
    >>> from fnn import layers
    >>> pool = layers.max_pool(2)
    >>> x = jnp.array([[1., 3.], [3., 2.]]).reshape(1, 2, 2, 1)
    >>> y, res = pool.forward({}, x)
    >>> y.ravel().tolist()
    [3.0]
    >>> pool.backward({}, res, jnp.ones_like(y))[1].ravel().tolist()   # a tie: first in row order
    [0.0, 1.0, 0.0, 0.0]
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

from fnn.layers.base import Layer, check_float
from fnn.layers.conv import NHWC, check_padding, explicit_pads, input_grad, out_size, pair


def one_hot_kernel(window, channels: int, dtype):
    """The depthwise kernel ``[kh, kw, 1, channels * kh * kw]`` that copies window slots out."""
    k = window[0] * window[1]
    eye = jnp.eye(k, dtype=dtype).reshape(window[0], window[1], 1, k)
    return jnp.tile(eye, (1, 1, 1, channels))


def _tiling(x_hw, window, pads):
    """``lax.pad`` configs between the input and the exact tiling by non-overlapping windows."""
    cfg = []
    for n, k, (lo, hi) in zip(x_hw, window, pads, strict=True):
        covered = out_size(n, k, k, 1, (lo, hi)) * k
        cfg.append((lo, covered - n - lo, 0))  # a negative high end crops what VALID drops
    return cfg


def patches(x, window, stride, pads):
    """Every window of ``x: [N, H, W, C]``: ``[N, Ho, Wo, C, kh * kw]`` (row-major slots).

    Padding entries are the dtype's lowest finite value, so a max never picks them. When the
    windows do not overlap (``stride == window``) this is a pad-or-crop and a reshape;
    otherwise a depthwise convolution with a one-hot kernel (``0 * pad`` stays 0 there, and
    each output is one input times 1, so the result is exact).
    """
    n, h, w, c = x.shape
    low = jnp.finfo(x.dtype).min
    kh, kw = window
    if tuple(stride) == tuple(window):
        cfg = _tiling((h, w), window, pads)
        xp = lax.pad(x, jnp.asarray(low, x.dtype), [(0, 0, 0), *cfg, (0, 0, 0)])
        ho, wo = xp.shape[1] // kh, xp.shape[2] // kw
        t = jnp.reshape(xp, (n, ho, kh, wo, kw, c)).transpose(0, 1, 3, 5, 2, 4)
        return jnp.reshape(t, (n, ho, wo, c, kh * kw))
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=low)
    p = lax.conv_general_dilated(
        xp,
        one_hot_kernel(window, c, x.dtype),
        window_strides=stride,
        padding="VALID",
        dimension_numbers=NHWC,
        feature_group_count=c,
        precision=lax.Precision.HIGHEST,
    )
    return jnp.reshape(p, (*p.shape[:3], c, kh * kw))


def unpatches(dp, in_hw, window, stride, pads):
    """The transpose of :func:`patches`: ``[N, Ho, Wo, C, kh * kw] -> [N, H, W, C]``.

    Each window slot is added back onto the input position it came from (overlapping windows
    add up; padding positions are dropped).
    """
    n, ho, wo, c, _ = dp.shape
    kh, kw = window
    if tuple(stride) == tuple(window):
        t = jnp.reshape(dp, (n, ho, wo, c, kh, kw)).transpose(0, 1, 4, 2, 5, 3)
        t = jnp.reshape(t, (n, ho * kh, wo * kw, c))
        undo = [(-lo, -hi, 0) for lo, hi, _ in _tiling(in_hw, window, pads)]
        return lax.pad(t, jnp.zeros((), dp.dtype), [(0, 0, 0), *undo, (0, 0, 0)])
    return input_grad(
        jnp.reshape(dp, (n, ho, wo, -1)),
        one_hot_kernel(window, c, dp.dtype),
        in_hw,
        stride=stride,
        pads=pads,
        dilation=(1, 1),
        groups=c,
        precision=lax.Precision.HIGHEST,
    )


def _pool_setup(kind: str, window, stride, padding):
    window = pair(kind, "window", window)
    stride = window if stride is None else pair(kind, "stride", stride)
    padding = check_padding(kind, padding)
    name = f"{kind}({window[0]}x{window[1]})"

    def shape_of(in_shape):
        if len(in_shape) != 3:
            raise ValueError(
                f"{name}: expects NHWC inputs, feature shape (H, W, C), got {tuple(in_shape)}"
            )
        h, w, c = in_shape
        pads = explicit_pads(padding, (h, w), window, stride, (1, 1))
        ho, wo = (
            out_size(n, k, s, 1, p) for n, k, s, p in zip((h, w), window, stride, pads, strict=True)
        )
        if ho < 1 or wo < 1:
            raise ValueError(f"{name}: input {h}x{w} is smaller than the window; pad it")
        return (ho, wo, c)

    def pads_of(x):
        return explicit_pads(padding, x.shape[1:3], window, stride, (1, 1))

    def init(key, in_shape, dtype=jnp.float32):
        del key, dtype
        return shape_of(tuple(int(s) for s in in_shape)), {}

    return name, window, stride, pads_of, init


def _check_nhwc(name, x):
    check_float(name, x)
    if jnp.ndim(x) != 4:
        raise ValueError(f"{name}: input x must have shape [N, H, W, C], got {jnp.shape(x)}")


# ---------------------------------------------------------------------------------------------
# max_pool: y = max over each window; res = x
#   dx = unpatches(onehot(first argmax of the window) * dy): the whole dy goes to one element


def max_pool(window, stride=None, padding="VALID") -> Layer:
    """Max pooling over ``window`` (``k`` or ``(kh, kw)``) per channel.

    Args:
        window: the pooling window.
        stride: default ``window`` (non-overlapping windows).
        padding: ``"VALID"``, ``"SAME"``, an int or ``((top, bottom), (left, right))``;
            padding never wins a max.

    Backward (keeps ``x``): each window's ``dy`` goes to its maximum. **Ties** (several
    entries equal to the maximum, common after a ReLU's zeros) send all of it to the first of
    them in row-major window order, so ``dx`` sums to ``dy``'s sum; that is a valid
    subgradient, as is ``jax.vjp``'s choice. Overlapping windows add their shares.
    """
    name, window, stride, pads_of, init = _pool_setup("max_pool", window, stride, padding)

    def forward(params, x, *, key=None, train=False, state=None):
        del params, key, train, state
        _check_nhwc(name, x)
        pads = pads_of(x)
        y = lax.reduce_window(
            x, -jnp.inf, lax.max, (1, *window, 1), (1, *stride, 1), ((0, 0), *pads, (0, 0))
        )
        return y, x

    def backward(params, x, dy):
        del params
        pads = pads_of(x)
        p = patches(x, window, stride, pads)
        first = jnp.argmax(p, axis=-1)  # argmax returns the first maximum
        route = (lax.broadcasted_iota(first.dtype, p.shape, 4) == first[..., None]).astype(dy.dtype)
        return {}, unpatches(route * dy[..., None], x.shape[1:3], window, stride, pads)

    return Layer(name, init, forward, backward)


# ---------------------------------------------------------------------------------------------
# avg_pool: y = sum over each window / count; res = x's shape
#   dx = unpatches(dy / count, broadcast over the window)


def avg_pool(window, stride=None, padding="VALID") -> Layer:
    """Average pooling over ``window`` per channel.

    Args: as :func:`max_pool`. With padding, each output averages the real inputs of its
    window only (padding is not counted).

    Backward: every input of a window gets ``dy / count`` of it; overlapping windows add up.
    """
    name, window, stride, pads_of, init = _pool_setup("avg_pool", window, stride, padding)

    def counts(x, pads):
        ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
        return lax.reduce_window(
            ones, 0.0, lax.add, (1, *window, 1), (1, *stride, 1), ((0, 0), *pads, (0, 0))
        )

    def forward(params, x, *, key=None, train=False, state=None):
        del params, key, train, state
        _check_nhwc(name, x)
        pads = pads_of(x)
        s = lax.reduce_window(
            x, 0.0, lax.add, (1, *window, 1), (1, *stride, 1), ((0, 0), *pads, (0, 0))
        )
        return s / counts(x, pads), jnp.zeros((0, *x.shape[1:]), x.dtype)

    def backward(params, res, dy):
        del params
        in_hw, pads = res.shape[1:3], pads_of(res)
        share = (dy / counts(res, pads))[..., None]
        share = jnp.broadcast_to(share, (*dy.shape, window[0] * window[1]))
        return {}, unpatches(share, in_hw, window, stride, pads)

    return Layer(name, init, forward, backward)


# ---------------------------------------------------------------------------------------------
# global_avg_pool: y[n, c] = mean over (h, w) of x[n, h, w, c]; dx = dy / (H W) everywhere


def global_avg_pool() -> Layer:
    """Mean over the spatial axes: ``[N, H, W, C] -> [N, C]``.

    Backward: ``dx[n, h, w, c] = dy[n, c] / (H W)``.
    """
    name = "global_avg_pool"

    def init(key, in_shape, dtype=jnp.float32):
        del key, dtype
        if len(in_shape) != 3:
            raise ValueError(f"{name}: expects feature shape (H, W, C), got {tuple(in_shape)}")
        return (int(in_shape[2]),), {}

    def forward(params, x, *, key=None, train=False, state=None):
        del params, key, train, state
        _check_nhwc(name, x)
        return jnp.mean(x, axis=(1, 2)), jnp.zeros((0, *x.shape[1:]), x.dtype)

    def backward(params, res, dy):
        del params
        h, w = res.shape[1:3]
        dx = jnp.broadcast_to((dy / (h * w))[:, None, None, :], (dy.shape[0], *res.shape[1:]))
        return {}, dx

    return Layer(name, init, forward, backward)


# ---------------------------------------------------------------------------------------------
# reshape: y = x.reshape(N, *shape); dx = dy.reshape(x.shape)


def reshape(shape) -> Layer:
    """Reshape each example to ``shape`` (the batch axis kept), e.g. ``(8, 8, 1)`` for digits.

    A model that starts with ``reshape((8, 8, 1))`` takes the flat 64-feature rows of the
    dataset as they are: the layout is the model's choice, the data is never copied per
    layout. Backward: ``dx = dy.reshape(x.shape)``.
    """
    if not isinstance(shape, (tuple, list)) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape
    ):
        raise ValueError(f"reshape: shape must be a tuple of positive ints, got {shape!r}")
    shape = tuple(int(s) for s in shape)
    name = f"reshape({shape})"

    def init(key, in_shape, dtype=jnp.float32):
        del key, dtype
        if math.prod(in_shape) != math.prod(shape):
            raise ValueError(
                f"{name}: cannot reshape feature shape {tuple(in_shape)} "
                f"({math.prod(in_shape)} values) to {shape} ({math.prod(shape)} values)"
            )
        return shape, {}

    def forward(params, x, *, key=None, train=False, state=None):
        del params, key, train, state
        return jnp.reshape(x, (x.shape[0], *shape)), jnp.zeros((0, *x.shape[1:]), x.dtype)

    def backward(params, res, dy):
        del params
        return {}, jnp.reshape(dy, (dy.shape[0], *res.shape[1:]))

    return Layer(name, init, forward, backward)
