"""Finite-difference Jacobians of any function of several pytrees: the third witness of the
rule checks (:func:`fnn.check.check_vjp`, ``check_custom_vjp``, ``check_custom_jvp``).

Steps and tolerances are those of :func:`fnn.fd.numerical_grad`; every probe evaluates
``theta +- h v`` and ``theta +- 2h v`` so that :func:`fnn.fd.kink_mask` can flag kinks. One
Jacobian, taken once, serves any number of cotangents (``leaf.pull(ct)``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from fnn.fd import FD_TOLERANCES, check_precision, default_step, kink_mask


class JacobianLeaf(NamedTuple):
    """The finite-difference columns of a Jacobian for one input leaf.

    Attributes:
        path: the leaf, named by argument and pytree path, e.g. ``"arg0['w']"``.
        shape: the leaf's shape.
        mode: ``"coords"`` (one column per element) or ``"directions"`` (random unit
            directions, for leaves larger than ``max_coords``).
        columns: ``[p, m]``: the derivative of the raveled output along each probe.
        directions: ``[p, *shape]`` unit directions, or ``None`` (coords).
        kinks: ``[p]`` bool: the probe straddles a kink (:func:`kink_mask`), not compared.
    """

    path: str
    shape: tuple
    mode: str
    columns: np.ndarray
    directions: np.ndarray | None
    kinks: np.ndarray

    def pull(self, cotangent) -> np.ndarray:
        """``<cotangent, J>`` over this leaf: the estimate of a VJP, shaped like the leaf
        (coords) or ``[p]`` (directions, the VJP projected on each direction)."""
        est = self.columns @ np.asarray(cotangent, np.float64)
        return est.reshape(self.shape) if self.mode == "coords" else est

    def project(self, leaf) -> np.ndarray:
        """What to compare with :meth:`pull`: the leaf itself, or ``<leaf, v_k>``."""
        g = np.asarray(leaf, np.float64)
        return np.tensordot(self.directions, g, axes=g.ndim) if self.mode == "directions" else g

    @property
    def skip(self) -> np.ndarray:
        """The kink flags, shaped like :meth:`pull`'s result."""
        return self.kinks.reshape(self.shape) if self.mode == "coords" else self.kinks


class Jacobian(NamedTuple):
    """The result of :func:`numerical_jacobian`.

    Attributes:
        out: ``[m]`` the raveled output at the primals (float64).
        dtype: the dtype of the differences.
        leaves: one :class:`JacobianLeaf` per leaf of every primal, in argument order.
    """

    out: np.ndarray
    dtype: str
    leaves: tuple[JacobianLeaf, ...]

    def atol(self, cotangent) -> float:
        """The absolute tolerance of ``<cotangent, J>``: each column carries ~``FD atol *
        max(1, |f_j|)`` of truncation and rounding, summed with the cotangent's weights."""
        w = np.abs(np.asarray(cotangent, np.float64)) * np.maximum(1.0, np.abs(self.out))
        return FD_TOLERANCES[1] * max(float(w.sum()), 1e-300)

    @property
    def kinks(self) -> int:
        """How many probes straddled a kink."""
        return sum(int(leaf.kinks.sum()) for leaf in self.leaves)


def arg_path(path) -> str:
    """``"arg0['w']"`` from a key path into a tuple of arguments."""
    return f"arg{path[0].idx}{jax.tree_util.keystr(tuple(path[1:]))}"


def probe(g: Callable, flat, deltas, steps, f0, *, chunk: int = 256):
    """Central differences and kink flags of ``g: [n] -> [m]`` along the rows of ``deltas``.

    ``g`` runs eagerly under ``jax.vmap`` in chunks (small functions do not repay a
    compilation, which every new ``g`` would need).

    Args:
        g: the raveled function.
        flat: ``[n]`` the point.
        deltas: ``[p, n]`` steps ``h v`` (``v`` the direction).
        steps: ``[p]`` their ``h``.
        f0: ``[m]`` ``g(flat)``.
        chunk: points evaluated per ``vmap`` call.

    Returns:
        ``(slopes [p, m], kinks [p])``: the derivatives along each ``v``, and the probes
        whose left and right slopes disagree (:func:`kink_mask`).
    """
    deltas = np.asarray(deltas, flat.dtype)
    pts = np.asarray(flat)[None] + np.concatenate([deltas, -deltas, 2 * deltas, -2 * deltas])
    batched = jax.vmap(g)
    vals = np.concatenate(
        [np.asarray(batched(pts[i : i + chunk]), np.float64) for i in range(0, len(pts), chunk)]
    ).reshape(len(pts), -1)
    plus, minus, plus2, minus2 = np.split(vals, 4)
    steps = np.asarray(steps, np.float64)
    slopes = (plus - minus) / (2 * steps[:, None])
    return slopes, kink_mask(f0, plus, minus, plus2, minus2, steps)


