"""serial, build and mlp: composition, backward of a whole serial, parameter checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import layers, models


def rel_err(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), 1e-300)))


def test_mlp_structure_and_init_choice():
    model = fnn.mlp([5, 7, 3, 2], activation="relu", dtype=jnp.float64)
    params = model.init(jax.random.key(0))
    shapes = [{k: v.shape for k, v in p.items()} for p in params]
    assert shapes == [
        {"w": (5, 7), "b": (7,)},
        {},
        {"w": (7, 3), "b": (3,)},
        {},
        {"w": (3, 2), "b": (2,)},
    ]
    assert all(v.dtype == jnp.float64 for v in jax.tree.leaves(params))
    assert model.in_shape == (5,) and model.out_shape == (2,)
    # Biases start at zero.
    assert all(float(jnp.abs(p["b"]).max()) == 0.0 for p in params if p)


def test_serial_nests_and_its_backward_matches_vjp():
    inner = models.serial(layers.dense(6), layers.activation("tanh"))
    net = models.serial(layers.flatten(), inner, layers.dropout(0.3), layers.dense(2))
    model = models.build(net, (2, 3), jnp.float64)
    params = model.init(jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (4, 2, 3), jnp.float64)
    key = jax.random.key(3)
    y, pull = jax.vjp(lambda p, xx: model.apply(p, xx, key=key, train=True), params, x)
    dy = jax.random.normal(jax.random.key(4), y.shape, jnp.float64)
    want_p, want_x = pull(dy)
    _, res = model.forward(params, x, key=key, train=True)
    got_p, got_x = model.backward(params, res, dy)
    assert rel_err(got_x, want_x) <= 1e-10
    for g, w in zip(jax.tree.leaves(got_p), jax.tree.leaves(want_p), strict=True):
        assert rel_err(g, w) <= 1e-10


def test_same_key_same_dropout_mask():
    model = fnn.mlp([3, 50, 2], dropout=0.5, dtype=jnp.float64)
    params = model.init(jax.random.key(0))
    x = jnp.ones((2, 3), jnp.float64)
    a = model.apply(params, x, key=jax.random.key(5), train=True)
    b = model.apply(params, x, key=jax.random.key(5), train=True)
    c = model.apply(params, x, key=jax.random.key(6), train=True)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    ("sizes", "pattern"),
    [
        ([3], r"sizes: expected \[in_features, \.\.\., out_features\] with at least 2"),
        ([3, 0, 2], r"sizes\[1\]: expected a positive int, got 0"),
        ([3, 2.5, 2], r"sizes\[1\]: expected a positive int, got 2.5"),
        ("32", r"sizes: expected"),
    ],
)
def test_mlp_bad_sizes(sizes, pattern):
    with pytest.raises(ValueError, match=pattern):
        fnn.mlp(sizes)


def test_mlp_unknown_activation():
    with pytest.raises(ValueError, match=r"unknown activation 'sigmod'.*sigmoid"):
        fnn.mlp([2, 3, 1], activation="sigmod")


def test_model_checks_input_and_params():
    model = fnn.mlp([4, 8, 3], dtype=jnp.float64)
    params = model.init(jax.random.key(0))
    with pytest.raises(
        ValueError, match=r"x: expected shape \[batch, 4\] for layer 0.*got \(2, 5\)"
    ):
        model.apply(params, jnp.zeros((2, 5)))
    with pytest.raises(TypeError, match=r"x: expected a floating dtype, got int"):
        model.apply(params, jnp.zeros((2, 4), jnp.int32))
    other = fnn.mlp([4, 9, 3], dtype=jnp.float64).init(jax.random.key(0))
    with pytest.raises(
        ValueError,
        match=r"params\[0\]\['b'\] \(layer 0, dense\(8\)\): expected shape \(8,\), got \(9,\)",
    ):
        model.apply(other, jnp.zeros((2, 4)))
    with pytest.raises(
        ValueError, match=r"one entry per layer \(3: dense\(8\), relu, dense\(3\)\)"
    ):
        model.apply(params[:2], jnp.zeros((2, 4)))
    broken = [params[0], {"w": params[0]["w"]}, params[2]]
    with pytest.raises(ValueError, match=r"params\[1\] \(layer 1, relu\): expected \{\}"):
        model.apply(broken, jnp.zeros((2, 4)))


def test_params_error_shows_the_expected_structure():
    # The port of JAX's mnist_classifier_fromscratch passes [(w, b), ...]: the message must
    # show what an entry is instead.
    model = fnn.mlp([4, 8, 3], activation="tanh", dtype=jnp.float64)
    params = model.init(jax.random.key(0))
    pairs = [(p["w"], p["b"]) for p in params if p]
    with pytest.raises(ValueError) as err:
        model.apply(pairs, jnp.zeros((2, 4)))
    msg = str(err.value)
    assert "[{'b': (8,), 'w': (4, 8)}, {}, {'b': (3,), 'w': (8, 3)}]" in msg
    assert "got list of length 2: [((4, 8), (8,)), ((8, 3), (3,))]" in msg


def test_mlp_takes_initialisers_and_activation_records():
    w_init = jax.nn.initializers.normal(0.1)
    b_init = jax.nn.initializers.constant(0.5)
    model = fnn.mlp(
        [50, 60, 3],
        activation=fnn.activations.get("tanh"),
        w_init=w_init,
        b_init=b_init,
        dtype=jnp.float64,
    )
    params = model.init(jax.random.key(0))
    assert float(jnp.std(params[0]["w"])) == pytest.approx(0.1, rel=0.05)
    np.testing.assert_array_equal(params[2]["b"], np.full(3, 0.5))
    assert models.sublayers(model)["[1]"].name == "tanh"
    with pytest.raises(TypeError, match=r"w_init: expected a jax.nn.initializers-style"):
        fnn.mlp([2, 2], w_init="normal")
