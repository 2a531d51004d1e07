"""Every registered activation: hand-written VJP vs jax.vjp, stability, kinks, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fnn import activations

NAMES = activations.NAMES
SETTINGS = {  # non-default settings exercised as well
    "leaky_relu": {"negative_slope": 0.2},
    "elu": {"alpha": 0.7},
    "gelu": {"approximate": True},
    "softmax": {"axis": 0},
    "log_softmax": {"axis": 0},
}


def rel_err(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), 1e-300)))


def away_from_kinks(x, act):
    for k in act.kinks:
        x = jnp.where(jnp.abs(x - k) < 1e-3, x + 0.01, x)
    return x


def check_vjp(act, x, dy, jit):
    vjp = jax.jit(act.vjp) if jit else act.vjp
    got = vjp(x, dy)
    _, pullback = jax.vjp(act.fn, x)
    (want,) = pullback(dy)
    assert got.shape == x.shape and got.dtype == x.dtype
    assert rel_err(got, want) <= 1e-10, (act.name, rel_err(got, want))
    if act.vjp_from_output is not None:
        got_y = act.vjp_from_output(act.fn(x), dy)
        assert rel_err(got_y, want) <= 1e-10, (act.name, "from output")


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name", NAMES)
def test_vjp_matches_autodiff(name, jit):
    act = activations.get(name)
    kx, kd = jax.random.split(jax.random.key(0))
    x = away_from_kinks(3.0 * jax.random.normal(kx, (7, 5), jnp.float64), act)
    dy = jax.random.normal(kd, (7, 5), jnp.float64)
    check_vjp(act, x, dy, jit)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_vjp_with_settings_matches_autodiff(name):
    act = activations.get(name, **SETTINGS[name])
    kx, kd = jax.random.split(jax.random.key(1))
    x = away_from_kinks(2.0 * jax.random.normal(kx, (6, 4), jnp.float64), act)
    dy = jax.random.normal(kd, (6, 4), jnp.float64)
    check_vjp(act, x, dy, jit=False)


@settings(max_examples=8, deadline=None)
@given(
    name=st.sampled_from(NAMES),
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple),
    seed=st.integers(0, 2**16),
)
def test_vjp_matches_autodiff_any_shape(name, shape, seed):
    act = activations.get(name)
    kx, kd = jax.random.split(jax.random.key(seed))
    x = away_from_kinks(2.0 * jax.random.normal(kx, shape, jnp.float64), act)
    dy = jax.random.normal(kd, shape, jnp.float64)
    check_vjp(act, x, dy, jit=False)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("name", NAMES)
def test_finite_at_large_inputs(name, dtype):
    act = activations.get(name)
    x = jnp.array([[-1000.0, -30.0, 0.5, 30.0, 1000.0]], dtype)
    y = act.fn(x)
    dx = act.vjp(x, jnp.ones_like(x))
    assert y.dtype == dtype and dx.dtype == dtype
    assert bool(jnp.all(jnp.isfinite(y))), (name, y)
    assert bool(jnp.all(jnp.isfinite(dx))), (name, dx)


def test_known_values_and_limits():
    x = jnp.array([-1000.0, 0.0, 1000.0], jnp.float64)
    np.testing.assert_allclose(activations.sigmoid(x), [0.0, 0.5, 1.0], atol=1e-300)
    np.testing.assert_allclose(activations.softplus(x), [0.0, np.log(2.0), 1000.0])
    np.testing.assert_allclose(activations.relu(x), [0.0, 0.0, 1000.0])
    np.testing.assert_allclose(activations.gelu(jnp.array([1.0])), [0.8413447460685429])
    p = activations.softmax(jnp.array([[1000.0, 0.0, -1000.0]]))
    np.testing.assert_allclose(p, [[1.0, 0.0, 0.0]])
    np.testing.assert_allclose(jnp.sum(activations.softmax(x)), 1.0)


def test_kink_values_are_left_derivatives():
    zero = jnp.zeros(1, jnp.float64)
    one = jnp.ones(1, jnp.float64)
    assert float(activations.get("relu").vjp(zero, one)[0]) == 0.0
    assert float(activations.get("leaky_relu").vjp(zero, one)[0]) == pytest.approx(0.01)
    # ... and autodiff of the forwards agrees at the kink itself.
    assert float(jax.grad(lambda v: activations.relu(v).sum())(zero)[0]) == 0.0
    g = jax.grad(lambda v: activations.leaky_relu(v).sum())(zero)
    assert float(g[0]) == pytest.approx(0.01)


def test_softmax_vjp_is_not_diagonal():
    x = jnp.array([[0.3, -1.2, 2.0]], jnp.float64)
    dy = jnp.array([[1.0, 0.0, 0.0]], jnp.float64)
    dx = activations.get("softmax").vjp(x, dy)
    # A one-hot cotangent moves every logit, not just the first.
    assert bool(jnp.all(dx[0, 1:] != 0))


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown activation 'relux'.*relu.*leaky_relu"):
        activations.get("relux")


def test_bad_setting_is_named():
    with pytest.raises(ValueError, match=r"leaky_relu.*negative_slope.*\['alpha'\]"):
        activations.get("leaky_relu", alpha=1.0)


# ---------------------------------------------------------------------------------------------
# Issue 13: autodiff at 0, the sigmoid's tail, kinks; issue 14: define; issue 15: record fields.


@pytest.mark.parametrize("name", [n for n in NAMES if activations.get(n).elementwise])
def test_autodiff_of_the_forward_is_the_derivative_at_zero(name):
    # A maximum/abs/minimum in a forward hands autodiff a subgradient at 0 (softplus gave 0
    # instead of 0.5, elu 0.5 instead of 1); at a kink the declared side is the left one.
    act = activations.get(name)
    zero = jnp.zeros(1, jnp.float64)
    by_hand = float(act.vjp(zero, jnp.ones(1, jnp.float64))[0])
    left = float(act.vjp(jnp.full(1, -1e-12, jnp.float64), jnp.ones(1, jnp.float64))[0])
    assert by_hand == pytest.approx(left, rel=1e-9, abs=1e-300)
    assert float(jax.grad(lambda v: act.fn(v).sum())(zero)[0]) == pytest.approx(by_hand, rel=1e-15)


def test_sigmoid_keeps_its_digits_in_the_left_tail():
    # 0.5 * (1 + tanh(x / 2)) gave 0 below -17 in float32 and 0 below -40 in float64.
    x32 = jnp.array([-15.0, -17.0, -20.0, -87.0], jnp.float32)
    want = 1.0 / (1.0 + np.exp(-np.array(x32, np.float64)))
    np.testing.assert_allclose(activations.sigmoid(x32), want, rtol=2e-7)
    x64 = jnp.array([-36.0, -40.0, -700.0], jnp.float64)
    np.testing.assert_allclose(
        activations.sigmoid(x64),
        [2.319522830243569e-16, 4.248354255291589e-18, 9.85967654375977e-305],
        rtol=4e-16,
    )
    silu = activations.get("silu")
    np.testing.assert_allclose(
        silu.fn(x64),
        x64 * np.array([2.319522830243569e-16, 4.248354255291589e-18, 9.85967654375977e-305]),
        rtol=4e-16,
    )


def test_elu_kink_follows_alpha():
    assert activations.get("elu").kinks == ()
    elu = activations.get("elu", alpha=0.7)
    assert elu.kinks == (0.0,)
    zero, one = jnp.zeros(1, jnp.float64), jnp.ones(1, jnp.float64)
    assert float(elu.vjp(zero, one)[0]) == pytest.approx(0.7)  # the left-hand side
    assert float(jax.grad(lambda v: elu.fn(v).sum())(zero)[0]) == pytest.approx(0.7)


def test_records_carry_family_dead_saturated_and_peak():
    assert activations.RELU_FAMILY == {n for n in NAMES if activations.get(n).family == "relu"}
    assert {"relu", "leaky_relu", "elu", "gelu", "silu", "softplus"} <= activations.RELU_FAMILY
    assert activations.get("tanh").family == "smooth"
    x = jnp.linspace(-4.0, 4.0, 80001, dtype=jnp.float64)
    for name in NAMES:
        act = activations.get(name)
        if act.elementwise and act.peak is not None and name not in ("softplus", "identity"):
            top = float(jnp.max(act.vjp(x, jnp.ones_like(x))))
            assert top == pytest.approx(act.peak, rel=1e-7), name
        if act.dead is not None:  # dead exactly where the input is <= 0, read from the output
            np.testing.assert_array_equal(act.dead(act.fn(x)), x <= 0, err_msg=name)
    y = activations.sigmoid(jnp.array([-6.0, 0.0, 6.0]))
    assert activations.get("sigmoid").saturated(y).tolist() == [True, False, True]
    assert activations.get("tanh").saturated(jnp.tanh(jnp.array([0.1, 3.0]))).tolist() == [
        False,
        True,
    ]
    assert activations.get("leaky_relu", negative_slope=-0.5).dead is None


@pytest.fixture
def registry(monkeypatch):
    """Let a test define activations without leaving them registered."""
    monkeypatch.setattr(activations, "_REGISTRY", dict(activations._REGISTRY))
    monkeypatch.setattr(activations, "NAMES", activations.NAMES)
    monkeypatch.setattr(activations, "RELU_FAMILY", activations.RELU_FAMILY)


def softsign(x):
    return x / (1 + jnp.abs(x))


def softsign_vjp(x, dy):
    return dy / (1 + jnp.abs(x)) ** 2


def test_define_registers_an_activation_usable_by_name(registry):
    import fnn

    rec = activations.define("softsign", softsign, softsign_vjp)
    assert activations.get("softsign") is rec and "softsign" in activations.NAMES
    layer = fnn.layers.activation("softsign")
    model = fnn.mlp([2, 3, 1], activation="softsign", dtype=jnp.float64)
    params = model.init(jax.random.key(0))
    x = jnp.array([[0.5, -1.0], [2.0, 0.3]], jnp.float64)
    assert model.apply(params, x).shape == (2, 1)
    report = fnn.check.check_model(model, "mse", params, x, jnp.zeros((2, 1)), fd=False)
    assert report.ok, str(report)
    assert layer is not None
    relu_like = activations.define(
        "relu6", lambda v: jnp.clip(v, 0, 6), lambda v, dy: jnp.where((v > 0) & (v <= 6), dy, 0),
        kinks=(0.0, 6.0), family="relu",
    )  # fmt: skip
    assert relu_like.kinks == (0.0, 6.0) and "relu6" in activations.RELU_FAMILY


def test_define_rejects_bad_arguments_and_wrong_derivatives(registry):
    with pytest.raises(TypeError, match=r"define: name must be a non-empty str, got 3"):
        activations.define(3, softsign, softsign_vjp)
    with pytest.raises(ValueError, match=r"'tanh' is already registered.*pick another name"):
        activations.define("tanh", softsign, softsign_vjp)
    with pytest.raises(TypeError, match=r"define: vjp must be a function, got str"):
        activations.define("s1", softsign, "softsign_vjp")
    with pytest.raises(ValueError, match=r"family must be 'relu' or 'smooth', got 'linear'"):
        activations.define("s2", softsign, softsign_vjp, family="linear")
    wrong = lambda x, dy: dy / (1 + jnp.abs(x))  # noqa: E731  (missing the square)
    with pytest.raises(
        ValueError, match=r"define\('s3'\): vjp disagrees with jax.vjp of fn at x = "
    ):
        activations.define("s3", softsign, wrong)
    with pytest.raises(ValueError, match=r"vjp_from_output disagrees"):
        activations.define("s4", softsign, softsign_vjp, vjp_from_output=lambda y, dy: dy)
    with pytest.raises(ValueError, match=r"vjp returned shape \(2,\) for x of shape \(2, 3\)"):
        activations.define("s5", softsign, lambda x, dy: dy[:, 0])
    assert "s3" not in activations.NAMES  # nothing registered on failure


def test_a_bare_function_gets_an_error_that_shows_define():
    with pytest.raises(
        TypeError, match=r"got the function tanh.*fnn\.activations\.define\('my_act', fn, vjp\)"
    ):
        activations.get(jnp.tanh)
    import fnn

    with pytest.raises(TypeError, match=r"define"):
        fnn.mlp([2, 3, 1], activation=jnp.tanh)
