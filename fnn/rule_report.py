"""The report of a rule check (:func:`fnn.check.check_vjp` and kin) and how its rows are made.

A rule check stacks the rule's, autodiff's and the finite differences' results over several
random cotangents (tangents) into ``[k, *shape]`` arrays and compares them leaf by leaf with
:func:`fnn.compare.compare_leaf`; a row's ``worst_index`` therefore starts with the number of
the cotangent that showed the worst error.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from fnn.compare import (
    BANDS,
    ModelRow,
    Row,
    add_row,
    compare_leaf,
    default_tolerances,
    diagnose,
    fmt_num,
    make_table,
    render_table,
    witness_row_dict,
    witness_table,
)
from fnn.fd import FD_TOLERANCES


class LayerFinding(NamedTuple):
    """One sub-layer's backward checked alone, at its real input (:func:`fnn.check.locate`).

    Attributes:
        path: the sub-layer's path (``""`` the whole layer, ``"[2]"``, ``"[1][0]"``), or
            ``"loss"`` for a model's loss gradient.
        name: the layer's name (``"dense(4)"``, ``"relu"``).
        rule: ``"manual"`` or ``"autodiff"`` (``fnn.layers.custom`` without a backward).
        ok: its backward agrees with ``jax.vjp`` of its forward.
        max_rel_err: the worst relative error of its ``dparams`` and ``dx``.
        failed: its wrong outputs (``"params['w']"``, ``"x"``).
        culprit: it is wrong while every layer inside it is right: the bug is here.
    """

    path: str
    name: str
    rule: str
    ok: bool
    max_rel_err: float
    failed: tuple[str, ...]
    culprit: bool = False

    def describe(self) -> str:
        """``"layer [2] dense(4): params['w'] wrong"``, in words."""
        where = "the loss gradient" if self.path == "loss" else f"layer {self.path or '(top)'}"
        what = ", ".join(self.failed) or "output"
        return f"{where} {self.name}: backward wrong in {what}"


def culprit_line(findings) -> str:
    """The verdict's sentence naming the culprits in backward-sweep order, or ``""``."""
    bad = [f for f in findings if f.culprit]
    if not bad:
        return ""
    return "first wrong backward (in sweep order): " + "; ".join(f.describe() for f in bad)


def all_ok(rows, findings) -> bool:
    """Every leaf agrees with every witness, and every sub-layer's backward with ``jax.vjp``."""
    return all(r.ok for r in rows) and all(f.ok for f in findings)


def failed_paths(rows) -> list[str]:
    """Paths of the failing leaves."""
    return [r.path for r in rows if not r.ok]


def worst(rows, witness: str, err: str) -> float | None:
    """The largest ``err`` (``"max_abs_err"``/``"max_rel_err"``) of the rule against
    ``witness`` (``"autodiff"``/``"fd"``) over ``rows``; ``None`` when no row has that
    witness, ``0.0`` for no rows at all."""
    found = [getattr(getattr(r, witness), err) for r in rows if getattr(r, witness) is not None]
    if found:
        return max(found)
    return 0.0 if not rows else None


def failure_text(rows, findings) -> str:
    """The FAIL verdict: the disagreeing leaves with their diagnoses, then the culprits."""
    bad = [r for r in rows if not r.ok]
    text = f"FAIL: {len(bad)} of {len(rows)} leaves disagree: " + "; ".join(
        f"{r.path}: {r.diagnosis}" for r in bad
    )
    where = culprit_line(findings)
    return f"{text}\n{where}" if where else text


# The summary both report types give (:class:`RuleReport` and :class:`fnn.check.ModelReport`
# hold ``rows``, ``layers`` and ``fd_dtype``), as properties each class body takes by name.
report_ok = property(
    lambda self: all_ok(self.rows, self.layers),
    doc="Whether every leaf agrees with every witness (and every sub-layer's backward with "
    "``jax.vjp`` of its forward).",
)
report_failed = property(lambda self: failed_paths(self.rows), doc="Paths of the failing leaves.")
report_max_abs_err = property(
    lambda self: worst(self.rows, "autodiff", "max_abs_err"), doc="The rule against autodiff."
)
report_max_rel_err = property(
    lambda self: worst(self.rows, "autodiff", "max_rel_err"), doc="The rule against autodiff."
)
report_fd_max_abs_err = property(
    lambda self: None if self.fd_dtype is None else worst(self.rows, "fd", "max_abs_err"),
    doc="The rule against finite differences (``None`` when they were not taken).",
)
report_fd_max_rel_err = property(
    lambda self: None if self.fd_dtype is None else worst(self.rows, "fd", "max_rel_err"),
    doc="The rule against finite differences (``None`` when they were not taken).",
)


