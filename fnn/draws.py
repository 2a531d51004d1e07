"""Random cotangents, tangents and primals for the rule checks, kept away from known kinks.

:func:`fnn.check.check_vjp` and kin draw their cotangents with :func:`random_like`. To check a
rule away from kinks you know about (relu at 0, clip at its bounds), draw primals with
:func:`draw_away_from_kinks`, or in a hypothesis test with the strategy :func:`away_from_kinks`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def random_like(key, tree, n: int) -> list:
    """``n`` standard-normal pytrees shaped like ``tree`` (float leaves; others zero)."""
    leaves, treedef = jax.tree.flatten(tree)
    out = []
    for k in range(n):
        keys = jax.random.split(jax.random.fold_in(key, k), max(len(leaves), 1))
        out.append(
            jax.tree.unflatten(
                treedef,
                [
                    jax.random.normal(kk, jnp.shape(v), jnp.result_type(v))
                    if jnp.issubdtype(jnp.result_type(v), jnp.inexact)
                    else jnp.zeros(jnp.shape(v), jnp.result_type(v))
                    for kk, v in zip(keys, leaves, strict=False)
                ],
            )
        )
    return out


def push_from_kinks(x, kinks: Sequence[float] = (0.0,), margin: float = 1e-3):
    """Move every element of ``x`` within ``margin`` of a kink to ``kink +- margin``.

    The side is the one the element was on (``>=`` goes up). Kinks should lie more than
    ``2 * margin`` apart.
    """
    x = jnp.asarray(x)
    for k in kinks:
        close = jnp.abs(x - k) < margin
        x = jnp.where(close, jnp.where(x >= k, k + margin, k - margin).astype(x.dtype), x)
    return x


def draw_away_from_kinks(
    key,
    shape,
    kinks: Sequence[float] = (0.0,),
    *,
    margin: float = 1e-3,
    dtype=jnp.float64,
    scale=1.0,
):
    """Standard-normal draws times ``scale``, kept at least ``margin`` from every kink.

    Example:
        >>> x = draw_away_from_kinks(jax.random.key(0), (1000,), kinks=(0.0, 1.0), margin=0.01)
        >>> bool(jnp.all(jnp.abs(x) >= 0.01) & jnp.all(jnp.abs(x - 1.0) >= 0.01))
        True
    """
    x = scale * jax.random.normal(key, tuple(shape), dtype)
    return push_from_kinks(x, kinks, margin)


def away_from_kinks(shape, kinks: Sequence[float] = (0.0,), *, margin: float = 1e-3, bound=3.0):
    """A hypothesis strategy of float64 arrays in ``[-bound, bound]``, ``margin`` from kinks.

    Needs ``hypothesis`` (the test extra), imported when called.
    """
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    elements = st.floats(-bound, bound, allow_nan=False, allow_infinity=False)
    return hnp.arrays(np.float64, tuple(shape), elements=elements).map(
        lambda a: np.asarray(push_from_kinks(jnp.asarray(a), kinks, margin))
    )
