"""Layers: small records of pure functions, each with a hand-written backward rule.

:class:`Layer` (in :mod:`fnn.layers.base`) is the protocol: ``init``, ``forward`` returning the
output and the residuals its backward needs, and ``backward(params, res, dy) -> (dparams, dx)``.
Parameterless layers have ``params == {}`` (an empty dict contributes no leaves), so a serial
model's parameters are a list with one entry per layer, e.g.
``[{"w": ..., "b": ...}, {}, {"w": ..., "b": ...}]``.
"""

from fnn.layers.base import Layer, apply, check_float, check_positive_int, info, out_shape
from fnn.layers.basic import activation, custom, default_w_init, dense, dropout, flatten

__all__ = [
    "Layer",
    "activation",
    "apply",
    "check_float",
    "check_positive_int",
    "custom",
    "default_w_init",
    "dense",
    "dropout",
    "flatten",
    "info",
    "out_shape",
]
