"""Central finite differences: the third, autodiff-free witness of a gradient.

Every probe evaluates ``f`` at ``theta +- h v`` and ``theta +- 2h v``: the central difference
is the estimate, and the two one-sided slopes tell a kink from a slope (:func:`kink_mask`), so
that non-differentiable points are reported as kinks, not failures, without being declared.
:mod:`fnn.check` re-exports everything here; estimates are compared with the rows of
:mod:`fnn.compare`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from fnn.compare import Report, Row, compare_leaf, default_tolerances, leaves_by_path, scale_of

#: Default ``(rtol, atol)`` against float64 central differences. With the step
#: ``h = eps**(1/3) * max(1, |theta|)`` ~ 6e-6, truncation (``h**2 f'''/6`` ~ 1e-11) and
#: rounding (``eps |f| / h`` ~ 4e-11 ``|f|``) leave an absolute error ~1e-10 ``max(1, |f|)`` in
#: every estimate whatever the gradient's size; ``atol`` is scaled by ``max(1, |f|)``.
FD_TOLERANCES: tuple[float, float] = (1e-5, 1e-8)


class PrecisionWarning(UserWarning):
    """Finite differences were asked for in a dtype too coarse to trust them."""


class FDLeaf(NamedTuple):
    """Finite-difference estimates for one leaf.

    Attributes:
        path: the leaf's pytree path.
        mode: ``"coords"`` (every coordinate), ``"directions"`` (random unit directions) or
            ``"skipped"`` (large leaf, ``directions=0``).
        estimate: ``coords``: the gradient estimate, shaped like the leaf; ``directions``:
            ``[k]`` estimates of the directional derivatives ``<grad, v_k>``.
        directions: ``[k, *leaf.shape]`` unit directions, or ``None``.
        kinks: bool, shaped like ``estimate``: the ``+-h`` step moved a pre-activation across a
            kink, so the estimate is not a derivative and is not compared.
        step: the largest step used.
    """

    path: str
    mode: str
    estimate: np.ndarray
    directions: np.ndarray | None
    kinks: np.ndarray
    step: float

    @property
    def shape(self) -> tuple:
        """The leaf's shape."""
        return self.directions.shape[1:] if self.mode == "directions" else self.estimate.shape

    def project(self, grad) -> np.ndarray:
        """What to compare with ``estimate``: the gradient leaf, or its ``<grad, v_k>``."""
        g = np.asarray(grad, np.float64)
        return np.tensordot(self.directions, g, axes=g.ndim) if self.mode == "directions" else g


class FiniteDifferences(NamedTuple):
    """The result of :func:`numerical_grad`.

    Attributes:
        value: ``f(params)``.
        dtype: the dtype the differences were taken in.
        leaves: one :class:`FDLeaf` per leaf of ``params``, in tree order.
    """

    value: float
    dtype: str
    leaves: tuple[FDLeaf, ...]

    @property
    def kinks(self) -> int:
        """How many estimates straddled a kink."""
        return sum(int(leaf.kinks.sum()) for leaf in self.leaves)

    def compare(self, grads, *, rtol=None, atol=None, label="grads"):
        """Compare analytic ``grads`` (structured like ``params``) with these estimates.

        Defaults: :data:`FD_TOLERANCES`, ``atol`` scaled by ``max(1, |f|)``, widened to the
        grads' own dtype tolerance when that is coarser. Kink estimates are skipped. For a
        leaf checked by directions the row's ``worst_index`` is the direction's number.

        Returns:
            A :class:`fnn.check.Report`.
        """
        got = leaves_by_path(grads)
        if list(got) != [leaf.path for leaf in self.leaves]:
            raise ValueError(
                f"{label}: expected leaves {[lf.path for lf in self.leaves]}, got {list(got)}"
            )
        rows = []
        for leaf in self.leaves:
            g = got[leaf.path]
            drt, frac = default_tolerances(jnp.result_type(g))
            rt = max(FD_TOLERANCES[0], drt) if rtol is None else rtol
            at = (
                atol
                if atol is not None
                else max(
                    FD_TOLERANCES[1] * max(1.0, abs(self.value)), frac * scale_of(np.asarray(g))
                )
            )
            if leaf.mode == "skipped" or np.shape(g) != leaf.shape:
                bad = leaf.mode != "skipped"
                rows.append(
                    Row(
                        leaf.path,
                        tuple(np.shape(g)),
                        str(jnp.result_type(g)),
                        math.inf if bad else 0.0,
                        math.inf if bad else 0.0,
                        (),
                        np.size(g) if bad else 0,
                        0,
                        rt,
                        at,
                        not bad,
                        f"shape {np.shape(g)} vs {leaf.shape}" if bad else "not checked",
                    )
                )
                continue
            row = compare_leaf(leaf.path, leaf.project(g), leaf.estimate, rt, at, leaf.kinks)
            rows.append(row._replace(shape=tuple(np.shape(g)), dtype=str(jnp.result_type(g))))
        return Report(tuple(rows), (label, "finite differences"))


