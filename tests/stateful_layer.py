"""A tiny stateful layer for the engine's tests (batch norm itself lives in fnn.layers).

``centering(momentum)``: ``y = x - mean`` where ``mean`` is the batch mean in training and the
running mean at evaluation; the state ``{"mean", "var"}`` tracks the batch mean and the batch
variance ``mean((x - batch_mean)**2)``. The variance is not linear in the examples, so it
tells whether statistics were taken over the global batch or per device shard.
"""

import jax.numpy as jnp

from fnn.layers import Layer


def centering(momentum: float = 0.5) -> Layer:
    def init(key, in_shape, dtype):
        del key, dtype
        return tuple(in_shape), {}

    def init_state(in_shape, dtype):
        return {"mean": jnp.zeros(in_shape, dtype), "var": jnp.ones(in_shape, dtype)}

    def forward(params, x, *, key=None, train=False, state=None):
        del params, key
        if train:
            mean = jnp.mean(x, axis=0)
            var = jnp.mean((x - mean[None]) ** 2, axis=0)
        else:
            mean, var = state["mean"], state["var"]
        return x - mean[None], {"mean": mean, "var": var, "train": jnp.asarray(train)}

    def backward(params, res, dy):
        del params
        # training: y_i = x_i - mean(x), so dx = dy - mean(dy); evaluation: dx = dy
        return {}, jnp.where(res["train"], dy - jnp.mean(dy, axis=0, keepdims=True), dy)

    def next_state(state, res):
        return {k: momentum * state[k] + (1 - momentum) * res[k] for k in ("mean", "var")}

    return Layer(
        f"centering({momentum})",
        init,
        forward,
        backward,
        init_state=init_state,
        next_state=next_state,
    )