def layer_table(findings):
    """The per-layer table of a localisation."""
    table = make_table(
        "each layer's backward alone at its real input, vs jax.vjp of its forward",
        ["layer", "name", "rule", "max rel err", "result"],
    )
    for f in findings:
        result = "ok" if f.ok else ("FAIL (the bug is here)" if f.culprit else "FAIL (inside)")
        rule = "autodiff rule" if f.rule == "autodiff" else f.rule
        add_row(table, f.path or "(top)", f.name, rule, fmt_num(f.max_rel_err), result)
    return table


class RuleReport(NamedTuple):
    """The result of :func:`check_vjp`, :func:`check_custom_vjp`, :func:`check_custom_jvp`
    and :func:`fnn.check.check_layer`: the report family of :func:`fnn.check.check_model`.

    Attributes:
        rows: one :class:`fnn.compare.ModelRow` per checked leaf: every argument leaf for a
            VJP, every output leaf for a JVP.
        kind: ``"vjp"``, ``"custom_vjp"``, ``"custom_jvp"`` or ``"layer"``.
        name: the function's (or layer's) name.
        dtype: the primals' dtype.
        fd_dtype: the finite differences' dtype, ``None`` when they were not taken.
        samples: how many random cotangents (tangents) were drawn.
        transforms: ``((name, verdict), ...)`` for ``grad``, ``vmap(grad)``, ``jvp``.
        note: anything else worth knowing (a witness that could not be asked, and why).
        layers: for a composite layer, every sub-layer checked alone
            (:class:`LayerFinding`), culprits marked; empty otherwise.
    """

    rows: tuple[ModelRow, ...]
    kind: str
    name: str
    dtype: str
    fd_dtype: str | None
    samples: int
    transforms: tuple[tuple[str, str], ...] = ()
    note: str = ""
    layers: tuple[LayerFinding, ...] = ()

    ok = report_ok
    failed = report_failed
    max_abs_err = report_max_abs_err
    max_rel_err = report_max_rel_err
    fd_max_rel_err = report_fd_max_rel_err

    @property
    def kinks(self) -> int:
        """Finite-difference estimates left out because they straddled a kink."""
        return sum(r.kinks for r in self.rows)

    @property
    def verdict(self) -> str:
        if self.ok:
            fd = (
                ""
                if self.fd_dtype is None
                else f", finite differences {fmt_num(self.fd_max_rel_err)}"
            )
            return (
                f"PASS: the {self.kind} rule agrees on all {len(self.rows)} leaves over "
                f"{self.samples} random {self._direction}s (max rel err: autodiff "
                f"{fmt_num(self.max_rel_err)}{fd})"
            )
        return failure_text(self.rows, self.layers)

    @property
    def _direction(self) -> str:
        return "tangent" if self.kind == "custom_jvp" else "cotangent"

    def as_dict(self) -> dict:
        """JSON-ready: ``ok``, ``verdict``, errors, ``transforms``, ``leaves``."""
        return {
            "ok": self.ok,
            "verdict": self.verdict,
            "kind": self.kind,
            "name": self.name,
            "dtype": self.dtype,
            "fd_dtype": self.fd_dtype,
            "samples": self.samples,
            "max_abs_err": self.max_abs_err,
            "max_rel_err": self.max_rel_err,
            "fd_max_rel_err": self.fd_max_rel_err,
            "kinks": self.kinks,
            "transforms": dict(self.transforms),
            "note": self.note,
            "leaves": [witness_row_dict(r) for r in self.rows],
            "layers": [f._asdict() for f in self.layers],
        }

    def __str__(self) -> str:
        title = (
            f"{self.kind} check of {self.name}: rule vs autodiff vs finite differences "
            f"({self.dtype}, {self.samples} random {self._direction}s)"
        )
        table = witness_table(title, self.rows, manual="rule")
        lines = [self.verdict]
        if self.transforms:
            lines.append("transforms: " + "; ".join(f"{k}: {v}" for k, v in self.transforms))
        if self.kinks:
            lines.append(
                f"{self.kinks} finite-difference estimates straddled a kink (left and right "
                "slopes differ) and were left out"
            )
        if self.note:
            lines.append(self.note)
        text = render_table(table, "\n".join(lines) + f"\n{BANDS}")
        if self.layers:
            text += "\n" + render_table(layer_table(self.layers), "")
        return text


