"""Reference battery: every activation and loss against a 50-digit mpmath truth.

For every registered activation (``fn``, ``vjp``, ``vjp_from_output`` and ``jax.grad`` of
``fn``) and every loss (``fn``, ``grad`` and ``jax.grad`` of ``fn``; softmax cross-entropy with
integer and one-hot targets) the battery evaluates fnn on a grid spanning +-1000 in float32 and
float64 and compares with the truth computed by mpmath at 50 significant digits. The criterion at
every point away from a declared kink is

    error <= max(8 ulp * |truth|, 4 * error of the jax.nn / optax counterpart, smallest normal)

(ulp = the dtype's eps), and NaN/inf exactly where the truth has them. At a declared kink
(``Activation.kinks``) every derivative must take the kink-side value of the table in
:mod:`fnn.activations`: the left-hand limit. XLA on CPU flushes denormals to zero, so an input
within the smallest normal of a kink may also land on the kink's side value.

The truths are written in forms that do not cancel at 50 digits (e.g. softmax-CE as
``log1p(sum_{j != label} exp(x_j - x_label))``), so that they are exact to far below any float
ulp even at +-1000. They are computed once per module (``functools.cache``). Running this file
as a script prints the worst error in ulp per primitive (the table in the module docstrings).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import optax
import pytest

from fnn import activations, losses

DTYPES = (np.float32, np.float64)
MAGNITUDES = (1e-30, 1e-8, 1, 9, 15, 17, 20, 36, 40, 88, 89, 709, 710, 1000)
DY = (0.7, -0.3, 0.45)  # cotangent row for softmax / log_softmax (elementwise ones use 1);
# not powers of two, which would hand the counterparts exact cancellations by luck
BCE_TARGETS = (0.0, 1.0)
MSE_TARGETS = (0.0, 1.0, -9.0)
SCE_LAST = 1.0  # third logit of every softmax row: rows are (g_i, g_j, 1)


def grid(dtype) -> np.ndarray:
    """0, +-the smallest denormal, and +-each magnitude, rounded to ``dtype``."""
    den = float(np.finfo(dtype).smallest_subnormal)
    vals = [0.0, den, -den] + [s * m for m in MAGNITUDES for s in (1.0, -1.0)]
    return np.array(vals, dtype)


def rows(dtype) -> np.ndarray:
    """Softmax rows ``[g_i, g_j, 1]`` for every pair of grid values: ``[n * n, 3]``."""
    g = grid(dtype)
    a, b = np.meshgrid(g, g, indexing="ij")
    return np.stack([a.ravel(), b.ravel(), np.full(a.size, SCE_LAST, dtype)], axis=1)


# ---------------------------------------------------------------------------------------------
# 50-digit truths. Each takes mpf inputs; derivatives at a kink take the left-hand value.

mp = mpmath.mp


def _sig(x):
    return 1 / (1 + mpmath.exp(-x))


def _phi_cdf(x):
    return mpmath.erfc(-x / mpmath.sqrt(2)) / 2


def _gelu_tanh(x):
    """gelu(approximate=True): ``x (1 + tanh(u)) / 2 = x s(2u)`` (no cancellation at 50
    digits either), derivative ``s(2u) + x 2 s(2u) s(-2u) u'``."""
    c = mpmath.sqrt(2 / mpmath.pi)
    u = c * (x + mpmath.mpf("0.044715") * x**3)
    du = c * (1 + 3 * mpmath.mpf("0.044715") * x**2)
    return x * _sig(2 * u), _sig(2 * u) + x * 2 * _sig(2 * u) * _sig(-2 * u) * du


def _act_truth(name, s, x):
    """(f(x), f'(x)) for an elementwise activation with settings ``s``."""
    pos = x > 0
    if name == "identity":
        return x, mpmath.mpf(1)
    if name == "sigmoid":
        return _sig(x), _sig(x) * _sig(-x)
    if name == "tanh":
        return mpmath.tanh(x), 1 / mpmath.cosh(x) ** 2
    if name == "relu":
        return (x if pos else mpmath.mpf(0)), mpmath.mpf(1 if pos else 0)
    if name == "leaky_relu":
        a = mpmath.mpf(s.get("negative_slope", 0.01))
        return (x if pos else a * x), (mpmath.mpf(1) if pos else a)
    if name == "elu":
        a = mpmath.mpf(s.get("alpha", 1.0))
        return (x if pos else a * mpmath.expm1(x)), (mpmath.mpf(1) if pos else a * mpmath.exp(x))
    if name == "softplus":
        return mpmath.log1p(mpmath.exp(x)), _sig(x)
    if name == "silu":
        return x * _sig(x), _sig(x) * (1 + x * _sig(-x))
    if name == "gelu":
        if s.get("approximate", False):
            return _gelu_tanh(x)
        pdf = mpmath.exp(-(x**2) / 2) / mpmath.sqrt(2 * mpmath.pi)
        return x * _phi_cdf(x), _phi_cdf(x) + x * pdf
    raise KeyError(name)


