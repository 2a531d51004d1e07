"""Normalisation layers: batch_norm (with running statistics as state) and layer_norm.

Both normalise ``xhat = (x - mu) / sqrt(var + eps)`` and return ``y = scale * xhat + offset``
per channel (the last axis); they differ in the axes the statistics ``mu, var`` run over.
When ``mu`` and ``var`` are computed from the very values being normalised (``m`` of them),
every input moves them, and the backward has three terms:

    dxhat = dy * scale
    dx    = (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) / sqrt(var + eps)

the first the direct path, the second through ``mu`` (shifting all inputs shifts the mean,
which cancels it), the third through ``var`` (scaling all inputs scales the deviation, which
cancels it). ``dscale = sum(dy * xhat)`` and ``doffset = sum(dy)`` over every axis but the last.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from fnn import layers
    >>> bn = layers.batch_norm()
    >>> _, p = bn.init(jax.random.key(0), (3,), jnp.float32)
    >>> s = bn.init_state((3,), jnp.float32)
    >>> x = jnp.arange(12.0).reshape(4, 3)
    >>> y, res = bn.forward(p, x, train=True, state=s)
    >>> [round(float(v), 4) for v in y.mean(0)]
    [0.0, 0.0, 0.0]
    >>> [round(float(v), 4) for v in bn.next_state(s, res)["mean"]]   # 0.1 * batch mean
    [0.45, 0.55, 0.65]
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from fnn.layers.base import Layer, check_float


def _check_rate(layer: str, arg: str, value, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high:
        raise ValueError(f"{layer}: {arg} must be a number in [{low}, {high}), got {value!r}")
    return float(value)


def _scale_offset(name, in_shape, dtype):
    if len(in_shape) < 1:
        raise ValueError(f"{name}: expects inputs [batch, ..., channels], got feature shape ()")
    c = int(in_shape[-1])
    return tuple(in_shape), {"scale": jnp.ones((c,), dtype), "offset": jnp.zeros((c,), dtype)}


def _affine(params, xhat):
    shape = (1,) * (xhat.ndim - 1) + (-1,)
    return xhat * jnp.reshape(params["scale"], shape) + jnp.reshape(params["offset"], shape)


def three_term_dx(dxhat, xhat, inv_std, axes):
    """``dx`` through statistics taken over ``axes``: direct, mean and variance terms."""
    mean_term = jnp.mean(dxhat, axis=axes, keepdims=True)
    var_term = xhat * jnp.mean(dxhat * xhat, axis=axes, keepdims=True)
    return (dxhat - mean_term - var_term) * inv_std


def _param_grads(dy, xhat):
    lead = tuple(range(dy.ndim - 1))
    return {"scale": jnp.sum(dy * xhat, axis=lead), "offset": jnp.sum(dy, axis=lead)}


# ---------------------------------------------------------------------------------------------
# batch_norm: statistics over the batch (and spatial) axes in training, running ones at eval
#   train: dx = three_term_dx(dy * scale) over those axes;  eval: dx = dy * scale * inv_std


def batch_norm(momentum: float = 0.9, eps: float = 1e-5) -> Layer:
    """Batch normalisation (Ioffe & Szegedy, 2015) over every axis but the last (channels).

    Args:
        momentum: running statistics update as ``r = momentum * r + (1 - momentum) * batch``.
        eps: added to the variance.

    Params ``{"scale": [C], "offset": [C]}``; state ``{"mean": [C], "var": [C]}`` (zeros and
    ones at first), the running statistics: not trained, updated by :attr:`Layer.next_state`
    from a training forward's residuals, threaded as state (``fnn.models.init_state_of``,
    :func:`fnn.backprop.value_grad_state`), so they live in the model state pytree and travel
    with it (checkpoints). The variance kept is the biased batch variance (divided by ``m``).

    ``train=True`` normalises with the batch's own statistics; under ``jit`` with a batch
    sharded over devices (:func:`fnn.train.fit` with ``devices``) ``jnp.mean`` over the batch
    axis is over the *global* batch, XLA inserting the cross-device sums. ``train=False``
    uses the running statistics from ``state``.

    Backward: in training the three-term formula of the module docstring over the batch and
    spatial axes; residuals ``(xhat, inv_std, mu, var)``. At evaluation the statistics are
    constants: ``dx = dy * scale * inv_std``; residuals ``(xhat, inv_std)``.
    """
    momentum = _check_rate("batch_norm", "momentum", momentum, 0.0, 1.0)
    eps = _check_rate("batch_norm", "eps", eps, 0.0, float("inf"))
    name = "batch_norm"

    def init(key, in_shape, dtype=jnp.float32):
        del key
        return _scale_offset(name, in_shape, dtype)

    def init_state(in_shape, dtype=jnp.float32):
        c = int(in_shape[-1])
        return {"mean": jnp.zeros((c,), dtype), "var": jnp.ones((c,), dtype)}

    def forward(params, x, *, key=None, train=False, state=None):
        del key
        check_float(name, x)
        if jnp.ndim(x) < 2 or x.shape[-1] != params["scale"].shape[0]:
            raise ValueError(
                f"{name}: input x must have shape [batch, ..., {params['scale'].shape[0]}], "
                f"got {jnp.shape(x)}"
            )
        if train:
            axes = tuple(range(x.ndim - 1))
            mu = jnp.mean(x, axis=axes, keepdims=True)
            var = jnp.mean(jnp.square(x - mu), axis=axes, keepdims=True)
            inv_std = lax.rsqrt(var + eps)
            xhat = (x - mu) * inv_std
            return _affine(params, xhat), (xhat, inv_std, mu, var)
        if state is None or "mean" not in state:
            raise ValueError(
                f"{name}: train=False needs state={{'mean', 'var'}} (the running statistics); "
                "build it with fnn.models.init_state_of or model.init_state()"
            )
        shape = (1,) * (x.ndim - 1) + (-1,)
        inv_std = lax.rsqrt(jnp.reshape(state["var"], shape).astype(x.dtype) + eps)
        xhat = (x - jnp.reshape(state["mean"], shape).astype(x.dtype)) * inv_std
        return _affine(params, xhat), (xhat, inv_std)

    def backward(params, res, dy):
        xhat, inv_std = res[0], res[1]
        dxhat = dy * jnp.reshape(params["scale"], (1,) * (dy.ndim - 1) + (-1,))
        if len(res) == 4:
            dx = three_term_dx(dxhat, xhat, inv_std, tuple(range(dy.ndim - 1)))
        else:
            dx = dxhat * inv_std
        return _param_grads(dy, xhat), dx

    def next_state(state, res):
        if len(res) != 4:  # an evaluation forward: nothing learned
            return state
        _, _, mu, var = res
        mean, old_var = state["mean"], state["var"]
        return {
            "mean": momentum * mean + (1 - momentum) * jnp.ravel(mu).astype(mean.dtype),
            "var": momentum * old_var + (1 - momentum) * jnp.ravel(var).astype(old_var.dtype),
        }

    return Layer(name, init, forward, backward, init_state=init_state, next_state=next_state)


# ---------------------------------------------------------------------------------------------
# layer_norm: statistics over the last axis of each example; dx = three_term_dx over it


def layer_norm(eps: float = 1e-5) -> Layer:
    """Layer normalisation (Ba et al., 2016) over the last axis, with learned scale and offset.

    Args:
        eps: added to the variance.

    Params ``{"scale": [C], "offset": [C]}``. Each row (every leading index: example, pixel,
    position) is normalised by its own mean and variance over the ``C`` channels, the same in
    training and evaluation, so there is no state.

    Backward (keeps ``(xhat, inv_std)``): the three-term formula over the last axis.
    """
    eps = _check_rate("layer_norm", "eps", eps, 0.0, float("inf"))
    name = "layer_norm"

    def init(key, in_shape, dtype=jnp.float32):
        del key
        return _scale_offset(name, in_shape, dtype)

    def forward(params, x, *, key=None, train=False, state=None):
        del key, train, state
        check_float(name, x)
        if jnp.ndim(x) < 2 or x.shape[-1] != params["scale"].shape[0]:
            raise ValueError(
                f"{name}: input x must have shape [batch, ..., {params['scale'].shape[0]}], "
                f"got {jnp.shape(x)}"
            )
        mu = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mu), axis=-1, keepdims=True)
        inv_std = lax.rsqrt(var + eps)
        xhat = (x - mu) * inv_std
        return _affine(params, xhat), (xhat, inv_std)

    def backward(params, res, dy):
        xhat, inv_std = res
        scale = jnp.reshape(params["scale"], (1,) * (dy.ndim - 1) + (-1,))
        dx = three_term_dx(dy * scale, xhat, inv_std, (-1,))
        return _param_grads(dy, xhat), dx

    return Layer(name, init, forward, backward)
