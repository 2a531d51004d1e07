"""Gradient verification: leaf-by-leaf comparison, finite differences, the three-way check.

Three witnesses can give the gradient of a model's loss: the hand-written reverse sweep
(:func:`fnn.backprop.value_and_grad`), ``jax.grad`` of the forward, and central finite
differences. :func:`check_model` asks all three and says, leaf by leaf and by pytree path
(``jax.tree_util.keystr``, e.g. ``[2]['w']``), who disagrees with whom and by how much.

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

Kinks. relu and leaky_relu are not differentiable at 0; a finite difference whose ``+-h``
step carries a pre-activation across 0 averages two slopes and would look like a bug.
:func:`check_model` watches every kinked pre-activation (:func:`kink_pattern`) during the
differences and reports such estimates as kinks, excluded from the verdict.

How to read the bands (float64): relative error <= 1e-7 is round-off, the gradients agree;
1e-7 to 1e-2 is suspicious (look at the worst index: a kink, an element near zero, a small
bug); above 1e-2 the gradient is almost surely wrong. float32 bands are about 1e4 times wider.

Example:
    >>> import jax, jax.numpy as jnp
    >>> import fnn
    >>> from fnn import check
    >>> model = fnn.mlp([3, 4, 2], activation="tanh", dtype=jnp.float64)
    >>> params = model.init(jax.random.key(0))
    >>> x = jax.random.normal(jax.random.key(1), (5, 3), jnp.float64)
    >>> report = check.check_model(model, "softmax_cross_entropy", params, x, jnp.arange(5) % 2)
    >>> report.ok, report.max_rel_err < 1e-10
    (True, True)
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fnn import layers
from fnn import losses as _losses
from fnn.fd import (  # noqa: F401  (re-exported: part of fnn.check's public API)
    FD_TOLERANCES,
    FDLeaf,
    FiniteDifferences,
    PrecisionWarning,
    numerical_grad,
)
from fnn.models import Model, sublayers, taps

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


def _scale(*arrays) -> float:
    """The largest finite magnitude in ``arrays`` (0 if none)."""
    return max(
        (float(np.max(np.abs(v), where=np.isfinite(v), initial=0.0)) for v in arrays), default=0.0
    )


def _compare_leaf(path, a, b, rtol, atol, skip=None) -> Row:
    a, b = np.asarray(a), np.asarray(b)
    drt, frac = default_tolerances(a.dtype, b.dtype)
    rtol = drt if rtol is None else float(rtol)
    atol = frac * _scale(a, b) if atol is None else float(atol)
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
            "leaves": [_row_dict(r) for r in self.rows],
        }

    def __str__(self) -> str:
        table = _table(
            f"gradients: {self.labels[0]} vs {self.labels[1]}",
            ["leaf", "shape", "dtype", "max abs err", "max rel err", "worst index", "result"],
        )
        for r in self.rows:
            table.add_row(
                r.path,
                _shape(r.shape),
                r.dtype,
                _num(r.max_abs_err),
                _num(r.max_rel_err),
                str(r.worst_index),
                _status(r),
            )
        verdict = "PASS" if self.ok else f"FAIL: {', '.join(self.failed)}"
        return _render(
            table,
            f"{verdict} (max abs err {_num(self.max_abs_err)}, "
            f"max rel err {_num(self.max_rel_err)})\n{BANDS}",
        )


def _row_dict(r: Row | None) -> dict | None:
    if r is None:
        return None
    d = r._asdict()
    d["shape"], d["worst_index"] = list(r.shape), list(r.worst_index)
    return d


def _leaves_by_path(tree) -> dict[str, Any]:
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
    la, lb = _leaves_by_path(a), _leaves_by_path(b)
    if list(la) != list(lb):
        only_a = [p for p in la if p not in lb] or "none"
        only_b = [p for p in lb if p not in la] or "none"
        raise ValueError(
            f"compare: the two trees differ in structure; leaves only in {labels[0]}: {only_a}; "
            f"only in {labels[1]}: {only_b}; both must have the structure of params"
        )
    rows = tuple(_compare_leaf(p, la[p], lb[p], rtol, atol) for p in la)
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
# the three-way check of a model


def kink_pattern(model: Model, x, *, key=None, train: bool = False) -> Callable | None:
    """Build ``kink_fn(params)`` for :func:`numerical_grad` from a model's kinked activations.

    For every activation layer whose activation has ``kinks`` (relu, leaky_relu), the pattern
    holds the side of each kink its pre-activation (the layer's input, from
    :func:`fnn.models.taps`) lies on, ``sum_k (pre > k)`` (``>`` because fnn's derivative at a
    kink is the left-hand one). Returns ``None`` when the model has no kinks.
    """
    kinked = {
        path: act.kinks
        for path, lyr in sublayers(model).items()
        if (act := layers.info(lyr, "activation")) is not None and act.kinks
    }
    if not kinked:
        return None

    def kink_fn(params):
        t = taps(model, params, x, key=key, train=train)
        return [sum((t[p]["in"] > k).astype(jnp.int8) for k in ks) for p, ks in kinked.items()]

    return kink_fn


class ModelRow(NamedTuple):
    """One leaf of a :class:`ModelReport`.

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


