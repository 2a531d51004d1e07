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


@settings(max_examples=15, deadline=None)
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
