"""Gradient verification: one namespace for every check fnn offers.

Three witnesses can give a gradient: the hand-written rule, JAX's autodiff, and central finite
differences. Each check here asks all three and says, leaf by leaf and by pytree path, who
disagrees with whom and by how much:

- :func:`check_model`: a model's hand-written reverse sweep and its loss
  (:func:`fnn.backprop.value_and_grad`) against ``jax.grad`` and finite differences; when a
  leaf fails, every layer's backward is also checked alone at its real input and the layer
  where the bug is is named (:func:`fnn.check_layers.locate`).
- :func:`check_layer`: one layer alone (:mod:`fnn.check_layers`).
- :func:`check_vjp`, :func:`check_custom_vjp`, :func:`check_custom_jvp`: any hand-written rule,
  over several random cotangents (:mod:`fnn.check_rules`).
- :func:`compare` and :func:`assert_grads_close`: two gradient pytrees side by side
  (:mod:`fnn.compare`, which documents the errors and the default tolerances).
- :func:`numerical_grad` (:mod:`fnn.fd`) and :func:`numerical_jacobian` (:mod:`fnn.jacobian`):
  the finite differences, which flag kinks on their own by comparing left and right slopes.

Kinks. relu and leaky_relu are not differentiable at 0; a finite difference whose ``+-h``
step carries a pre-activation across 0 averages two slopes and would look like a bug.
:func:`check_model` watches every kinked pre-activation (:func:`kink_pattern`), and every
finite difference compares its left and right slopes (:func:`fnn.fd.kink_mask`); such
estimates are reported as kinks and left out of the verdict.

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

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fnn import backprop, layers
from fnn import losses as _losses
from fnn.check_layers import assert_layer_ok, check_layer  # noqa: F401
from fnn.check_layers import locate as locate_layers
from fnn.check_rules import (  # noqa: F401  (re-exported: part of fnn.check's public API)
    assert_custom_jvp_ok,
    assert_custom_vjp_ok,
    assert_vjp_ok,
    check_custom_jvp,
    check_custom_vjp,
    check_vjp,
    to64,
    transform_support,
)
from fnn.compare import (  # noqa: F401  (re-exported: part of fnn.check's public API)
    BANDS,
    TOLERANCES,
    ModelRow,
    Report,
    Row,
    assert_grads_close,
    compare,
    default_tolerances,
    diagnose,
    fmt_num,
    fmt_shape,
    make_table,
    render_table,
    row_dict,
    witness_row_dict,
    witness_table,
)
from fnn.draws import away_from_kinks, draw_away_from_kinks, push_from_kinks  # noqa: F401
from fnn.fd import (  # noqa: F401  (re-exported: part of fnn.check's public API)
    FD_TOLERANCES,
    FDLeaf,
    FiniteDifferences,
    PrecisionWarning,
    kink_mask,
    numerical_grad,
)
from fnn.jacobian import Jacobian, JacobianLeaf, numerical_jacobian, numerical_jvp  # noqa: F401
from fnn.models import Model, sublayers, taps
from fnn.rule_report import (  # noqa: F401  (LayerFinding, RuleReport: fnn.check's public API)
    LayerFinding,
    RuleReport,
    failure_text,
    layer_table,
    report_failed,
    report_fd_max_abs_err,
    report_fd_max_rel_err,
    report_max_abs_err,
    report_max_rel_err,
    report_ok,
)

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


class ModelReport(NamedTuple):
    """The result of :func:`check_model`.

    Attributes:
        rows: one :class:`ModelRow` per parameter leaf.
        value: the loss at ``params``.
        dtype: the parameters' dtype.
        fd_dtype: the dtype of the finite differences (``None`` when not taken).
        note: why finite differences were skipped, if they were.
        layers: when the check failed (or ``locate=True``), the loss gradient and every
            layer's backward checked alone at its real input (:class:`LayerFinding`), in
            backward-sweep order, culprits marked.
        autodiff_rules: ``"path name"`` of every sub-layer whose rule is ``jax.vjp`` of its
            forward (:func:`fnn.layers.custom` without ``backward``), not hand-written; the
            verdict lists them, since their agreement with ``jax.grad`` proves nothing.

    ``max_abs_err``/``max_rel_err`` are manual vs ``jax.grad``; ``fd_max_abs_err`` and
    ``fd_max_rel_err`` manual vs finite differences.
    """

    rows: tuple[ModelRow, ...]
    value: float
    dtype: str
    fd_dtype: str | None
    note: str = ""
    layers: tuple[LayerFinding, ...] = ()
    autodiff_rules: tuple[str, ...] = ()

    ok = report_ok
    failed = report_failed
    max_abs_err = report_max_abs_err
    max_rel_err = report_max_rel_err
    fd_max_abs_err = report_fd_max_abs_err
    fd_max_rel_err = report_fd_max_rel_err

    @property
    def verdict(self) -> str:
        fd = (
            ""
            if self.fd_dtype is None
            else f" and finite differences (max rel {fmt_num(self.fd_max_rel_err)})"
        )
        if self.ok:
            return (
                f"PASS: the manual backward agrees with jax.grad (max rel "
                f"{fmt_num(self.max_rel_err)}){fd} on all {len(self.rows)} leaves"
            )
        return failure_text(self.rows, self.layers)

    @property
    def rules_line(self) -> str:
        """Which sub-layers use an autodiff rule (empty when every rule is hand-written)."""
        if not self.autodiff_rules:
            return ""
        return "autodiff rule (not hand-written, so not proven here): " + ", ".join(
            self.autodiff_rules
        )

    def as_dict(self) -> dict:
        """JSON-ready: ``ok``, ``max_abs_err``, ``max_rel_err``, ``fd_*``, ``leaves``,
        ``layers``."""
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
            "leaves": [witness_row_dict(r) for r in self.rows],
            "layers": [f._asdict() for f in self.layers],
            "autodiff_rules": list(self.autodiff_rules),
        }

    def __str__(self) -> str:
        table = witness_table(
            f"gradient check: manual vs jax.grad vs finite differences "
            f"({self.dtype}, loss {self.value:.6g})",
            self.rows,
        )
        extra = "".join(f"\n{t}" for t in (self.rules_line, self.note) if t)
        text = render_table(table, f"{self.verdict}{extra}\n{BANDS}")
        if self.layers:
            text += "\n" + render_table(layer_table(self.layers), "")
        return text


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
    locate: bool | None = None,
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
        locate: check every layer's backward alone at its real input and name the culprit
            (:func:`locate`); default: when a leaf fails. The loss gradient is checked too.

    Returns:
        A :class:`ModelReport`: ``.ok``, ``.verdict``, per-leaf rows, ``.layers``, ``str()``.
    """
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
        fd_res, note = _model_fd(
            model, objective, params, x, y, key, train, dtype, fd_key, eps, max_coords, directions
        )
    vs_fd = vs_fd_ad = None
    if fd_res is not None:
        vs_fd = fd_res.compare(manual, rtol=fd_rtol, atol=fd_atol, label="manual")
        vs_fd_ad = fd_res.compare(auto, rtol=fd_rtol, atol=fd_atol, label="jax.grad")
    rows = tuple(_model_rows(ad, vs_fd, vs_fd_ad, fd_res))
    found = ()
    if locate or (locate is None and not all(r.ok for r in rows)):
        out = model.apply(params, x, key=key, train=train)
        found = (
            _loss_finding(loss, out, y),
            *locate_layers(model, params, x, key=key, train=train),
        )
    return ModelReport(
        rows,
        float(value),
        "" if dtype is None else dtype.name,
        None if fd_res is None else fd_res.dtype,
        note,
        found,
        tuple(
            f"{p or 'model'} {lyr.name}"
            for p, lyr in sublayers(model).items()
            if lyr.rule == "autodiff"
        ),
    )


