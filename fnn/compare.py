"""Comparing two gradients leaf by leaf: the report types every check in fnn returns.

:func:`compare` puts two pytrees side by side and returns a :class:`Report` with one
:class:`Row` per leaf, keyed by pytree path (``jax.tree_util.keystr``, e.g. ``[2]['w']``).
:mod:`fnn.fd` (finite differences) and :mod:`fnn.check` (the three-witness checks) build on
these rows; :mod:`fnn.check` re-exports every public name here.

Errors. For elements ``a`` and ``b`` the absolute error is ``|a - b|`` and the relative error
``|a - b| / max(|a| + |b|, tiny)``; the latter lies in ``[0, 1]``: 1 means opposite signs or
one side zero, ``1/3`` a factor of 2. An element passes when ``abs <= atol`` **or**
``rel <= rtol``: the relative test judges ordinary elements, the absolute one elements near 0,
whose true value is swamped by round-off so that their relative error means nothing. A leaf's
"worst index" is the element that most exceeds its tolerance, ``min(abs/atol, rel/rtol)``;
its "max rel err" leaves out passing elements near zero (``|a| + |b| < atol / rtol``, where
the absolute test decides), for the same reason.

Default tolerances (:data:`TOLERANCES`), for two analytic gradients in the less precise dtype
of the pair. Two correct computations differ only by rounding, which accumulates through the
sums of a forward and backward pass: a few hundred units of round-off ``u`` at most for small
MLPs (``u`` = 1.1e-16 in float64, 6e-8 in float32), more where terms cancel. float64 takes
``rtol = 1e-7``: ~1e9 ``u`` of head-room for correct code, and still 500 times below the
smallest classic bug (one element 1e-4 off, a relative error of 5e-5). float32 takes
``rtol = 1e-3`` (~1.7e4 ``u``), because cancellation in float32 sums easily leaves 1e-4.
The default ``atol`` follows the gradient's units: a fraction of the leaf's largest magnitude
(1e-12 in float64, 1e-4 in float32), not a fixed number, since a batch-mean loss over 512
examples has gradients 100 times smaller than over 5, and a fixed ``atol`` would then hide
bugs. Correct code measured about 2e-6 of the leaf scale in float32 (softmax hidden layers).

Example:
    >>> import jax.numpy as jnp
    >>> report = compare({"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([1.0, -2.0])})
    >>> report.ok, report.failed, report.rows[0].worst_index
    (False, ["['w']"], (1,))
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

#: Default ``(rtol, atol_fraction)`` for comparing two analytic gradients, by dtype; the
#: absolute tolerance is ``atol_fraction`` times the leaf's largest magnitude (see the module
#: docstring for the reasoning).
TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-7, 1e-12),
    "float32": (1e-3, 1e-4),
    "float16": (1e-2, 1e-2),
    "bfloat16": (5e-2, 5e-2),
}


BANDS = (
    "How to read the relative errors (float64): <= 1e-7 round-off, good; 1e-7..1e-2 suspicious\n"
    "(see the worst index: a kink, a near-zero element, a small bug); > 1e-2 almost surely a\n"
    "wrong gradient. In float32 the bands are about 1e4 times wider."
)


def default_tolerances(*dtypes) -> tuple[float, float]:
    """``(rtol, atol_fraction)`` from :data:`TOLERANCES` for the least precise of ``dtypes``."""
    floats = [jnp.dtype(d) for d in dtypes if jnp.issubdtype(d, jnp.floating)]
    coarse = max(floats or [jnp.dtype("float64")], key=lambda d: float(jnp.finfo(d).eps))
    return TOLERANCES.get(coarse.name, TOLERANCES["bfloat16"])


# ---------------------------------------------------------------------------------------------
# compare: one row per leaf


class Row(NamedTuple):
    """One leaf of a :class:`Report`.

    Attributes:
        path: the leaf's pytree path (``jax.tree_util.keystr``), e.g. ``"[0]['w']"``.
        shape, dtype: of the first operand.
        max_abs_err: over the compared elements (``inf`` for NaN/inf or a shape mismatch).
        max_rel_err: over the compared elements, leaving out passing ones near zero
            (``|a| + |b| < atol / rtol``, decided by ``atol``: there a relative error measures
            only round-off).
        worst_index: index (a tuple) of the element that most exceeds its tolerance.
        n_fail: how many elements fail; n_skipped: how many were excluded (kinks).
        rtol, atol: the tolerances used.
        ok: whether every compared element passes.
        note: why the row failed beyond its numbers (shape mismatch, non-finite values).
    """

    path: str
    shape: tuple
    dtype: str
    max_abs_err: float
    max_rel_err: float
    worst_index: tuple
    n_fail: int
    n_skipped: int
    rtol: float
    atol: float
    ok: bool
    note: str = ""


def _ratio(err: np.ndarray, tol: float) -> np.ndarray:
    if tol > 0:
        return err / tol
    return np.where(err > 0, np.inf, 0.0)


def scale_of(*arrays) -> float:
    """The largest finite magnitude in ``arrays`` (0 if none)."""
    return max(
        (float(np.max(np.abs(v), where=np.isfinite(v), initial=0.0)) for v in arrays), default=0.0
    )


def compare_leaf(path, a, b, rtol, atol, skip=None) -> Row:
    a, b = np.asarray(a), np.asarray(b)
    drt, frac = default_tolerances(a.dtype, b.dtype)
    rtol = drt if rtol is None else float(rtol)
    atol = frac * scale_of(a, b) if atol is None else float(atol)
    if a.shape != b.shape:
        return Row(
            path,
            a.shape,
            a.dtype.name,
            math.inf,
            math.inf,
            (),
            a.size,
            0,
            rtol,
            atol,
            False,
            f"shape {a.shape} vs {b.shape}",
        )
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    finite = np.isfinite(a64) & np.isfinite(b64)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.where(finite, np.abs(a64 - b64), np.inf)
        rel = np.where(
            finite, err / np.maximum(np.abs(a64) + np.abs(b64), np.finfo(float).tiny), np.inf
        )
    score = np.minimum(_ratio(err, atol), _ratio(rel, rtol))
    skip = np.zeros(a.shape, bool) if skip is None else np.broadcast_to(skip, a.shape)
    score = np.where(skip, -1.0, score)
    # max_rel_err leaves out passing elements near zero (|a| + |b| < atol/rtol, where the
    # absolute test decides): there a relative error measures only round-off, and counting
    # it would make the number useless against the bands.
    near_zero = ((np.abs(a64) + np.abs(b64)) * rtol < atol) & (err <= atol)
    err, rel = np.where(skip, 0.0, err), np.where(skip | near_zero, 0.0, rel)
    n_fail = int(np.sum(score > 1.0))
    worst = tuple(int(i) for i in np.unravel_index(np.argmax(score), a.shape)) if a.size else ()
    note = "" if finite.all() else f"{int(np.sum(~finite))} non-finite"
    return Row(
        path,
        a.shape,
        a.dtype.name,
        float(err.max(initial=0.0)),
        float(rel.max(initial=0.0)),
        worst,
        n_fail,
        int(skip.sum()),
        rtol,
        atol,
        n_fail == 0,
        note,
    )


class Report(NamedTuple):
    """Leaf-by-leaf comparison of two gradient pytrees (from :func:`compare`).

    Attributes:
        rows: one :class:`Row` per leaf, in tree order.
        labels: names of the two operands, used in the table's title.
    """

    rows: tuple[Row, ...]
    labels: tuple[str, str] = ("a", "b")

    @property
    def ok(self) -> bool:
        """Whether every leaf passes."""
        return all(r.ok for r in self.rows)

    @property
    def max_abs_err(self) -> float:
        return max((r.max_abs_err for r in self.rows), default=0.0)

    @property
    def max_rel_err(self) -> float:
        return max((r.max_rel_err for r in self.rows), default=0.0)

    @property
    def failed(self) -> list[str]:
        """Paths of the failing leaves."""
        return [r.path for r in self.rows if not r.ok]

    def as_dict(self) -> dict:
        """A JSON-ready summary: ``ok``, ``max_abs_err``, ``max_rel_err``, ``leaves``."""
        return {
            "ok": self.ok,
            "max_abs_err": self.max_abs_err,
            "max_rel_err": self.max_rel_err,
            "leaves": [row_dict(r) for r in self.rows],
        }

    def __str__(self) -> str:
        table = make_table(
            f"gradients: {self.labels[0]} vs {self.labels[1]}",
            ["leaf", "shape", "dtype", "max abs err", "max rel err", "worst index", "result"],
        )
        for r in self.rows:
            add_row(
                table,
                r.path,
                fmt_shape(r.shape),
                r.dtype,
                fmt_num(r.max_abs_err),
                fmt_num(r.max_rel_err),
                str(r.worst_index),
                row_status(r),
            )
        verdict = "PASS" if self.ok else f"FAIL: {', '.join(self.failed)}"
        return render_table(
            table,
            f"{verdict} (max abs err {fmt_num(self.max_abs_err)}, "
            f"max rel err {fmt_num(self.max_rel_err)})\n{BANDS}",
        )


def row_dict(r: Row | None) -> dict | None:
    if r is None:
        return None
    d = r._asdict()
    d["shape"], d["worst_index"] = list(r.shape), list(r.worst_index)
    return d


def leaves_by_path(tree) -> dict[str, Any]:
    return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def compare(
    a,
    b,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    labels: Sequence[str] = ("a", "b"),
) -> Report:
    """Compare two gradient pytrees leaf by leaf.

    Args:
        a, b: pytrees of the same structure (e.g. manual and autodiff gradients).
        rtol, atol: tolerances; by default from :data:`TOLERANCES` for the less precise dtype
            of each pair of leaves (``atol`` then scales with the leaf's largest magnitude).
            An element passes if ``abs <= atol`` or ``rel <= rtol``.
        labels: the two operands' names for the table.

    Returns:
        A :class:`Report`: ``.ok``, ``.max_abs_err``, ``.max_rel_err``, ``.rows``, ``str()``.

    Raises:
        ValueError: when the trees have different leaves; the message lists the paths found
            in only one of them.
    """
    la, lb = leaves_by_path(a), leaves_by_path(b)
    if list(la) != list(lb):
        only_a = [p for p in la if p not in lb] or "none"
        only_b = [p for p in lb if p not in la] or "none"
        raise ValueError(
            f"compare: the two trees differ in structure; leaves only in {labels[0]}: {only_a}; "
            f"only in {labels[1]}: {only_b}; both must have the structure of params"
        )
    rows = tuple(compare_leaf(p, la[p], lb[p], rtol, atol) for p in la)
    return Report(rows, tuple(labels))


def assert_grads_close(a, b, *, rtol: float | None = None, atol: float | None = None) -> None:
    """Raise ``AssertionError`` carrying the :func:`compare` table unless ``a`` matches ``b``.

    Example:
        >>> assert_grads_close({"w": jnp.ones(3)}, {"w": jnp.ones(3)})
    """
    report = compare(a, b, rtol=rtol, atol=atol)
    if not report.ok:
        raise AssertionError("gradients differ\n" + str(report))


# ---------------------------------------------------------------------------------------------
# rows of the three-witness checks


class ModelRow(NamedTuple):
    """One leaf checked by three witnesses (rows of :class:`fnn.check.ModelReport` and
    :class:`fnn.check.RuleReport`).

    Attributes:
        path, shape, dtype: the parameter leaf.
        autodiff: manual vs ``jax.grad`` (:class:`Row`).
        fd: manual vs finite differences, or ``None`` when they were not taken.
        fd_autodiff: ``jax.grad`` vs finite differences, or ``None``.
        fd_mode: ``"coords"``, ``"directions"``, ``"skipped"`` or ``"off"``.
        kinks: finite-difference estimates skipped because their step straddled a kink.
        ok: manual agrees with both other witnesses.
        diagnosis: who disagrees with whom, in words.
    """

    path: str
    shape: tuple
    dtype: str
    autodiff: Row
    fd: Row | None
    fd_autodiff: Row | None
    fd_mode: str
    kinks: int
    ok: bool
    diagnosis: str


def diagnose(ad: Row, fd: Row | None, fd_ad: Row | None) -> str:
    """Who disagrees with whom, in words, from the three pairwise rows of one leaf."""
    if fd is None:
        return "ok" if ad.ok else "manual backward disagrees with jax.grad"
    if ad.ok and fd.ok:
        return "ok"
    if not ad.ok and fd_ad is not None and fd_ad.ok:
        return "manual backward wrong (jax.grad agrees with finite differences)"
    if not ad.ok and fd.ok:
        # jax.grad is the odd one out. Its likeliest cause: the forward evaluated at a tie or
        # a kink, where autodiff takes a subgradient (jnp.maximum splits a tie 0.5/0.5,
        # jax.grad(jnp.abs)(0.0) is 1) that need not add up to the derivative of a function
        # that is smooth there (BCE written with max(z, 0) and |z| at z = 0 was one).
        return (
            "jax.grad is the odd one out (manual and finite differences agree): likely an "
            "autodiff subgradient at a tie or kink in the forward (maximum/minimum/abs/where "
            "at equal values, e.g. an input of exactly 0); else a custom_vjp, custom_jvp or "
            "stop_gradient in the forward"
        )
    if ad.ok:
        return "manual and jax.grad agree, finite differences do not (forward not smooth?)"
    return "all three disagree"


def witness_row_dict(r: ModelRow) -> dict:
    """A JSON-ready :class:`ModelRow`."""
    return {
        "path": r.path,
        "shape": list(r.shape),
        "dtype": r.dtype,
        "ok": r.ok,
        "diagnosis": r.diagnosis,
        "fd_mode": r.fd_mode,
        "kinks": r.kinks,
        "autodiff": row_dict(r.autodiff),
        "fd": row_dict(r.fd),
        "fd_autodiff": row_dict(r.fd_autodiff),
    }


def witness_table(title: str, rows: Sequence[ModelRow], manual: str = "manual"):
    """The table of a three-witness check: one line per :class:`ModelRow`."""
    table = make_table(
        title,
        [
            "leaf",
            "shape",
            f"{manual} vs autodiff\nabs / rel",
            "worst",
            f"{manual} vs FD\nabs / rel",
            "FD",
            "kinks",
            "result",
        ],
    )
    for r in rows:
        fd = "-" if r.fd is None else f"{fmt_num(r.fd.max_abs_err)} / {fmt_num(r.fd.max_rel_err)}"
        add_row(
            table,
            r.path,
            fmt_shape(r.shape),
            f"{fmt_num(r.autodiff.max_abs_err)} / {fmt_num(r.autodiff.max_rel_err)}",
            str(r.autodiff.worst_index),
            fd,
            r.fd_mode,
            str(r.kinks),
            "ok" if r.ok else "FAIL: " + r.diagnosis,
        )
    return table


# ---------------------------------------------------------------------------------------------
# rich tables rendered to plain text (rich is imported when a table is drawn)


def make_table(title: str, columns: list[str]):
    """A rich table; text in brackets (paths, "[autodiff rule]") is shown as is, not markup."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title), title_justify="left")
    for c in columns:
        table.add_column(c, overflow="fold")
    return table


def add_row(table, *cells) -> None:
    """``table.add_row`` with every cell shown as plain text (no rich markup)."""
    from rich.markup import escape

    table.add_row(*(escape(str(c)) for c in cells))


def render_table(table, footer: str, width: int = 120) -> str:
    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, force_terminal=False).print(table)
    return buf.getvalue() + footer


def fmt_num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2e}"


def fmt_shape(shape: tuple) -> str:
    return str(tuple(shape))


def row_status(r: Row) -> str:
    if r.ok:
        return "ok" + (f" ({r.n_skipped} kinks skipped)" if r.n_skipped else "")
    detail = r.note or f"{r.n_fail} of {math.prod(r.shape)} bad"
    return f"FAIL ({detail})"
