"""A minimal ``layer_norm`` over the last axis, for the transformer block.

Written for the attention issue until the CNN issue's ``fnn.layers.layer_norm`` lands on main;
the two are to be merged into one.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from fnn import layers
    >>> ln = layers.layer_norm()
    >>> _, p = ln.init(jax.random.key(0), (3, 4), jnp.float32)
    >>> y, _ = ln.forward(p, jnp.arange(24.0).reshape(2, 3, 4))
    >>> [round(float(v), 3) for v in y[0, 0]]
    [-1.342, -0.447, 0.447, 1.342]
"""

from __future__ import annotations

import jax.numpy as jnp

from fnn.layers.base import Layer, check_float

# ---------------------------------------------------------------------------------------------
# layer_norm over the last axis (n features): xhat = (x - mean) / sqrt(var + eps),
#   y = g * xhat + b;  res = (xhat, 1 / sqrt(var + eps))
#   dg = sum(dy * xhat), db = sum(dy) over leading axes;  with dh = g * dy,
#   dx = (dh - mean(dh) - xhat * mean(dh * xhat)) / sqrt(var + eps)
#   (the two means are the mean's and the variance's dependence on every x_i)


def layer_norm(*, eps: float = 1e-5) -> Layer:
    """Normalise each position's features to zero mean and unit variance, then scale and shift.

    Args:
        eps: added to the variance before the square root.

    Shapes:
        ``params = {"g": [features] (ones), "b": [features] (zeros)}``,
        ``x, y: [batch, ..., features]``.

    Backward (keeps ``xhat`` and ``1 / sigma``): see the comment above the code.
    """

    def init(key, in_shape, dtype=jnp.float32):
        del key
        if len(in_shape) < 1:
            raise ValueError("layer_norm: expects inputs [batch, ..., features], got shape ()")
        n = int(in_shape[-1])
        return tuple(in_shape), {"g": jnp.ones((n,), dtype), "b": jnp.zeros((n,), dtype)}

    def forward(params, x, *, key=None, train=False, state=None):
        del key, train, state
        check_float("layer_norm", x)
        mu = jnp.mean(x, axis=-1, keepdims=True)
        xc = x - mu
        inv = 1.0 / jnp.sqrt(jnp.mean(xc * xc, axis=-1, keepdims=True) + eps)
        xhat = xc * inv
        lead = (1,) * (x.ndim - 1)
        return params["g"].reshape(*lead, -1) * xhat + params["b"].reshape(*lead, -1), (xhat, inv)

    def backward(params, res, dy):
        xhat, inv = res
        axes = tuple(range(dy.ndim - 1))
        dh = dy * params["g"].reshape(*(1,) * (dy.ndim - 1), -1)
        dx = inv * (
            dh
            - jnp.mean(dh, axis=-1, keepdims=True)
            - xhat * jnp.mean(dh * xhat, axis=-1, keepdims=True)
        )
        return {"g": jnp.sum(dy * xhat, axis=axes), "b": jnp.sum(dy, axis=axes)}, dx

    return Layer("layer_norm", init, forward, backward)