def _diagnose(ad: Row, fd: Row | None, fd_ad: Row | None) -> str:
    if fd is None:
        return "ok" if ad.ok else "manual backward disagrees with jax.grad"
    if ad.ok and fd.ok:
        return "ok"
    if not ad.ok and fd_ad.ok:
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


class ModelReport(NamedTuple):
    """The result of :func:`check_model`.

    Attributes:
        rows: one :class:`ModelRow` per parameter leaf.
        value: the loss at ``params``.
        dtype: the parameters' dtype.
        fd_dtype: the dtype of the finite differences (``None`` when not taken).
        note: why finite differences were skipped, if they were.

    ``max_abs_err``/``max_rel_err`` are manual vs ``jax.grad``; ``fd_max_abs_err`` and
    ``fd_max_rel_err`` manual vs finite differences.
    """

    rows: tuple[ModelRow, ...]
    value: float
    dtype: str
    fd_dtype: str | None
    note: str = ""

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def failed(self) -> list[str]:
        return [r.path for r in self.rows if not r.ok]

    @property
    def max_abs_err(self) -> float:
        return max((r.autodiff.max_abs_err for r in self.rows), default=0.0)

    @property
    def max_rel_err(self) -> float:
        return max((r.autodiff.max_rel_err for r in self.rows), default=0.0)

    @property
    def fd_max_abs_err(self) -> float | None:
        return (
            None
            if self.fd_dtype is None
            else max((r.fd.max_abs_err for r in self.rows), default=0.0)
        )

    @property
    def fd_max_rel_err(self) -> float | None:
        return (
            None
            if self.fd_dtype is None
            else max((r.fd.max_rel_err for r in self.rows), default=0.0)
        )

    @property
    def verdict(self) -> str:
        fd = (
            ""
            if self.fd_dtype is None
            else f" and finite differences (max rel {_num(self.fd_max_rel_err)})"
        )
        if self.ok:
            return (
                f"PASS: the manual backward agrees with jax.grad (max rel "
                f"{_num(self.max_rel_err)}){fd} on all {len(self.rows)} leaves"
            )
        bad = [r for r in self.rows if not r.ok]
        return f"FAIL: {len(bad)} of {len(self.rows)} leaves disagree: " + "; ".join(
            f"{r.path}: {r.diagnosis}" for r in bad
        )

    def as_dict(self) -> dict:
        """JSON-ready: ``ok``, ``max_abs_err``, ``max_rel_err``, ``fd_*``, ``leaves``."""
        return {
            "ok": self.ok,
            "verdict": self.verdict,
            "loss": self.value,
            "dtype": self.dtype,
            "fd_dtype": self.fd_dtype,
            "max_abs_err": self.max_abs_err,
            "max_rel_err": self.max_rel_err,
            "fd_max_abs_err": self.fd_max_abs_err,
            "fd_max_rel_err": self.fd_max_rel_err,
            "note": self.note,
            "leaves": [
                {
                    "path": r.path,
                    "shape": list(r.shape),
                    "dtype": r.dtype,
                    "ok": r.ok,
                    "diagnosis": r.diagnosis,
                    "fd_mode": r.fd_mode,
                    "kinks": r.kinks,
                    "autodiff": _row_dict(r.autodiff),
                    "fd": _row_dict(r.fd),
                    "fd_autodiff": _row_dict(r.fd_autodiff),
                }
                for r in self.rows
            ],
        }

    def __str__(self) -> str:
        table = _table(
            f"gradient check: manual vs jax.grad vs finite differences "
            f"({self.dtype}, loss {self.value:.6g})",
            [
                "leaf",
                "shape",
                "manual vs autodiff\nabs / rel",
                "worst",
                "manual vs FD\nabs / rel",
                "FD",
                "kinks",
                "result",
            ],
        )
        for r in self.rows:
            fd = "-" if r.fd is None else f"{_num(r.fd.max_abs_err)} / {_num(r.fd.max_rel_err)}"
            table.add_row(
                r.path,
                _shape(r.shape),
                f"{_num(r.autodiff.max_abs_err)} / {_num(r.autodiff.max_rel_err)}",
                str(r.autodiff.worst_index),
                fd,
                r.fd_mode,
                str(r.kinks),
                "ok" if r.ok else "FAIL: " + r.diagnosis,
            )
        extra = f"\n{self.note}" if self.note else ""
        return _render(table, f"{self.verdict}{extra}\n{BANDS}")


