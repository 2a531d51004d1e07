"""Losses: values against optax, hand-written gradients against jax.grad, stability, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fnn import losses


def rel_err(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), 1e-300)))


def make(name, batch, k, seed=0, dtype=jnp.float64, onehot=False):
    kp, kt = jax.random.split(jax.random.key(seed))
    pred = 2.0 * jax.random.normal(kp, (batch, k), dtype)
    if name == "mse":
        target = jax.random.normal(kt, (batch, k), dtype)
    elif name == "binary_cross_entropy":
        target = jax.random.bernoulli(kt, 0.5, (batch, k)).astype(dtype)
    else:
        target = jax.random.randint(kt, (batch,), 0, k)
        if onehot:
            target = jax.nn.one_hot(target, k, dtype=dtype)
    return pred, target


def optax_value(name, pred, target):
    if name == "mse":
        return jnp.mean(optax.squared_error(pred, target))
    if name == "binary_cross_entropy":
        return jnp.mean(optax.sigmoid_binary_cross_entropy(pred, target))
    if target.ndim == 1:
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(pred, target))
    return jnp.mean(optax.softmax_cross_entropy(pred, target))


CASES = [(n, False) for n in losses.NAMES] + [("softmax_cross_entropy", True)]
IDS = [f"{n}{'-onehot' if o else ''}" for n, o in CASES]


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize(("name", "onehot"), CASES, ids=IDS)
def test_value_matches_optax_and_grad_matches_autodiff(name, onehot, jit):
    loss = losses.get(name)
    pred, target = make(name, 9, 4, onehot=onehot)
    fn = jax.jit(loss.fn) if jit else loss.fn
    g = jax.jit(loss.grad) if jit else loss.grad
    assert rel_err(fn(pred, target), optax_value(name, pred, target)) <= 1e-12
    want = jax.grad(loss.fn)(pred, target)
    got = g(pred, target)
    assert got.shape == pred.shape
    assert rel_err(got, want) <= 1e-10


@settings(max_examples=8, deadline=None)
@given(
    name=st.sampled_from(losses.NAMES),
    batch=st.integers(1, 8),
    k=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_grad_matches_autodiff_any_shape(name, batch, k, seed):
    loss = losses.get(name)
    pred, target = make(name, batch, k, seed)
    assert rel_err(loss.grad(pred, target), jax.grad(loss.fn)(pred, target)) <= 1e-10


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("name", ["binary_cross_entropy", "softmax_cross_entropy"])
def test_stable_at_extreme_logits(name, dtype):
    loss = losses.get(name)
    pred = jnp.array([[1000.0, -1000.0], [-1000.0, 1000.0]], dtype)
    if name == "binary_cross_entropy":
        target = jnp.array([[1.0, 0.0], [1.0, 0.0]], dtype)
    else:
        target = jnp.array([0, 0])
    value, grad = loss.fn(pred, target), loss.grad(pred, target)
    assert bool(jnp.isfinite(value)) and bool(jnp.all(jnp.isfinite(grad)))
    # One row is right with certainty, the other wrong by a margin of 2000 (bce: 1000 + 1000).
    expected = 500.0 if name == "binary_cross_entropy" else 1000.0
    assert float(value) == pytest.approx(expected, rel=1e-6)


def test_fused_softmax_gradient_is_p_minus_onehot():
    pred, labels = make("softmax_cross_entropy", 5, 3)
    p = jax.nn.softmax(pred)
    want = (p - jax.nn.one_hot(labels, 3)) / 5
    assert rel_err(losses.get("softmax_cross_entropy").grad(pred, labels), want) <= 1e-12


def test_accuracy():
    ce = losses.get("softmax_cross_entropy")
    logits = jnp.array([[2.0, 0.0], [0.0, 2.0], [3.0, 1.0]])
    assert float(ce.accuracy(logits, jnp.array([0, 1, 1]))) == pytest.approx(2 / 3)
    bce = losses.get("binary_cross_entropy")
    assert float(bce.accuracy(jnp.array([[1.0], [-1.0]]), jnp.array([[1.0], [1.0]]))) == 0.5
    assert losses.get("mse").accuracy is None


def test_unknown_loss_lists_names():
    with pytest.raises(ValueError, match=r"unknown loss 'hinge'.*mse.*softmax_cross_entropy"):
        losses.get("hinge")


def test_bad_labels_are_named():
    ce = losses.get("softmax_cross_entropy")
    logits = jnp.zeros((4, 3))
    with pytest.raises(ValueError, match=r"integer labels must have shape \(4,\).*got \(4, 1\)"):
        ce.fn(logits, jnp.zeros((4, 1), jnp.int32))
    with pytest.raises(ValueError, match=r"one-hot targets must have the shape of pred"):
        ce.fn(logits, jnp.zeros((4, 2)))
    with pytest.raises(TypeError, match=r"pred must have a floating dtype, got int"):
        ce.fn(jnp.zeros((4, 3), jnp.int32), jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match=r"mse: target must have the shape of pred \(4, 3\)"):
        losses.get("mse").fn(logits, jnp.zeros((4,)))


def test_accuracy_breaks_ties_like_argmax():
    ce = losses.get("softmax_cross_entropy")
    logits = jnp.array([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [3.0, 3.0, 3.0]])
    first = jnp.argmax(logits, axis=-1)  # [0, 1, 0]
    assert float(ce.accuracy(logits, first)) == 1.0
    assert float(ce.accuracy(logits, jnp.array([1, 2, 2]))) == 0.0  # ties are not all hits
    onehot = jax.nn.one_hot(jnp.array([0, 2, 1]), 3)
    assert float(ce.accuracy(logits, onehot)) == pytest.approx(1 / 3)


# ---------------------------------------------------------------------------------------------
# Issue 13: autodiff of the forwards, limits at infinite logits, bad labels, record fields.


def old_bce(pred, target):
    """BCE as fnn wrote it before: max(z, 0) and |z| hand autodiff subgradients at z = 0."""
    t = target.astype(pred.dtype)
    return jnp.mean(jnp.maximum(pred, 0.0) - pred * t + jnp.log1p(jnp.exp(-jnp.abs(pred))))


def test_bce_autodiff_is_the_derivative_at_a_zero_logit():
    bce = losses.get("binary_cross_entropy")
    z, t = jnp.zeros(4), jnp.array([0.0, 1.0, 0.0, 1.0])
    want = (0.5 - t) / 4
    np.testing.assert_allclose(jax.grad(bce.fn)(z, t), want, rtol=1e-15)
    np.testing.assert_allclose(bce.grad(z, t), want, rtol=1e-15)
    assert float(jax.grad(old_bce)(z, t)[0]) == 0.0  # the bug this guards against


def fit_one_step(loss, grad):
    import fnn

    model = fnn.mlp([3, 5, 1], "tanh", dtype=jnp.float64)
    params = model.init(jax.random.key(0))
    params[-1] = jax.tree.map(jnp.zeros_like, params[-1])  # logits exactly 0: the tie
    x = jax.random.normal(jax.random.key(1), (8, 3), jnp.float64)
    y = jnp.array([[0.0], [1.0], [1.0], [0.0], [1.0], [1.0], [0.0], [1.0]])
    state, _ = fnn.train.fit(
        model, loss, optax.sgd(0.5), (x, y), epochs=1, batch_size=8, key=jax.random.key(2),
        grad=grad, init=params, progress=False,
    )  # fmt: skip
    return params, state.params


def test_fit_first_update_is_the_same_by_autodiff_and_by_hand():
    before, auto = fit_one_step("binary_cross_entropy", "autodiff")
    _, manual = fit_one_step("binary_cross_entropy", "manual")
    leaves = zip(*(jax.tree.leaves(p) for p in (auto, manual, before)), strict=True)
    for a, m, b in leaves:
        step_a, step_m = a - b, m - b
        scale = max(float(jnp.max(jnp.abs(step_m))), 1e-300)
        assert float(jnp.max(jnp.abs(step_a - step_m))) <= 1e-12 * scale
    # The bias moved by lr * (mean(s(0)) - mean(t)) = 0.5 * (0.5 - 5/8), not lr * -5/8.
    assert float((auto[-1]["b"] - before[-1]["b"])[0]) == pytest.approx(0.0625, rel=1e-12)


def test_check_model_names_the_tie_when_jax_grad_is_the_odd_one_out():
    import fnn

    bce = losses.get("binary_cross_entropy")
    broken = bce._replace(name="old_bce", fn=old_bce)
    model = fnn.mlp([3, 4, 1], "tanh", dtype=jnp.float64)
    params = model.init(jax.random.key(0))
    params[-1] = jax.tree.map(jnp.zeros_like, params[-1])
    x = jax.random.normal(jax.random.key(1), (6, 3), jnp.float64)
    y = jnp.array([[0.0], [1.0], [1.0], [0.0], [1.0], [1.0]])
    report = fnn.check.check_model(model, broken, params, x, y)
    bad = [r for r in report.rows if not r.ok]
    assert bad, "the old BCE's autodiff gradient at z = 0 must be caught"
    for r in bad:
        assert r.diagnosis.startswith("jax.grad is the odd one out"), r.diagnosis
        assert "tie or kink" in r.diagnosis
    assert fnn.check.check_model(model, bce, params, x, y).ok


def test_out_of_range_labels_give_nan_rows():
    ce = losses.get("softmax_cross_entropy")
    logits = jnp.array([[0.2, -1.0, 0.5], [1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    for bad in (3, -1):
        labels = jnp.array([0, bad, 2])
        for f in (ce.fn, jax.jit(ce.fn)):
            assert bool(jnp.isnan(f(logits, labels)))
        for g in (ce.grad(logits, labels), jax.grad(ce.fn)(logits, labels)):
            g = np.asarray(g)
            assert np.all(np.isnan(g[1])), g
            assert np.all(np.isfinite(g[[0, 2]])), g  # only that row
    assert bool(jnp.isfinite(ce.fn(logits, jnp.array([0, 2, 2]))))


INF = float("inf")


def test_a_plus_inf_logit_is_the_limit_in_fn_grad_and_autodiff():
    ce = losses.get("softmax_cross_entropy")
    logits = jnp.array([[INF, 0.0, 1.0], [INF, 0.0, 1.0], [INF, INF, 0.0], [-INF, 0.0, 0.0]])
    labels = jnp.array([0, 1, 0, 1])
    n = 4
    # Row 0: right by an infinite margin (loss 0, grad 0); row 1: wrong (loss inf, grad
    # e_0 - e_1); row 2: two +inf, no limit (NaN); row 3: a -inf mask, log 2 and p - e_1.
    want = np.array([[0, 0, 0], [1, -1, 0], [np.nan] * 3, [0, -0.5, 0.5]]) / n
    for g in (ce.grad(logits, labels), jax.grad(ce.fn)(logits, labels)):
        np.testing.assert_allclose(g, want, rtol=1e-15, atol=0)
    fine = jnp.array([0, 1, 3])
    assert float(ce.fn(logits[fine], labels[fine])) == INF
    right = jnp.array([0, 3])
    assert float(ce.fn(logits[right], labels[right])) == pytest.approx(np.log(2) / 2)
    onehot = jax.nn.one_hot(labels, 3, dtype=jnp.float64)
    np.testing.assert_allclose(ce.grad(logits, onehot), want, rtol=1e-15)
    np.testing.assert_allclose(jax.grad(ce.fn)(logits, onehot), want, rtol=1e-15)


def test_an_infinite_bce_logit_is_the_limit():
    bce = losses.get("binary_cross_entropy")
    z = jnp.array([INF, INF, -INF, -INF])
    t = jnp.array([1.0, 0.0, 0.0, 1.0])
    per = [float(bce.fn(z[i : i + 1], t[i : i + 1])) for i in range(4)]
    assert per == [0.0, INF, 0.0, INF]
    want = np.array([0.0, 1.0, 0.0, -1.0]) / 4
    np.testing.assert_array_equal(bce.grad(z, t), want)
    np.testing.assert_array_equal(jax.grad(bce.fn)(z, t), want)


def test_bce_grad_keeps_its_digits_for_a_confident_right_logit():
    bce = losses.get("binary_cross_entropy")
    z, t = jnp.array([20.0], jnp.float32), jnp.array([1.0], jnp.float32)
    truth = -2.0611536e-09  # s(20) - 1 = -s(-20)
    for g in (bce.grad(z, t), jax.grad(bce.fn)(z, t)):
        assert float(g[0]) == pytest.approx(truth, rel=1e-6)


def test_loss_records_carry_target_rules():
    labels = np.array([0, 1, 1, 0])
    ce, bce, mse = (losses.get(n) for n in ("softmax_cross_entropy", "binary_cross_entropy", "mse"))
    assert [ce.outputs(2), bce.outputs(2), mse.outputs(2), bce.outputs(5)] == [2, 1, 1, 5]
    assert ce.targets(labels, 2).dtype == np.int32
    np.testing.assert_array_equal(bce.targets(labels, 2), labels[:, None].astype(np.float32))
    np.testing.assert_array_equal(mse.targets(np.array([2, 0]), 3), [[0, 0, 1], [1, 0, 0]])
    with pytest.raises(
        ValueError, match=r"labels: expected values in 0\.\.2 \(3 classes\), got values from 0 to 3"
    ):
        mse.targets(np.array([0, 3]), 3)
    pred = jax.ShapeDtypeStruct((4, 2), jnp.float32)
    assert ce.check_target(pred, labels).dtype == jnp.int32
    with pytest.raises(
        ValueError,
        match=r"target: class labels must lie in 0\.\.1 \(pred has 2 columns\), got values from 0 to 2",
    ):
        ce.check_target(pred, np.array([0, 2, 1, 0]))
    with pytest.raises(
        ValueError, match=r"target: binary targets must lie in \[0, 1\], got values from 0 to 2"
    ):
        bce.check_target(jax.ShapeDtypeStruct((2, 1), jnp.float32), np.array([[0.0], [2.0]]))
    with pytest.raises(ValueError, match=r"mse: target must have the shape of pred \(4, 2\)"):
        mse.check_target(pred, np.zeros((4, 1), np.float32))
    assert bce.check_target(pred, np.ones((4, 2), bool)).dtype == jnp.float32
    # Traced targets pass the shape checks; the range is checked where values are concrete.
    jax.jit(lambda t: ce.check_target(pred, t))(jnp.array([0, 5, 1, 0]))