def _model_fd(model, objective, params, x, y, key, train, dtype, fd_key, eps, max_coords, dirs):
    """Finite differences of the loss in float64, or ``(None, why not)``."""
    if jnp.finfo(dtype).bits < 64 and not jax.config.jax_enable_x64:
        return None, (
            f"finite differences skipped: {dtype.name} is too coarse for them and "
            "float64 is off; enable x64 to get the third witness"
        )
    p64, x64, y64 = to64(params), to64(x), to64(y)
    fd_res = numerical_grad(
        lambda p: objective(p, x64, y64),
        p64,
        eps=eps,
        max_coords=max_coords,
        directions=dirs,
        key=fd_key,
        kink_fn=kink_pattern(model, x64, key=key, train=train),
    )
    return fd_res, ""


def _model_rows(ad: Report, vs_fd, vs_fd_ad, fd_res):
    for i, r in enumerate(ad.rows):
        f1 = None if vs_fd is None else vs_fd.rows[i]
        f2 = None if vs_fd_ad is None else vs_fd_ad.rows[i]
        leaf = None if fd_res is None else fd_res.leaves[i]
        yield ModelRow(
            r.path,
            r.shape,
            r.dtype,
            r,
            f1,
            f2,
            "off" if leaf is None else leaf.mode,
            0 if leaf is None else int(leaf.kinks.sum()),
            r.ok and (f1 is None or f1.ok),
            diagnose(r, f1, f2),
        )


def _loss_finding(loss, out, y) -> LayerFinding:
    """The loss's hand-written ``grad`` against ``jax.grad`` of its ``fn`` (and, when they
    disagree, finite differences: at a tie autodiff may be the odd one out), as a finding."""
    manual = loss.grad(out, y)
    rep = compare(manual, jax.grad(loss.fn)(out, y))
    ok = rep.ok
    if not ok and jax.config.jax_enable_x64:
        y64 = to64(y)
        ok = numerical_grad(lambda pred: loss.fn(pred, y64), to64(out)).compare(manual).ok
    bad = () if ok else ("dpred",)
    return LayerFinding("loss", loss.name, "manual", ok, rep.max_rel_err, bad, not ok)