# ---------------------------------------------------------------------------------------------
# rows


def structure_problem(got, want) -> str:
    """Why leaf ``got`` cannot be the cotangent (tangent) of ``want``, or ``""``."""
    if got is None:
        return "missing from the rule's output"
    gs, ws = tuple(np.shape(got)), tuple(np.shape(want))
    if gs != ws:
        return f"shape {gs}, expected {ws}"
    gd, wd = jnp.result_type(got), jnp.result_type(want)
    if gd != wd:
        return f"dtype {gd}, expected {wd}"
    return ""


def bad_row(path: str, want, note: str) -> ModelRow:
    """A failing row for a leaf whose rule output has the wrong structure, shape or dtype."""
    shape, dtype = tuple(np.shape(want)), str(jnp.result_type(want))
    rtol, _ = default_tolerances(jnp.result_type(want))
    row = Row(
        path, shape, dtype, math.inf, math.inf, (), math.prod(shape), 0, rtol, 0.0, False, note
    )
    return ModelRow(path, shape, dtype, row, None, None, "off", 0, False, f"rule output {note}")


def stacked_row(path, manual, auto, fd=None, fd_tol=None, skip=None, mode="coords") -> ModelRow:
    """One :class:`ModelRow` from ``[k, ...]`` stacks over the random cotangents.

    Args:
        path: the leaf's name.
        manual, auto: ``[k, *shape]`` the rule's and autodiff's results (``auto`` may be
            ``None`` when autodiff could not be asked).
        fd: the finite-difference estimates, ``[k, *shape]`` (coords) or ``[k, p]``
            (directions), with ``manual`` and ``auto`` already projected to match.
        fd_tol: ``(rtol, atol)`` against the differences.
        skip: kink flags shaped like ``fd``.
        mode: the differences' mode.
    """
    manual = np.asarray(manual)
    shape = manual.shape[1:]
    # Where the differences found a kink the rule and autodiff may each pick a one-sided
    # derivative (relu at 0, max at a tie): both are right, so those elements are skipped too.
    kinked = skip if skip is not None and np.shape(skip) == manual.shape else None
    ad = compare_leaf(path, manual, manual if auto is None else auto, None, None, kinked)
    if auto is None:
        ad = ad._replace(note="autodiff unavailable")
    ad = ad._replace(shape=shape)
    f1 = f2 = None
    if fd is not None:
        proj_m, proj_a, est = fd
        f1 = compare_leaf(path, proj_m, est, *fd_tol, skip)._replace(shape=shape)
        if auto is not None:
            f2 = compare_leaf(path, proj_a, est, *fd_tol, skip)._replace(shape=shape)
    kinks = 0 if skip is None else int(np.sum(skip))
    ok = ad.ok and (f1 is None or f1.ok)
    diagnosis = rule_diagnosis(ad, f1, f2)
    if auto is None:
        ok = f1 is not None and f1.ok
        diagnosis = "ok (no autodiff witness)" if ok else "rule disagrees with finite differences"
    return ModelRow(path, shape, ad.dtype, ad, f1, f2, mode if fd else "off", kinks, ok, diagnosis)


def fd_tolerances(dtype, rtol, atol_default, atol) -> tuple[float, float]:
    """``(rtol, atol)`` against finite differences: :data:`fnn.fd.FD_TOLERANCES`, widened to
    the rule's own dtype tolerance when that is coarser."""
    drt, _ = default_tolerances(dtype)
    return (max(FD_TOLERANCES[0], drt) if rtol is None else rtol), (
        atol_default if atol is None else atol
    )


def tol_row(path, m, a, fd, tol, skip, mode, ad_opts) -> ModelRow:
    """:func:`stacked_row` with explicit rule-vs-autodiff tolerances."""
    row = stacked_row(path, m, a, fd, tol, skip, mode)
    if ad_opts == (None, None) or a is None:
        return row
    kinked = skip if skip is not None and np.shape(skip) == m.shape else None
    ad = compare_leaf(path, m, a, *ad_opts, kinked)._replace(shape=row.shape)
    ok = ad.ok and (row.fd is None or row.fd.ok)
    return row._replace(autodiff=ad, ok=ok, diagnosis=rule_diagnosis(ad, row.fd, row.fd_autodiff))


def rule_diagnosis(ad: Row, fd: Row | None, fd_ad: Row | None) -> str:
    """:func:`fnn.compare.diagnose` in the words of a rule check."""
    return (
        diagnose(ad, fd, fd_ad).replace("manual backward", "rule").replace("jax.grad", "autodiff")
    )
