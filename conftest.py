"""Strict test session for fnn (applies to tests/, doctests in fnn/ and README.md).

float64 is switched on once, here, before any test imports run: JAX does not support flipping
``jax_enable_x64`` inside a running process. Rank promotion raises, and warnings are errors
(pyproject's ``filterwarnings``). float32 paths are tested with explicit dtypes.
Hypothesis draws a fixed sequence of examples unless ``HYPOTHESIS_PROFILE=explore``.
"""

import os

import jax
from hypothesis import settings

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

# Property tests draw the same examples on every run ("fnn", the default), so a CI run fails
# only for a change in the code; HYPOTHESIS_PROFILE=explore draws new ones (and remembers the
# failures it finds in .hypothesis/) when hunting for bugs.
settings.register_profile("fnn", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fnn"))


def pytest_report_header(config):
    return f"jax {jax.__version__}, x64 on, rank promotion raises, devices {jax.devices()}"
