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


@settings(max_examples=15, deadline=None)
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
