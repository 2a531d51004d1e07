"""Strict test session for fnn (applies to tests/, doctests in fnn/ and README.md).

float64 is switched on once, here, before any test imports run: JAX does not support flipping
``jax_enable_x64`` inside a running process. Rank promotion raises, and warnings are errors
(pyproject's ``filterwarnings``). float32 paths are tested with explicit dtypes.
"""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_report_header(config):
    return f"jax {jax.__version__}, x64 on, rank promotion raises, devices {jax.devices()}"
