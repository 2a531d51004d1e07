"""fnn.check: compare, finite differences, kinks, and the three-way check against planted bugs."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import activations, backprop, check, layers, losses, models

F64 = jnp.float64


def targets(loss_name, key, batch, n_out, dtype=F64):
    """Targets that suit each loss: labels, 0/1 floats, or real values."""
    if loss_name == "softmax_cross_entropy":
        return jax.random.randint(key, (batch,), 0, n_out)
    if loss_name == "binary_cross_entropy":
        return jax.random.bernoulli(key, 0.5, (batch, n_out)).astype(dtype)
    return jax.random.normal(key, (batch, n_out), dtype)


def setup(model, loss_name, batch=4, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    params = model.init(k1)
    x = jax.random.normal(k2, (batch, *model.in_shape), model.dtype)
    return params, x, targets(loss_name, k3, batch, model.out_shape[0], model.dtype)


def raw_rel_err(a, b):
    """max |a - b| / (|a| + |b|) over every element of every leaf, computed independently."""
    return max(
        float(np.max(np.abs(u - v) / np.maximum(np.abs(u) + np.abs(v), 1e-300)))
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def autodiff(model, loss_name, params, x, y):
    loss = losses.get(loss_name)
    return jax.grad(lambda p: loss.fn(model.apply(p, x), y))(params)


# ---------------------------------------------------------------------------------------------
# compare / assert_grads_close


def test_compare_errors_bands_and_worst_index():
    a = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]], F64), "b": jnp.array([0.5, -0.5], F64)}
    b = {"w": a["w"].at[1, 0].multiply(2.0), "b": -a["b"]}  # factor 2 in one element, sign flip
    report = check.compare(a, b)
    rows = {r.path: r for r in report.rows}
    assert list(rows) == ["['b']", "['w']"]
    assert rows["['w']"].max_rel_err == pytest.approx(3.0 / 9.0)  # |3-6| / (3+6)
    assert rows["['w']"].max_abs_err == pytest.approx(3.0)
    assert rows["['w']"].worst_index == (1, 0) and rows["['w']"].n_fail == 1
    assert rows["['b']"].max_rel_err == pytest.approx(1.0)  # opposite signs
    assert not report.ok and report.failed == ["['b']", "['w']"]
    assert report.max_abs_err == pytest.approx(3.0)
    text = str(report)
    assert "FAIL: ['b'], ['w']" in text and "(1, 0)" in text and "1e-2" in text
    assert check.compare(a, a).ok and check.compare(a, a).max_rel_err == 0.0


def test_compare_passes_on_atol_or_rtol_and_fails_on_nan():
    a = jnp.array([1.0, 1e-14, 0.0, 1.0], F64)
    b = jnp.array([1.0 + 1e-9, 3e-14, 0.0, 1.0], F64)  # rel 5e-10 / abs 2e-14 (rel 0.5)
    assert check.compare(a, b).ok
    assert check.compare(a, b).rows[0].max_rel_err == pytest.approx(1e-9 / (2 + 1e-9))
    strict = check.compare(a, b, atol=1e-15).rows[0]  # the tiny element now fails on both
    assert not strict.ok and strict.worst_index == (1,) and strict.max_rel_err == pytest.approx(0.5)
    # The default atol follows the leaf's scale: shrink everything by 1e-6 and an element
    # three times too large, 1e-7 of the leaf's largest, is no longer excused as "near zero".
    tiny_a, tiny_b = jnp.array([1e-6, 1e-13], F64), jnp.array([1e-6, 3e-13], F64)
    assert check.compare(tiny_a, tiny_b, atol=1e-12).ok
    small = check.compare(tiny_a, tiny_b).rows[0]
    assert not small.ok and small.worst_index == (1,) and small.atol == pytest.approx(1e-18)
    row = check.compare(a, b.at[3].set(jnp.nan)).rows[0]
    assert not row.ok and row.max_abs_err == np.inf and "1 non-finite" in row.note


def test_compare_default_tolerance_depends_on_dtype():
    a32 = jnp.ones(3, jnp.float32)
    b32 = a32 * (1 + 1e-5)
    assert check.compare(a32, b32).ok  # float32: rtol 1e-3
    assert not check.compare(a32.astype(F64), b32.astype(F64) * (1 + 1e-5)).ok
    assert check.default_tolerances(jnp.float32, F64) == check.TOLERANCES["float32"]


def test_compare_structure_mismatch_names_paths():
    a = [{"w": jnp.zeros(2)}, {}, {"w": jnp.zeros(2), "b": jnp.zeros(1)}]
    b = [{"w": jnp.zeros(2)}, {}, {"w": jnp.zeros(2)}]
    with pytest.raises(ValueError, match=re.escape("only in a: [\"[2]['b']\"]; only in b: none")):
        check.compare(a, b)


def test_compare_shape_mismatch_is_a_failing_row():
    report = check.compare({"w": jnp.zeros((2, 3))}, {"w": jnp.zeros((3, 2))})
    assert not report.ok and "shape (2, 3) vs (3, 2)" in str(report)


def test_assert_grads_close_carries_the_table():
    a = {"w": jnp.arange(4.0, dtype=F64)}
    check.assert_grads_close(a, {"w": a["w"] + 1e-15})
    with pytest.raises(AssertionError, match=r"(?s)gradients differ.*\['w'\].*FAIL"):
        check.assert_grads_close(a, {"w": a["w"].at[2].add(1e-3)})


# ---------------------------------------------------------------------------------------------
# numerical_grad


def test_numerical_grad_coords_and_directions_on_a_known_function():
    params = {
        "small": jnp.array([0.3, -1.2, 2.0], F64),
        "big": jax.random.normal(jax.random.key(0), (6, 5), F64),
    }

    def f(p):  # gradient: 3 small**2, cos(big)
        return jnp.sum(p["small"] ** 3) + jnp.sum(jnp.sin(p["big"]))

    fd = check.numerical_grad(f, params, max_coords=10, directions=4)
    big, small = fd.leaves  # dict leaves come in sorted key order
    assert (small.mode, big.mode) == ("coords", "directions")
    np.testing.assert_allclose(small.estimate, 3 * params["small"] ** 2, rtol=1e-9)
    want = np.tensordot(big.directions, np.cos(np.asarray(params["big"])), axes=2)
    np.testing.assert_allclose(big.estimate, want, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(big.directions.reshape(4, -1), axis=1), 1.0)
    assert fd.value == pytest.approx(float(f(params)))
    good = {"big": jnp.cos(params["big"]), "small": 3 * params["small"] ** 2}
    assert fd.compare(good).ok
    report = fd.compare({**good, "big": good["big"].at[0, 0].multiply(-1.0)})
    assert report.failed == ["['big']"]
    # the step follows the dtype: cbrt(eps) * max(1, |theta|)
    assert small.step == pytest.approx(np.finfo(np.float64).eps ** (1 / 3) * 2.0, rel=1e-6)


def test_numerical_grad_refuses_float32_unless_allowed():
    params = {"w": jnp.ones(3, jnp.float32)}
    with pytest.raises(ValueError, match=r"float32.*eps\*\*\(2/3\).*jax_enable_x64"):
        check.numerical_grad(lambda p: jnp.sum(p["w"] ** 2), params)
    with pytest.warns(check.PrecisionWarning, match="float32"):
        fd = check.numerical_grad(lambda p: jnp.sum(p["w"] ** 2), params, allow_low_precision=True)
    np.testing.assert_allclose(fd.leaves[0].estimate, 2.0, rtol=1e-3)


def kink_setup():
    """A relu net where example 0 puts hidden unit 0's pre-activation exactly at 0."""
    model = fnn.mlp([2, 3, 2], activation="relu", dtype=F64)
    params = model.init(jax.random.key(3))
    params[0]["b"] = jnp.array([0.0, 0.5, -0.5], F64)
    params[2]["w"] = params[2]["w"].at[0].set(jnp.array([1.0, -1.0], F64))  # unit 0 matters
    x = jnp.array([[0.0, 0.0], [0.3, -0.7], [1.1, 0.4]], F64)
    return model, params, x, jnp.array([0, 1, 0])


