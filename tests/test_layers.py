"""Every layer's hand-written backward against jax.vjp of its apply, plus bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fnn import activations, layers


def rel_err(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), 1e-300)))


def assert_backward_matches_vjp(layer, in_shape, batch=5, key=None, train=False, seed=0, jit=False):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    out_shape, params = layer.init(k1, in_shape, jnp.float64)
    x = jax.random.normal(k2, (batch, *in_shape), jnp.float64)
    act = layers.info(layer, "activation")
    if act is not None:  # keep random inputs off kinks
        for kink in act.kinks:
            x = jnp.where(jnp.abs(x - kink) < 1e-3, x + 0.01, x)
    dy = jax.random.normal(k3, (batch, *out_shape), jnp.float64)

    def fwd(p, xx):
        return layers.apply(layer, p, xx, key=key, train=train)

    y, pullback = jax.vjp(fwd, params, x)
    assert y.shape == (batch, *out_shape)
    want_dp, want_dx = pullback(dy)

    def manual(p, xx, d):
        _, res = layer.forward(p, xx, key=key, train=train)
        return layer.backward(p, res, d)

    got_dp, got_dx = (jax.jit(manual) if jit else manual)(params, x, dy)
    assert jax.tree.structure(got_dp) == jax.tree.structure(params)
    assert rel_err(got_dx, want_dx) <= 1e-10
    for g, w in zip(jax.tree.leaves(got_dp), jax.tree.leaves(want_dp), strict=True):
        assert g.shape == w.shape
        assert rel_err(g, w) <= 1e-10


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name", activations.NAMES)
def test_activation_layer(name, jit):
    assert_backward_matches_vjp(layers.activation(name), (6,), jit=jit)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_dense(jit):
    assert_backward_matches_vjp(layers.dense(4), (3,), jit=jit)


@settings(max_examples=6, deadline=None)
@given(fan_in=st.integers(1, 7), fan_out=st.integers(1, 7), batch=st.integers(1, 6))
def test_dense_any_shape(fan_in, fan_out, batch):
    assert_backward_matches_vjp(layers.dense(fan_out), (fan_in,), batch=batch)


@settings(max_examples=6, deadline=None)
@given(lead=st.lists(st.integers(1, 4), min_size=1, max_size=2), fan_out=st.integers(1, 5))
def test_dense_on_the_last_axis_of_sequences(lead, fan_out):
    # [batch, seq, features] -> [batch, seq, fan_out]: the weights are shared along seq.
    assert_backward_matches_vjp(layers.dense(fan_out), (*lead, 3), batch=2)


def test_custom_layer_with_and_without_backward():
    def apply(p, x):
        return jnp.sin(x) * p["a"][None, :]

    def init(key, in_shape, dtype):
        return tuple(in_shape), {"a": jnp.full(in_shape, 1.5, dtype)}

    def backward(p, x, y, dy):
        return {"a": jnp.sum(jnp.sin(x) * dy, axis=0)}, jnp.cos(x) * p["a"][None, :] * dy

    manual = layers.custom(apply, init=init, backward=backward, name="sine")
    auto = layers.custom(apply, init=init)
    assert manual.rule == "manual" and auto.rule == "autodiff"
    assert manual.name == "sine" and auto.name == "apply"
    assert_backward_matches_vjp(manual, (3,))
    assert_backward_matches_vjp(auto, (3,), jit=True)


def test_custom_layer_default_init_infers_the_output_shape():
    pool = layers.custom(lambda p, x: x.reshape(x.shape[0], -1, 2).sum(-1))
    assert pool.init(jax.random.key(0), (6,), jnp.float32) == ((3,), {})
    with pytest.raises(TypeError, match="custom: apply must be callable, got int"):
        layers.custom(3)
    with pytest.raises(TypeError, match="custom: backward must be callable or None, got str"):
        layers.custom(jnp.sin, backward="grad")


def test_flatten():
    assert_backward_matches_vjp(layers.flatten(), (2, 3, 2))


@pytest.mark.parametrize("train", [False, True])
def test_dropout_backward_uses_the_same_mask(train):
    layer = layers.dropout(0.5)
    assert_backward_matches_vjp(layer, (40,), key=jax.random.key(7), train=train)


def test_dropout_statistics_and_eval_identity():
    layer = layers.dropout(0.25)
    x = jnp.ones((200, 100), jnp.float64)
    y = layers.apply(layer, {}, x, key=jax.random.key(0), train=True)
    dropped = float(jnp.mean(y == 0))
    assert 0.22 < dropped < 0.28  # rate is the probability of dropping
    assert float(jnp.mean(y)) == pytest.approx(1.0, abs=0.03)  # inverted scaling
    np.testing.assert_array_equal(layers.apply(layer, {}, x, train=False), x)
    with pytest.raises(ValueError, match="needs a key"):
        layers.apply(layer, {}, x, train=True)
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\), got 1.0"):
        layers.dropout(1.0)


def test_default_initialisers():
    relu_init = layers.default_w_init("relu")
    tanh_init = layers.default_w_init("tanh")
    w = relu_init(jax.random.key(0), (400, 300), jnp.float64)
    v = tanh_init(jax.random.key(0), (400, 300), jnp.float64)
    assert float(jnp.var(w)) == pytest.approx(2.0 / 400, rel=0.05)  # He
    assert float(jnp.var(v)) == pytest.approx(2.0 / 700, rel=0.05)  # Glorot


def test_dense_bad_input():
    lin = layers.dense(3)
    _, p = lin.init(jax.random.key(0), (4,), jnp.float64)
    with pytest.raises(
        ValueError, match=r"dense\(3\): input x must have shape \[batch, \.\.\., 4\], got \(2, 5\)"
    ):
        layers.apply(lin, p, jnp.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"shape \[batch, \.\.\., 4\], got \(4,\)"):
        layers.apply(lin, p, jnp.zeros((4,)))
    with pytest.raises(TypeError, match=r"floating dtype, got int32"):
        layers.apply(lin, p, jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(ValueError, match=r"fan_out must be a positive int, got 0"):
        layers.dense(0)
    with pytest.raises(ValueError, match=r"expects inputs \[batch, \.\.\., fan_in\]"):
        lin.init(jax.random.key(0), (), jnp.float32)