def _softmax_truth(row, dy):
    """softmax, log_softmax and their VJPs for ``dy``, each a list over the row."""
    n = len(row)
    # others[i] = sum_{j != i} exp(x_j - x_i): no cancellation at any scale.
    others = [
        mpmath.fsum(mpmath.exp(row[j] - row[i]) for j in range(n) if j != i) for i in range(n)
    ]
    y = [1 / (1 + o) for o in others]
    lsm = [-mpmath.log1p(o) for o in others]
    sm_vjp = [y[i] * mpmath.fsum((dy[i] - dy[j]) * y[j] for j in range(n)) for i in range(n)]
    lsm_vjp = []
    for i in range(n):
        rest_y = mpmath.fsum(y[j] for j in range(n) if j != i)  # 1 - y_i without cancelling
        rest_dy = mpmath.fsum(dy[j] for j in range(n) if j != i)
        lsm_vjp.append(dy[i] * rest_y - y[i] * rest_dy)
    return y, lsm, sm_vjp, lsm_vjp


def _loss_truth(name, pred, target):
    """(loss, dloss/dpred) of mse or BCE for one example; ``pred``, ``target``: [mpf]."""
    if name == "mse":
        (p,), (t,) = pred, target
        return (p - t) ** 2, [2 * (p - t)]
    if name == "binary_cross_entropy":
        (z,), (t,) = pred, target
        if z > 0:  # z (1 - t) + log1p(exp(-z)); grad (1 - t) - s(-z)
            return z * (1 - t) + mpmath.log1p(mpmath.exp(-z)), [(1 - t) - _sig(-z)]
        return -z * t + mpmath.log1p(mpmath.exp(z)), [_sig(z) - t]
    raise KeyError(name)


def _mpf(v):
    return mpmath.mpf(float(v))


def _dd(values) -> tuple[np.ndarray, np.ndarray]:
    """mpf values to a float64 double-double ``hi + lo`` (exact far below float64's ulp)."""
    hi = np.array([float(v) for v in values], np.float64)
    lo = np.array(
        [
            float(v - mpmath.mpf(h)) if np.isfinite(h) else 0.0
            for v, h in zip(values, hi, strict=True)
        ],
        np.float64,
    )
    return hi, lo


# ---------------------------------------------------------------------------------------------
# Cases: every registered activation with default settings, plus settings that move a kink.

VARIANTS = (
    ("leaky_relu", {"negative_slope": 0.2}),
    ("elu", {"alpha": 0.7}),
    ("gelu", {"approximate": True}),
)
ACT_CASES = [(n, {}) for n in activations.NAMES] + [v for v in VARIANTS]
ACT_IDS = [n + "".join(f"-{k}={v}" for k, v in s.items()) for n, s in ACT_CASES]
ACT_QUANTITIES = ("fn", "vjp", "vjp_from_output", "jax.grad")
REF_ACT = {
    "identity": lambda x, **s: x,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "leaky_relu": jax.nn.leaky_relu,
    "elu": jax.nn.elu,
    "softplus": jax.nn.softplus,
    "silu": jax.nn.silu,
    "gelu": jax.nn.gelu,
    "softmax": jax.nn.softmax,
    "log_softmax": jax.nn.log_softmax,
}
_SKW = {"softmax": {"axis": -1}, "log_softmax": {"axis": -1}}


def _inputs(act, dtype):
    """``(x, dy)``: the grid as a column for elementwise activations, softmax rows otherwise."""
    if act.elementwise:
        x = grid(dtype)
        return x, np.ones_like(x)
    x = rows(dtype)
    return x, np.broadcast_to(np.array(DY, dtype), x.shape)