def test_kink_is_reported_not_failed():
    model, params, x, y = kink_setup()
    report = check.check_model(model, "softmax_cross_entropy", params, x, y)
    rows = {r.path: r for r in report.rows}
    assert report.ok, str(report)
    assert rows["[0]['b']"].kinks == 1 and rows["[0]['b']"].fd.n_skipped == 1
    assert sum(r.kinks for r in report.rows) == 1
    # Without kink awareness the same estimate is a (spurious) failure at [0]['b'] index 0.
    loss = losses.get("softmax_cross_entropy")
    grads = backprop.grad(model, loss)(params, x, y)
    objective = lambda p: loss.fn(model.apply(p, x), y)  # noqa: E731
    blind = check.numerical_grad(objective, params, detect_kinks=False).compare(grads)
    assert blind.failed == ["[0]['b']"] and blind.rows[0].worst_index == (0,)
    # Told nothing about kinks, the left/right slopes find the same one and only that one.
    found = check.numerical_grad(objective, params)
    assert found.compare(grads).ok and found.kinks == 1
    assert found.leaves[0].path == "[0]['b']" and found.leaves[0].kinks.tolist() == [1, 0, 0]


# ---------------------------------------------------------------------------------------------
# Right gradients pass: manual vs jax.grad <= 1e-10 (float64) for every activation, loss, depth