def kink_mask(f0, plus, minus, plus2, minus2, step, *, rtol=None, atol=None) -> np.ndarray:
    """Which probes straddle a point where ``f`` is not differentiable.

    From ``f`` at ``theta``, ``theta +- h v`` and ``theta +- 2h v`` come two one-sided slopes
    of second order, ``right = (4 f(+h) - f(+2h) - 3 f(0)) / 2h`` and
    ``left = (3 f(0) - 4 f(-h) + f(-2h)) / 2h``. Where ``f`` is smooth on ``[-2h, 2h]`` both
    equal the derivative up to ``h**2 |f'''| / 3`` (~1e-11 in float64) and rounding
    (~4 eps ``|f|`` / h, ~1.5e-10 ``|f|``); a kink on that interval (relu at 0, ``max`` at a
    tie, ``sort`` at a swap) puts its jump of slope between them. The test uses the central
    difference's own tolerances, so a kink too small to be flagged also moves the central
    estimate by less than its tolerance. The idea is the ``detect_nondifferentiable`` option
    of Chainer's ``check_backward``; this is a separate implementation of it.

    Args:
        f0: ``[m]`` (or a scalar) ``f(theta)`` raveled, shared by the probes, or ``[p, m]``.
        plus, minus, plus2, minus2: ``[p, m]``: ``f`` at ``theta + h v``, ``- h v``,
            ``+ 2h v``, ``- 2h v`` for ``p`` probes.
        step: ``[p]`` each probe's ``h`` (slopes are per unit of ``h v`` over ``h``).
        rtol, atol: default :data:`FD_TOLERANCES`; ``atol`` is scaled by ``max(1, |f|)``.

    Returns:
        ``[p]`` bool: the left and right slopes of some output element disagree.

    Example:
        >>> h = np.array([1e-5, 1e-5])
        >>> f = np.abs  # a kink at 0: probe 0 sits on it, probe 1 at 1.0
        >>> x = np.array([[0.0], [1.0]])
        >>> kink_mask(f(x), f(x + h[:, None]), f(x - h[:, None]),
        ...           f(x + 2 * h[:, None]), f(x - 2 * h[:, None]), h).tolist()
        [True, False]
    """
    rtol = FD_TOLERANCES[0] if rtol is None else rtol
    atol = FD_TOLERANCES[1] if atol is None else atol
    p = len(step)
    f0 = np.asarray(f0, np.float64)
    f0 = f0.reshape(1, -1) if f0.ndim < 2 else f0  # shared by all probes, or one row each
    plus, minus, plus2, minus2 = (
        np.asarray(v, np.float64).reshape(p, -1) for v in (plus, minus, plus2, minus2)
    )
    h2 = 2 * np.reshape(np.asarray(step, np.float64), (p, 1))
    with np.errstate(invalid="ignore", over="ignore"):
        right = (4 * plus - plus2 - 3 * f0) / h2
        left = (3 * f0 - 4 * minus + minus2) / h2
        tol = rtol * (np.abs(right) + np.abs(left)) + atol * np.maximum(1.0, np.abs(f0))
        return np.any(np.abs(right - left) > tol, axis=1)


def check_precision(dtype, who: str, allow_low_precision: bool) -> None:
    """Refuse (or, when allowed, warn about) finite differences coarser than float64."""
    if jnp.finfo(dtype).bits >= 64:
        return
    machine_eps = float(jnp.finfo(dtype).eps)
    msg = (
        f"{who} in {jnp.dtype(dtype).name}: central differences keep only ~eps**(2/3) = "
        f"{machine_eps ** (2 / 3):.0e} relative accuracy, so correct gradients can look "
        "wrong; enable x64 (jax.config.update('jax_enable_x64', True)) and cast params "
        "and inputs to float64, or pass allow_low_precision=True"
    )
    if not allow_low_precision:
        raise ValueError(msg)
    warnings.warn(msg, PrecisionWarning, stacklevel=3)