@functools.cache
def act_truth(name, settings, dtype):
    """``{"fn": (hi, lo), "d": (hi, lo), "d_left": (hi, lo)}`` over the case's inputs."""
    s = dict(settings)
    act = activations.get(name, **s)
    x, _ = _inputs(act, dtype)
    with mpmath.workdps(50):
        if act.elementwise:
            pairs = [_act_truth(name, s, _mpf(v)) for v in x]
            fx, dx = [p[0] for p in pairs], [p[1] for p in pairs]
            left = [_act_truth(name, s, mpmath.mpf(k) - mpmath.mpf("1e-40"))[1] for k in act.kinks]
            d_left = [left[0] if left else d for d in dx]
        else:
            dy = [_mpf(d) for d in np.array(DY, dtype)]
            out = [_softmax_truth([_mpf(v) for v in r], dy) for r in x]
            which = 0 if name == "softmax" else 1
            fx = [v for o in out for v in o[which]]
            dx = [v for o in out for v in o[2 + which]]
            d_left = dx
        return {"fn": _dd(fx), "d": _dd(dx), "d_left": _dd(d_left)}


@functools.cache
def act_values(name, settings, dtype, ref=False) -> dict[str, np.ndarray]:
    """fnn's (or the jax.nn counterpart's) values of every quantity, in one jitted program."""
    s = dict(settings)
    act = activations.get(name, **s)
    fn = functools.partial(REF_ACT[name], **{**_SKW.get(name, {}), **s}) if ref else act.fn

    def run(x, dy):
        out = {"fn": fn(x), "jax.grad": jax.vjp(fn, x)[1](dy)[0]}
        if not ref:
            out["vjp"] = act.vjp(x, dy)
            if act.vjp_from_output is not None:
                out["vjp_from_output"] = act.vjp_from_output(act.fn(x), dy)
        return out

    out = jax.jit(run)(*(jnp.asarray(a) for a in _inputs(act, dtype)))
    for q, v in out.items():
        assert v.dtype == dtype, (name, q, v.dtype)
    return {q: np.asarray(v).ravel() for q, v in out.items()}


# ---------------------------------------------------------------------------------------------
# Losses: one example per vmapped call, so every point has its own truth.

LOSS_CASES = (
    [(n, False) for n in losses.NAMES]
    + [(n, True) for n in losses.NAMES if n == "softmax_cross_entropy"]
    + [("binary_cross_entropy-int", False)]
)
LOSS_IDS = [n + ("-onehot" if o else "") for n, o in LOSS_CASES]
LOSS_QUANTITIES = ("fn", "grad", "jax.grad")


def loss_inputs(name, onehot, dtype):
    """``(pred [m, 1, k], target [m, 1(, k)])`` for ``m`` examples of the case."""
    g = grid(dtype)
    if name == "softmax_cross_entropy":
        r = rows(dtype)
        pred = np.repeat(r, 3, axis=0)
        labels = np.tile(np.arange(3), len(r))
        target = np.eye(3, dtype=dtype)[labels][:, None, :] if onehot else labels[:, None]
        return pred[:, None, :], target.astype(dtype if onehot else np.int32)
    ts = MSE_TARGETS if name == "mse" else BCE_TARGETS
    pred = np.repeat(g, len(ts))[:, None, None]
    target = np.tile(np.array(ts, dtype), len(g))[:, None, None]
    if name == "binary_cross_entropy-int":
        target = target.astype(np.int32)
    return pred, target


@functools.cache
def _row_truths(dtype):
    """``(y, log_softmax)`` of every softmax row, as mpf lists."""
    with mpmath.workdps(50):
        out = [_softmax_truth([_mpf(v) for v in r], [0, 0, 0])[:2] for r in rows(dtype)]
    return out


@functools.cache
def loss_truth(name, onehot, dtype):
    """``{"fn": (hi, lo), "d": (hi, lo)}`` per example (one-hot and labels share a truth)."""
    pred, target = loss_inputs(name, False, dtype)
    base = name.removesuffix("-int")
    values, grads = [], []
    with mpmath.workdps(50):
        if base == "softmax_cross_entropy":
            per_example = [r for r in _row_truths(dtype) for _ in range(3)]
            for (y, lsm), label in zip(per_example, target[:, 0], strict=True):
                values.append(-lsm[label])
                rest = mpmath.fsum(y[j] for j in range(3) if j != label)  # 1 - y_label
                grads.extend(-rest if k == label else y[k] for k in range(3))
        else:
            for p, t in zip(pred, target, strict=True):
                v, g = _loss_truth(base, [_mpf(p.item())], [_mpf(t.item())])
                values.append(v)
                grads.extend(g)
    return {"fn": _dd(values), "d": _dd(grads)}


