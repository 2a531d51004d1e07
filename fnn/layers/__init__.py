"""Layers: small records of pure functions, each with a hand-written backward rule.

:class:`Layer` (in :mod:`fnn.layers.base`) is the protocol: ``init``, ``forward`` returning the
output and the residuals its backward needs, and ``backward(params, res, dy) -> (dparams, dx)``.
Parameterless layers have ``params == {}`` (an empty dict contributes no leaves), so a serial
model's parameters are a list with one entry per layer, e.g.
``[{"w": ..., "b": ...}, {}, {"w": ..., "b": ...}]``.

Dense layers and activations live in :mod:`fnn.layers.basic`; convolution (NHWC) in
:mod:`fnn.layers.conv`; pooling and reshape in :mod:`fnn.layers.pool`; batch and layer
normalisation in :mod:`fnn.layers.norm`; attention and embeddings in
:mod:`fnn.layers.attention` and :mod:`fnn.layers.embedding`.
"""

from fnn.layers.attention import attention
from fnn.layers.base import Layer, apply, check_float, check_positive_int, info, out_shape
from fnn.layers.basic import activation, custom, default_w_init, dense, dropout, flatten
from fnn.layers.conv import conv2d
from fnn.layers.embedding import embedding, position_embedding
from fnn.layers.norm import batch_norm, layer_norm
from fnn.layers.pool import avg_pool, global_avg_pool, max_pool, reshape

__all__ = [
    "Layer",
    "activation",
    "apply",
    "attention",
    "avg_pool",
    "batch_norm",
    "check_float",
    "check_positive_int",
    "conv2d",
    "custom",
    "default_w_init",
    "dense",
    "dropout",
    "embedding",
    "flatten",
    "global_avg_pool",
    "info",
    "layer_norm",
    "max_pool",
    "out_shape",
    "position_embedding",
    "reshape",
]
