"""Layers: small records of pure functions, each with a hand-written backward rule.

:class:`Layer` (in :mod:`fnn.layers.base`) is the protocol: ``init``, ``forward`` returning the
output and the residuals its backward needs, and ``backward(params, res, dy) -> (dparams, dx)``.
Parameterless layers have ``params == {}`` (an empty dict contributes no leaves), so a serial
model's parameters are a list with one entry per layer, e.g.
``[{"w": ..., "b": ...}, {}, {"w": ..., "b": ...}]``.
"""

from fnn.layers.attention import attention
from fnn.layers.base import Layer, apply, check_float, check_positive_int, info, out_shape
from fnn.layers.basic import activation, custom, default_w_init, dense, dropout, flatten
from fnn.layers.embedding import embedding, position_embedding
from fnn.layers.layernorm_seq import layer_norm

__all__ = [
    "Layer",
    "activation",
    "apply",
    "attention",
    "check_float",
    "check_positive_int",
    "custom",
    "default_w_init",
    "dense",
    "dropout",
    "embedding",
    "flatten",
    "info",
    "layer_norm",
    "out_shape",
    "position_embedding",
]
