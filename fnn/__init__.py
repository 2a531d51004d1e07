"""fnn: functional neural networks in JAX, with the backward pass written by hand and proven.

Parameters are plain pytrees; layers, activations and losses are pure functions, each with a
hand-written backward rule that :mod:`fnn.check` verifies against ``jax.grad`` and finite
differences.

Example:
    >>> import jax, jax.numpy as jnp
    >>> import fnn
    >>> model = fnn.mlp([4, 16, 3], activation="relu")
    >>> params = model.init(jax.random.key(0))
    >>> model.apply(params, jnp.ones((2, 4), jnp.float32)).shape
    (2, 3)
"""

from fnn import activations, layers, losses, models  # isort: split

from fnn import backprop, check, checkpoint, data, diagnostics, optim, parallel, train
from fnn.layers import Layer
from fnn.models import Model, build, mlp, serial

__version__ = "0.1.0"

__all__ = [
    "Layer",
    "Model",
    "activations",
    "backprop",
    "check",
    "checkpoint",
    "data",
    "diagnostics",
    "optim",
    "parallel",
    "train",
    "build",
    "layers",
    "losses",
    "mlp",
    "models",
    "serial",
    "__version__",
]