def mlp_case(activation, depth, loss_name, seed=0):
    sizes = [3] + [4] * depth + [2]
    model = fnn.mlp(sizes, activation=activation, dtype=F64)
    return model, *setup(model, loss_name, seed=seed)


# every activation once, with depths 1..5 and the losses cycled through
ACT_CASES = [(a, 1 + i % 5, losses.NAMES[i % 3]) for i, a in enumerate(activations.NAMES)]


@pytest.mark.parametrize(("activation", "depth", "loss_name"), ACT_CASES)
def test_right_gradients_pass_three_way(activation, depth, loss_name):
    model, params, x, y = mlp_case(activation, depth, loss_name)
    report = check.check_model(model, loss_name, params, x, y)
    assert report.ok, str(report)
    assert report.max_rel_err <= 1e-10 and report.fd_dtype == "float64"
    _, manual = backprop.value_and_grad(model, loss_name)(params, x, y)
    assert raw_rel_err(manual, autodiff(model, loss_name, params, x, y)) <= 1e-10


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("loss_name", losses.NAMES)
def test_right_gradients_every_loss_and_depth(loss_name, depth):
    model, params, x, y = mlp_case("tanh", depth, loss_name, seed=depth)
    _, manual = backprop.value_and_grad(model, loss_name)(params, x, y)
    want = autodiff(model, loss_name, params, x, y)
    report = check.compare(manual, want, rtol=1e-10)
    assert report.ok and report.max_rel_err <= 1e-10, str(report)
    assert raw_rel_err(manual, want) <= 1e-10  # every element, even those near zero


# ---------------------------------------------------------------------------------------------
# Planted bugs: each one caught and named by its leaf path.


def dense_with(fan_out, bug):
    good = layers.dense(fan_out)

    def backward(params, x, dy):  # dense keeps its input x as the residual
        dp, dx = good.backward(params, x, dy)
        return bug(params, x, dy, dict(dp), dx)

    return good._replace(backward=backward)


def sign_flip(p, x, dy, dp, dx):
    return {**dp, "w": -dp["w"]}, dx


def transposed_w(p, x, dy, dp, dx):  # dw = dy^T x, the transpose of x^T dy
    return {**dp, "w": dy.T @ x}, dx


def transposed_w_in_dx(p, x, dy, dp, dx):  # dx = dy W instead of dy W^T
    return dp, dy @ p["w"]


def bias_row0(p, x, dy, dp, dx):
    return {**dp, "b": dy[0]}, dx


def bias_mean(p, x, dy, dp, dx):
    return {**dp, "b": jnp.mean(dy, axis=0)}, dx


def one_element_off(p, x, dy, dp, dx):
    return {**dp, "w": dp["w"].at[1, 2].multiply(1 + 1e-4)}, dx


def net(middle, out=3):
    """dense(4) -> tanh -> middle -> tanh -> dense(out); leaves [0], [2], [4]."""
    stack = models.serial(
        layers.dense(4),
        layers.activation("tanh"),
        middle,
        layers.activation("tanh"),
        layers.dense(out),
    )
    return models.build(stack, (3,), F64)