def _optax_loss(name, pred, target):
    if name == "mse":
        return jnp.mean(optax.squared_error(pred, target))
    if name.startswith("binary_cross_entropy"):
        return jnp.mean(optax.sigmoid_binary_cross_entropy(pred, target.astype(pred.dtype)))
    if target.ndim == 1:
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(pred, target))
    return jnp.mean(optax.softmax_cross_entropy(pred, target))


@functools.cache
def loss_values(name, onehot, dtype, ref=False) -> dict[str, np.ndarray]:
    """fn, grad and jax.grad(fn) per example (vmapped), in one jitted program."""
    loss = losses.get(name.removesuffix("-int"))
    fn = functools.partial(_optax_loss, name) if ref else loss.fn

    def run(pred, target):
        out = {"fn": jax.vmap(fn)(pred, target), "jax.grad": jax.vmap(jax.grad(fn))(pred, target)}
        if not ref:
            out["grad"] = jax.vmap(loss.grad)(pred, target)
        return out

    out = jax.jit(run)(*(jnp.asarray(a) for a in loss_inputs(name, onehot, dtype)))
    for q, v in out.items():
        assert v.dtype == dtype, (name, q, v.dtype)
    return {q: np.asarray(v).ravel() for q, v in out.items()}


# ---------------------------------------------------------------------------------------------
# The criterion.


