"""Token and position embeddings: the scatter-add backward, integer inputs through models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn import backprop, layers, models


def test_scatter_add_gathers_every_use_of_a_token():
    emb = layers.embedding(5, 3)
    _, p = emb.init(jax.random.key(0), (4,), jnp.float64)
    tokens = jnp.array([[1, 1, 4, 1], [0, 4, 1, 2]])  # token 1 four times, 3 never
    dy = jax.random.normal(jax.random.key(1), (2, 4, 3), jnp.float64)
    y, res = emb.forward(p, tokens)
    np.testing.assert_array_equal(y[0, 2], p["table"][4])
    dp, dx = emb.backward(p, res, dy)
    # Independent rule: dtable[v] = sum of dy over the positions holding v.
    want = np.zeros((5, 3))
    for b in range(2):
        for t in range(4):
            want[int(tokens[b, t])] += np.asarray(dy[b, t])
    np.testing.assert_allclose(dp["table"], want, rtol=1e-14, atol=0)
    assert float(jnp.max(jnp.abs(dp["table"][3]))) == 0.0
    _, vjp = jax.vjp(lambda t: emb.forward({"table": t}, tokens)[0], p["table"])
    np.testing.assert_allclose(dp["table"], vjp(dy)[0], rtol=1e-14, atol=0)
    assert dx.dtype == jax.dtypes.float0 and dx.shape == tokens.shape


def test_float_held_tokens_look_up_the_same_rows():
    emb = layers.embedding(6, 2)
    _, p = emb.init(jax.random.key(0), (3,), jnp.float32)
    ids = jnp.array([[5, 0, 2]])
    y_int, _ = emb.forward(p, ids)
    y_float, res = emb.forward(p, ids.astype(jnp.float32))
    np.testing.assert_array_equal(y_int, y_float)
    _, dx = emb.backward(p, res, jnp.ones_like(y_float))
    assert dx.dtype == jnp.float32 and float(jnp.max(jnp.abs(dx))) == 0.0


def test_position_embedding_backward_sums_the_batch():
    pos = layers.position_embedding()
    _, p = pos.init(jax.random.key(0), (4, 3), jnp.float64)
    x = jax.random.normal(jax.random.key(1), (5, 4, 3), jnp.float64)
    dy = jax.random.normal(jax.random.key(2), (5, 4, 3), jnp.float64)
    dp, dx = pos.backward(p, pos.forward(p, x)[1], dy)
    _, vjp = jax.vjp(lambda pp, xx: pos.forward(pp, xx)[0], p, x)
    dp_ad, dx_ad = vjp(dy)
    np.testing.assert_allclose(dp["table"], dp_ad["table"], rtol=1e-14)
    np.testing.assert_array_equal(dx, dx_ad)


def token_model(dtype=jnp.float64):
    net = models.serial(
        layers.embedding(7, 4), layers.position_embedding(), layers.dense(3), layers.flatten()
    )
    return models.build(net, (5,), dtype)


def test_a_model_starting_with_an_embedding_takes_integer_x():
    model = token_model()
    assert models.takes_int_input(model)
    params = model.init(jax.random.key(0))
    x = jax.random.randint(jax.random.key(1), (6, 5), 0, 7)
    y = jax.random.normal(jax.random.key(2), (6, 15), jnp.float64)
    value, grads = jax.jit(backprop.value_and_grad(model, "mse"))(params, x, y)
    auto = jax.grad(lambda p: jnp.mean((model.apply(p, x) - y) ** 2))(params)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(auto), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    # jax.grad through the hand-written rules: the integer input gets a float0 cotangent
    bridged = backprop.manual_vjp(model)
    via_rules = jax.grad(lambda p: jnp.mean((bridged.apply(p, x) - y) ** 2))(params)
    for a, b in zip(jax.tree.leaves(via_rules), jax.tree.leaves(auto), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_integer_x_is_still_refused_by_a_model_without_an_embedding():
    model = models.build(models.serial(layers.dense(3)), (5,))
    assert not models.takes_int_input(model)
    with pytest.raises(TypeError, match="x: expected a floating dtype, got int"):
        model.apply(model.init(jax.random.key(0)), jnp.zeros((2, 5), jnp.int32))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="vocab_size must be a positive int, got 0"):
        layers.embedding(0, 4)
    with pytest.raises(ValueError, match="features must be a positive int"):
        layers.embedding(4, -1)
    emb = layers.embedding(4, 2)
    _, p = emb.init(jax.random.key(0), (3,), jnp.float32)
    with pytest.raises(TypeError, match=r"tokens x must be integers in \[0, 4\)"):
        emb.forward(p, jnp.zeros((1, 3), jnp.complex64))
    with pytest.raises(ValueError, match="put it after an embedding"):
        layers.position_embedding().init(jax.random.key(0), (3,), jnp.float32)