def ravel_function(f: Callable, primals: tuple):
    """``f(*primals)`` as ``g: [n] -> [m]`` on the raveled primals; returns ``(g, flat, f0)``."""
    flat, unravel = ravel_pytree(tuple(primals))

    def g(v):
        return ravel_pytree(f(*unravel(v)))[0]

    return g, flat, np.asarray(g(flat), np.float64)


def numerical_jacobian(
    f: Callable,
    primals: tuple,
    *,
    eps: float | None = None,
    max_coords: int = 256,
    directions: int = 8,
    key=None,
    allow_low_precision: bool = False,
) -> Jacobian:
    """The Jacobian of ``f(*primals)`` (any pytrees in and out) by central differences.

    Steps as in :func:`numerical_grad`; leaves of at most ``max_coords`` elements get one
    column per element, larger ones ``directions`` random unit directions. Every probe also
    tests for a kink (:func:`kink_mask`). One Jacobian serves any number of cotangents:
    ``leaf.pull(ct)`` is the finite-difference estimate of the VJP.

    Raises:
        ValueError: in float32 or lower unless ``allow_low_precision`` (see
            :func:`numerical_grad`).
    """
    g, flat, f0 = ravel_function(f, primals)
    dtype = jnp.dtype(flat.dtype)
    check_precision(dtype, "numerical_jacobian", allow_low_precision)
    scale, theta = default_step(dtype), np.asarray(flat)
    key = jax.random.key(0) if key is None else key
    leaves, lo = [], 0
    for i, (path, leaf) in enumerate(jax.tree_util.tree_flatten_with_path(tuple(primals))[0]):
        size, shape = int(np.size(leaf)), tuple(np.shape(leaf))
        hi, dirs = lo + size, None
        if size <= max_coords:
            h = np.full(size, eps) if eps else scale * np.maximum(1, np.abs(theta[lo:hi]))
            h = (theta[lo:hi] + h.astype(dtype)) - theta[lo:hi]  # the step really taken
            deltas = np.zeros((size, theta.size), dtype)
            deltas[np.arange(size), np.arange(lo, hi)] = h
        else:
            v = np.array(jax.random.normal(jax.random.fold_in(key, i), (directions, size)), float)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            h = np.full(directions, eps or scale * max(1.0, float(np.abs(theta[lo:hi]).max())))
            deltas = np.zeros((directions, theta.size), dtype)
            deltas[:, lo:hi] = v * h[:, None]
            dirs = v.reshape((directions, *shape))
        cols, kinks = (
            probe(g, flat, deltas, h, f0) if len(h) else (np.zeros((0, f0.size)), np.zeros(0, bool))
        )
        mode = "coords" if dirs is None else "directions"
        leaves.append(JacobianLeaf(arg_path(path), shape, mode, cols, dirs, kinks))
        lo = hi
    return Jacobian(f0, dtype.name, tuple(leaves))


def numerical_jvp(f: Callable, primals: tuple, tangents: list, *, eps: float | None = None):
    """Directional derivatives of ``f(*primals)`` along each tangent (pytrees like primals).

    Returns:
        ``(f0 [m], slopes [k, m], kinks [k])``: the raveled output, the estimates of
        ``J t_k`` raveled, and the tangents along which ``f`` has a kink within two steps.
    """
    g, flat, f0 = ravel_function(f, primals)
    theta = np.asarray(flat)
    t = np.stack([np.asarray(ravel_pytree(tuple(tk))[0], np.float64) for tk in tangents])
    norms = np.maximum(np.linalg.norm(t, axis=1), 1e-300)
    h = eps or default_step(flat.dtype) * max(1.0, float(np.abs(theta).max(initial=0.0)))
    steps = np.full(len(t), h)
    slopes, kinks = probe(g, flat, t / norms[:, None] * h, steps, f0)
    return f0, slopes * norms[:, None], kinks