def check_model(
    model: Model,
    loss,
    params,
    x,
    y,
    *,
    key=None,
    train: bool | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    fd: bool = True,
    fd_rtol: float | None = None,
    fd_atol: float | None = None,
    eps: float | None = None,
    max_coords: int = 256,
    directions: int = 8,
    fd_key=None,
) -> ModelReport:
    """Check a model's hand-written backward against ``jax.grad`` and finite differences.

    Args:
        model: a :class:`fnn.models.Model`.
        loss: a loss name or :class:`fnn.losses.Loss` (its ``grad`` is part of what is checked).
        params, x, y: where to check; ``x: [batch, *model.in_shape]``.
        key, train: forward key (dropout) and mode, as for
            :func:`fnn.backprop.value_and_grad`; the same key drives all three witnesses.
        rtol, atol: manual vs ``jax.grad`` tolerances (default :data:`TOLERANCES`).
        fd: take finite differences. They run in float64 (on a float64 copy of ``params``,
            ``x`` and float ``y`` when those are coarser), which needs x64 enabled; without it
            they are skipped for float32 models and the report says why.
        fd_rtol, fd_atol: tolerances against the differences (default :data:`FD_TOLERANCES`).
        eps, max_coords, directions, fd_key: passed to :func:`numerical_grad`.

    Returns:
        A :class:`ModelReport`: ``.ok``, ``.verdict``, per-leaf rows, ``str()`` table.
    """
    from fnn import backprop  # backprop imports models; keep module import order simple

    loss = _losses.get(loss)
    train = key is not None if train is None else bool(train)
    value, manual = backprop.value_and_grad(model, loss)(params, x, y, key=key, train=train)

    def objective(p, xx, yy):
        return loss.fn(model.apply(p, xx, key=key, train=train), yy)

    auto = jax.grad(objective)(params, x, y)
    ad = compare(manual, auto, rtol=rtol, atol=atol, labels=("manual", "jax.grad"))
    dtype = jnp.dtype(jax.tree.leaves(params)[0].dtype) if jax.tree.leaves(params) else None
    fd_res, note = None, ""
    if fd and dtype is not None:
        if jnp.finfo(dtype).bits >= 64:
            p64, x64, y64 = params, x, y
        elif jax.config.jax_enable_x64:
            p64, x64, y64 = (_to64(params), _to64(x), _to64(y))
        else:
            note = (
                f"finite differences skipped: {dtype.name} is too coarse for them and "
                "float64 is off; enable x64 to get the third witness"
            )
        if not note:
            fd_res = numerical_grad(
                lambda p: objective(p, x64, y64),
                p64,
                eps=eps,
                max_coords=max_coords,
                directions=directions,
                key=fd_key,
                kink_fn=kink_pattern(model, x64, key=key, train=train),
            )
    vs_fd = vs_fd_ad = None
    if fd_res is not None:
        vs_fd = fd_res.compare(manual, rtol=fd_rtol, atol=fd_atol, label="manual")
        vs_fd_ad = fd_res.compare(auto, rtol=fd_rtol, atol=fd_atol, label="jax.grad")
    rows = []
    for i, r in enumerate(ad.rows):
        f1 = None if vs_fd is None else vs_fd.rows[i]
        f2 = None if vs_fd_ad is None else vs_fd_ad.rows[i]
        leaf = None if fd_res is None else fd_res.leaves[i]
        ok = r.ok and (f1 is None or f1.ok)
        rows.append(
            ModelRow(
                r.path,
                r.shape,
                r.dtype,
                r,
                f1,
                f2,
                "off" if leaf is None else leaf.mode,
                0 if leaf is None else int(leaf.kinks.sum()),
                ok,
                _diagnose(r, f1, f2),
            )
        )
    return ModelReport(
        tuple(rows),
        float(value),
        "" if dtype is None else dtype.name,
        None if fd_res is None else fd_res.dtype,
        note,
    )


def _to64(tree):
    def cast(v):
        v = jnp.asarray(v)
        return v.astype(jnp.float64) if jnp.issubdtype(v.dtype, jnp.floating) else v

    return jax.tree.map(cast, tree)


# ---------------------------------------------------------------------------------------------
# rich tables rendered to plain text


def _table(title: str, columns: list[str]):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c, overflow="fold")
    return table


def _render(table, footer: str, width: int = 120) -> str:
    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, force_terminal=False).print(table)
    return buf.getvalue() + footer


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2e}"


def _shape(shape: tuple) -> str:
    return str(tuple(shape))


def _status(r: Row) -> str:
    if r.ok:
        return "ok" + (f" ({r.n_skipped} kinks skipped)" if r.n_skipped else "")
    detail = r.note or f"{r.n_fail} of {math.prod(r.shape)} bad"
    return f"FAIL ({detail})"