@pytest.mark.parametrize(
    ("bug", "failed"),
    [
        (sign_flip, ["[2]['w']"]),
        (transposed_w, ["[2]['w']"]),
        (transposed_w_in_dx, ["[0]['b']", "[0]['w']"]),
        (bias_row0, ["[2]['b']"]),
        (bias_mean, ["[2]['b']"]),
        (one_element_off, ["[2]['w']"]),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_planted_dense_bugs_are_caught_and_named(bug, failed):
    model = net(dense_with(4, bug))  # square, so a transposed W still has the right shape
    params, x, y = setup(model, "softmax_cross_entropy", batch=5)
    report = check.check_model(model, "softmax_cross_entropy", params, x, y)
    assert not report.ok and report.failed == failed
    text = str(report)
    assert f"FAIL: {len(failed)} of 6 leaves disagree: {failed[0]}: manual backward wrong" in text
    for r in report.rows:  # jax.grad agrees with finite differences on every leaf
        assert r.fd_autodiff.ok
    if bug is one_element_off:
        row = next(r for r in report.rows if r.path == "[2]['w']")
        assert row.autodiff.worst_index == (1, 2) and row.autodiff.n_fail == 1
        assert row.autodiff.max_rel_err == pytest.approx(1e-4 / (2 + 1e-4), rel=1e-6)


def test_transposed_w_with_the_wrong_shape_is_a_failing_row():
    model = net(dense_with(5, transposed_w))
    params, x, y = setup(model, "mse")
    report = check.check_model(model, "mse", params, x, y)
    row = next(r for r in report.rows if r.path == "[2]['w']")
    assert report.failed == ["[2]['w']"] and row.autodiff.note == "shape (5, 4) vs (4, 5)"
    assert "shape (5, 4) vs (4, 5)" in str(
        check.compare(*[{"w": jnp.zeros(s)} for s in [(5, 4), (4, 5)]])
    )


def test_missing_factor_2_in_the_loss_fails_every_leaf():
    mse = losses.get("mse")
    bad = mse._replace(grad=lambda pred, target: (pred - target) / pred.size)
    model = fnn.mlp([3, 4, 2], activation="tanh", dtype=F64)
    params, x, y = setup(model, "mse")
    report = check.check_model(model, bad, params, x, y)
    assert report.failed == ["[0]['b']", "[0]['w']", "[2]['b']", "[2]['w']"]
    assert all(r.autodiff.max_rel_err == pytest.approx(1 / 3) for r in report.rows)
    _, manual = backprop.value_and_grad(model, bad)(params, x, y)
    with pytest.raises(AssertionError, match=r"\[2\]\['w'\]"):
        check.assert_grads_close(manual, autodiff(model, "mse", params, x, y))


def activation_with(name, vjp):
    good = layers.activation(name)

    def forward(params, x, **kw):
        y, _ = good.forward(params, x, **kw)
        return y, (x, y)

    return good._replace(forward=forward, backward=lambda p, res, dy: ({}, vjp(*res, dy)))


def test_softmax_jacobian_kept_diagonal_is_caught():
    diag = activation_with("softmax", lambda x, y, dy: dy * y * (1 - y))
    model = models.build(models.serial(layers.dense(4), diag, layers.dense(3)), (3,), F64)
    params, x, y = setup(model, "mse")
    report = check.check_model(model, "mse", params, x, y)
    assert report.failed == ["[0]['b']", "[0]['w']"]
    assert "[0]['b']: manual backward wrong" in report.verdict


def test_relu_derivative_wrong_for_negative_inputs_is_caught():
    leaky_one = activation_with("relu", lambda x, y, dy: jnp.where(x > 0, dy, dy))
    model = models.build(models.serial(layers.dense(6), leaky_one, layers.dense(2)), (3,), F64)
    params, x, y = setup(model, "binary_cross_entropy")
    report = check.check_model(model, "binary_cross_entropy", params, x, y)
    assert report.failed == ["[0]['b']", "[0]['w']"]


def test_directional_check_of_a_large_leaf_catches_a_bug():
    model = net(dense_with(4, sign_flip))
    params, x, y = setup(model, "mse")
    report = check.check_model(model, "mse", params, x, y, max_coords=8, rtol=1e300)
    # jax.grad comparison switched off (rtol huge): finite differences alone must catch it
    rows = {r.path: r for r in report.rows}
    assert rows["[2]['w']"].fd_mode == "directions" and not rows["[2]['w']"].fd.ok
    assert report.failed == ["[2]['w']"]


def test_float32_model_is_checked_with_float64_differences():
    model = fnn.mlp([3, 5, 2], activation="sigmoid", dtype=jnp.float32)
    params, x, y = setup(model, "softmax_cross_entropy")
    report = check.check_model(model, "softmax_cross_entropy", params, x, y)
    assert report.ok, str(report)
    assert (report.dtype, report.fd_dtype) == ("float32", "float64")
    assert report.rows[0].autodiff.rtol == check.TOLERANCES["float32"][0]
    d = report.as_dict()
    assert d["ok"] and len(d["leaves"]) == 4 and d["leaves"][0]["path"] == "[0]['b']"


def test_check_model_with_dropout_uses_the_same_key():
    model = fnn.mlp([3, 6, 2], activation="tanh", dropout=0.5, dtype=F64)
    params, x, y = setup(model, "mse")
    report = check.check_model(model, "mse", params, x, y, key=jax.random.key(4))
    assert report.ok, str(report)