def default_step(dtype) -> float:
    """``eps**(1/3)`` of ``dtype``: the relative step that balances truncation and rounding."""
    return float(jnp.finfo(dtype).eps) ** (1 / 3)


def numerical_grad(
    f: Callable,
    params,
    *,
    eps: float | None = None,
    max_coords: int = 256,
    directions: int = 8,
    key=None,
    kink_fn: Callable | None = None,
    detect_kinks: bool = True,
    allow_low_precision: bool = False,
    batch_size: int = 32,
) -> FiniteDifferences:
    """Central finite differences of a scalar ``f(params)``, with kinks found on the way.

    ``(f(theta + h e) - f(theta - h e)) / 2h`` has error ``O(h**2)`` (a one-sided difference
    has ``O(h)``); rounding adds ``~eps |f| / h``. The two balance at ``h ~ eps**(1/3)`` times
    the scale of ``theta`` (Numerical Recipes, 3rd ed., section 5.7), so the default step for
    coordinate ``i`` is ``eps**(1/3) * max(1, |theta_i|)`` with the dtype's machine ``eps``,
    rounded so that ``theta + h`` is exact. Leaves of at most ``max_coords`` elements get
    every coordinate; larger ones get ``directions`` random unit directions ``v`` with step
    ``eps**(1/3) * max(1, max|leaf|)``, to compare with ``<grad, v>``. Each probe also
    evaluates ``theta +- 2h`` so that :func:`kink_mask` can tell a kink from a slope: four
    evaluations per probe, all in one compiled, batched map.

    Args:
        f: ``f(params) -> scalar``.
        params: a pytree of float arrays.
        eps: a fixed step ``h`` instead of the default.
        max_coords: leaves up to this size are checked coordinate by coordinate.
        directions: random directions per larger leaf (0 skips such leaves).
        key: PRNG key for the directions (default ``jax.random.key(0)``).
        kink_fn: ``kink_fn(params) -> pytree of int arrays`` telling on which side of each
            kink every kinked pre-activation lies (:func:`fnn.check.kink_pattern` builds it
            for a model). An estimate whose steps change that pattern is flagged as a kink.
        detect_kinks: also flag probes whose left and right slopes disagree
            (:func:`kink_mask`): kinks nobody declared.
        allow_low_precision: proceed (with a :class:`PrecisionWarning`) in float32 or lower.
        batch_size: evaluations batched together (memory versus speed).

    Returns:
        A :class:`FiniteDifferences`.

    Raises:
        TypeError: when ``params`` are not floating point.
        ValueError: in float32 or lower unless ``allow_low_precision``: central differences
            keep only about ``eps**(2/3)`` relative accuracy there (~2e-5 in float32), too
            coarse to tell a small bug from noise.
    """
    flat, unravel = ravel_pytree(params)
    dtype = jnp.dtype(flat.dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"numerical_grad: params must be floating point, got {dtype}; cast them to float64"
        )
    check_precision(dtype, "numerical_grad", allow_low_precision)
    base_pattern = None if kink_fn is None else jax.tree.leaves(kink_fn(params))
    value = float(f(params))

    def probe(delta):
        p = unravel(flat + delta)
        if base_pattern is None:
            return f(p), jnp.zeros((), bool)
        moved = [
            jnp.any(a != b) for a, b in zip(jax.tree.leaves(kink_fn(p)), base_pattern, strict=True)
        ]
        return f(p), jnp.any(jnp.stack(moved)) if moved else jnp.zeros((), bool)

    def run(deltas, steps, *args):
        """Estimates ``[p]`` and kink flags ``[p]`` for probes ``deltas(*args_k, t)`` at
        ``t = +h, -h, +2h, -2h`` (``steps``: ``[p]`` the ``h``); compiled once per kind."""
        fn = jax.jit(lambda *a: jax.lax.map(lambda b: probe(deltas(*b)), a, batch_size=batch_size))
        steps = np.asarray(steps, dtype)
        four = [np.concatenate([a] * 4) for a in args]
        t = np.concatenate([steps, -steps, 2 * steps, -2 * steps])
        vals, moved = jax.device_get(fn(*four, t))
        n = len(steps)
        plus, minus, plus2, minus2 = np.split(np.asarray(vals, np.float64), 4)
        kinks = np.any(np.reshape(np.asarray(moved), (4, n)), axis=0)
        if detect_kinks:
            kinks = kinks | kink_mask(value, plus, minus, plus2, minus2, steps)
        return (plus - minus) / (2 * np.asarray(steps, np.float64)), kinks

    leaves = _probe_leaves(run, params, flat, eps, max_coords, directions, key)
    return FiniteDifferences(value, dtype.name, leaves)