def errors(got, truth, dtype):
    """``(abs_err, ulp_err, expected_nonfinite)``; ulp relative to ``max(|truth|, tiny)``."""
    hi, lo = truth
    fi = np.finfo(dtype)
    g = np.asarray(got, np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        err = np.abs((g - hi) - lo)
        expect = hi.astype(dtype).astype(np.float64)  # rounding may overflow to inf
    nonfinite = ~np.isfinite(expect)
    ulp = err / (fi.eps * np.maximum(np.abs(hi), float(fi.tiny)))
    return err, ulp, nonfinite, expect


def failures(got, ref, truth, dtype, skip=None):
    """Indices where ``got`` fails the criterion (``skip``: points judged elsewhere)."""
    err, _, nonfinite, expect = errors(got, truth, dtype)
    ref_err, _, _, _ = errors(ref, truth, dtype)
    fi = np.finfo(dtype)
    bound = np.maximum(
        np.maximum(8 * fi.eps * np.abs(truth[0]), 4 * np.nan_to_num(ref_err, nan=0.0, posinf=0.0)),
        float(fi.tiny),
    )
    with np.errstate(invalid="ignore"):
        ok = np.where(nonfinite, np.asarray(got, np.float64) == expect, err <= bound)
        ok |= np.isnan(truth[0]) & np.isnan(np.asarray(got, np.float64))
    if skip is not None:
        ok |= skip
    return np.flatnonzero(~ok)


def kink_points(act, dtype):
    """Mask of inputs within the smallest normal of a declared kink (elementwise only)."""
    if not act.elementwise or not act.kinks:
        return None
    x = grid(dtype).astype(np.float64)
    return np.any([np.abs(x - k) < float(np.finfo(dtype).tiny) for k in act.kinks], axis=0)


def _describe(idx, inputs, got, truth):
    return [(inputs[j].tolist(), float(got[j]), float(truth[0][j])) for j in idx[:5]]


# ---------------------------------------------------------------------------------------------
# Tests.


# (case, quantity) pairs; vjp_from_output only where the record has one.
ACT_PARAMS = [
    pytest.param(n, s, q, id=f"{i}-{q}")
    for (n, s), i in zip(ACT_CASES, ACT_IDS, strict=True)
    for q in ACT_QUANTITIES
    if q != "vjp_from_output" or activations.get(n, **s).vjp_from_output is not None
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize(("name", "settings", "quantity"), ACT_PARAMS)
def test_activation_against_mpmath(name, settings, quantity, dtype):
    act = activations.get(name, **settings)
    key = tuple(sorted(settings.items()))
    truth = act_truth(name, key, dtype)
    got = act_values(name, key, dtype)[quantity]
    ref = act_values(name, key, dtype, ref=True)["fn" if quantity == "fn" else "jax.grad"]
    want = truth["fn"] if quantity == "fn" else truth["d"]
    kink = kink_points(act, dtype) if quantity != "fn" else None
    bad = failures(got, ref, want, dtype, skip=kink)
    x = _inputs(act, dtype)[0].reshape(-1, 1 if act.elementwise else 3)
    x = np.repeat(x, x.shape[1], axis=0)
    assert bad.size == 0, f"{name} {quantity}: (x, got, truth) {_describe(bad, x, got, want)}"
    if kink is not None:
        # At a kink: the left-hand value; an input the CPU did not flush to the kink may also
        # take the truth at itself (a denormal lies on one side).
        close = functools.partial(np.isclose, rtol=8 * np.finfo(dtype).eps, atol=0)
        g, left, at_x = got[kink], truth["d_left"][0][kink], truth["d"][0][kink]
        on_kink = grid(dtype)[kink] == 0
        ok = close(g, left) | (close(g, at_x) & ~on_kink)
        assert ok.all(), f"{name} {quantity} at the kink: got {g}, left-hand value {left}"


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("quantity", LOSS_QUANTITIES)
@pytest.mark.parametrize(("name", "onehot"), LOSS_CASES, ids=LOSS_IDS)
def test_loss_against_mpmath(name, onehot, quantity, dtype):
    truth = loss_truth(name, onehot, dtype)
    got = loss_values(name, onehot, dtype)[quantity]
    ref = loss_values(name, onehot, dtype, ref=True)["fn" if quantity == "fn" else "jax.grad"]
    want = truth["fn"] if quantity == "fn" else truth["d"]
    bad = failures(got, ref, want, dtype)
    pred = loss_inputs(name, onehot, dtype)[0]
    pred = pred.reshape(len(pred), -1)
    if quantity != "fn":
        pred = np.repeat(pred, pred.shape[1], axis=0)
    assert bad.size == 0, f"{name} {quantity}: (pred, got, truth) {_describe(bad, pred, got, want)}"


# ---------------------------------------------------------------------------------------------
# The table: `python tests/test_numerics.py` prints the worst error in ulp per primitive.


def _worst(got, truth, dtype, skip=None) -> float:
    err, ulp, nonfinite, _ = errors(got, truth, dtype)
    # Left out: errors within the absolute floor (the smallest normal), and results below
    # tiny / eps, whose computation can pass through a denormal that the CPU flushes to 0.
    fi = np.finfo(dtype)
    keep = ~nonfinite & (np.nan_to_num(err, nan=np.inf) > float(fi.tiny))
    keep &= np.abs(truth[0]) >= float(fi.tiny / fi.eps)
    if skip is not None:
        keep &= ~skip
    u = ulp[keep]
    return float(np.max(np.nan_to_num(u, nan=np.inf))) if u.size else 0.0


def _row(label, cells) -> str:
    return f"| {label} | " + " | ".join(f"{c:.3g}" for c in cells) + " |"


def table() -> list[str]:
    """Worst ulp per primitive and quantity: fnn and its counterpart, float32 and float64."""
    lines = ["| primitive | quantity | fnn f32 | ref f32 | fnn f64 | ref f64 | fails |"]
    lines.append("|---" * 7 + "|")
    for (name, settings), label in zip(ACT_CASES, ACT_IDS, strict=True):
        act, key = activations.get(name, **settings), tuple(sorted(settings.items()))
        for q in ACT_QUANTITIES:
            if q == "vjp_from_output" and act.vjp_from_output is None:
                continue
            cells, fails = [], 0
            for dtype in DTYPES:
                t = act_truth(name, key, dtype)
                want, rq = (t["fn"], "fn") if q == "fn" else (t["d"], "jax.grad")
                skip = kink_points(act, dtype) if q != "fn" else None
                got, ref = act_values(name, key, dtype)[q], act_values(name, key, dtype, True)[rq]
                cells += [_worst(got, want, dtype, skip), _worst(ref, want, dtype, skip)]
                fails += failures(got, ref, want, dtype, skip).size
            lines.append(_row(f"{label} | {q}", [*cells, fails]))
    for (name, onehot), label in zip(LOSS_CASES, LOSS_IDS, strict=True):
        for q in LOSS_QUANTITIES:
            cells, fails = [], 0
            for dtype in DTYPES:
                t = loss_truth(name, onehot, dtype)
                want, rq = (t["fn"], "fn") if q == "fn" else (t["d"], "jax.grad")
                got, ref = (
                    loss_values(name, onehot, dtype)[q],
                    loss_values(name, onehot, dtype, True)[rq],
                )
                cells += [_worst(got, want, dtype), _worst(ref, want, dtype)]
                fails += failures(got, ref, want, dtype).size
            lines.append(_row(f"{label} | {q}", [*cells, fails]))
    return lines


if __name__ == "__main__":
    jax.config.update("jax_enable_x64", True)
    print("\n".join(table()))