def _probe_leaves(run, params, flat, eps, max_coords, directions, key) -> tuple[FDLeaf, ...]:
    """One :class:`FDLeaf` per leaf of ``params``: coordinates for small leaves, random unit
    directions for large ones, through ``run`` (see :func:`numerical_grad`)."""
    dtype = flat.dtype
    scale = default_step(dtype)
    key = jax.random.key(0) if key is None else key
    theta = np.asarray(flat)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    offsets = np.cumsum([0] + [int(np.size(v)) for _, v in leaves])
    small = [i for i in range(len(leaves)) if offsets[i + 1] - offsets[i] <= max_coords]
    large = [i for i in range(len(leaves)) if i not in small and directions > 0]
    width = max([offsets[i + 1] - offsets[i] for i in large], default=1)

    # Coordinates: the step is rounded so that theta + h is exact (the step really taken).
    coords = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in small] or [[]])
    coords = coords.astype(int)
    h = (np.full(theta.shape, eps) if eps else scale * np.maximum(1, np.abs(theta))).astype(dtype)
    h = ((theta + h) - theta)[coords]
    est_c, kink_c = np.zeros(0), np.zeros(0, bool)
    if coords.size:
        est_c, kink_c = run(lambda i, t: jnp.zeros_like(flat).at[i].set(t), h, coords)

    # Directions: unit vectors over each large leaf, step from the leaf's largest entry; each
    # is written at its leaf's offset into a zero vector padded by the widest large leaf, so
    # all directions share one compiled program.
    dirs, steps = [], []
    padded = np.zeros((directions * len(large), width), dtype)
    for j, i in enumerate(large):
        lo, hi = offsets[i], offsets[i + 1]
        v = np.array(jax.random.normal(jax.random.fold_in(key, i), (directions, hi - lo)), float)
        dirs.append(v / np.linalg.norm(v, axis=1, keepdims=True))
        steps.append(eps or scale * max(1.0, float(np.abs(theta[lo:hi]).max())))
        padded[j * directions : (j + 1) * directions, : hi - lo] = dirs[-1]
    est_d, kink_d = np.zeros(0), np.zeros(0, bool)
    if len(padded):
        start = np.repeat([offsets[i] for i in large], directions).astype(int)

        def shifted(v, lo, t):
            seg = jnp.zeros(flat.size + width, dtype)
            return jax.lax.dynamic_update_slice(seg, v * t, (lo,))[: flat.size]

        est_d, kink_d = run(shifted, np.repeat(steps, directions), padded, start)

    out = []
    for i, (path, leaf) in enumerate(leaves):
        lo, hi, shape = offsets[i], offsets[i + 1], np.shape(leaf)
        name = jax.tree_util.keystr(path)
        if i in small:
            sel = np.searchsorted(coords, np.arange(lo, hi))
            step = float(h[sel].max(initial=0))
            out.append(
                FDLeaf(
                    name,
                    "coords",
                    est_c[sel].reshape(shape),
                    None,
                    kink_c[sel].reshape(shape),
                    step,
                )
            )
        elif i in large:
            j = large.index(i)
            sel = slice(j * directions, (j + 1) * directions)
            out.append(
                FDLeaf(
                    name,
                    "directions",
                    est_d[sel],
                    dirs[j].reshape((directions, *shape)),
                    kink_d[sel],
                    steps[j],
                )
            )
        else:
            out.append(FDLeaf(name, "skipped", np.zeros(0), None, np.zeros(0, bool), 0.0))
    return tuple(out)
