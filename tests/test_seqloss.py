"""Sequence cross-entropy: hand-written gradient, masking, token accuracy, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn import seqloss

B, T, C = 3, 4, 5


def data():
    logits = jax.random.normal(jax.random.key(0), (B, T, C), jnp.float64) * 2
    targets = jax.random.randint(jax.random.key(1), (B, T), 0, C)
    return logits, targets


def test_value_is_the_mean_negative_log_probability_over_tokens():
    logits, targets = data()
    z = np.asarray(logits)
    want = 0.0
    for b in range(B):
        for t in range(T):
            row = z[b, t]
            want += -(row[int(targets[b, t])] - math.log(np.exp(row).sum()))
    assert float(seqloss.cross_entropy(logits, targets)) == pytest.approx(want / (B * T), 1e-13)


@pytest.mark.parametrize("masked", [False, True])
def test_hand_written_gradient_equals_jax_grad(masked):
    logits, targets = data()
    mask = (jnp.arange(T)[None, :] < jnp.array([[4], [2], [1]])) if masked else None
    manual = seqloss.cross_entropy_grad(logits, targets, mask)
    auto = jax.grad(seqloss.cross_entropy)(logits, targets, mask)
    np.testing.assert_allclose(manual, auto, rtol=1e-12, atol=1e-16)
    if masked:
        assert float(jnp.max(jnp.abs(manual[1, 2:]))) == 0.0


def test_negative_targets_are_the_record_s_mask():
    logits, targets = data()
    mask = jnp.arange(T)[None, :] < jnp.array([[4], [2], [1]])
    padded = jnp.where(mask, targets, -1)
    loss = seqloss.sequence_cross_entropy
    assert float(loss.fn(logits, padded)) == pytest.approx(
        float(seqloss.cross_entropy(logits, targets, mask)), 1e-14
    )
    np.testing.assert_array_equal(
        loss.grad(logits, padded), seqloss.cross_entropy_grad(logits, targets, mask)
    )
    # only the 7 counted tokens enter the mean
    sub = seqloss.cross_entropy(logits[:1], targets[:1])
    assert float(loss.fn(logits[:1], padded[:1])) == pytest.approx(float(sub), 1e-14)


def test_token_accuracy_counts_only_counted_tokens():
    logits = jax.nn.one_hot(jnp.array([[0, 1, 2, 3]]), C, dtype=jnp.float32)
    assert float(seqloss.token_accuracy(logits, jnp.array([[0, 1, 0, 0]]))) == 0.5
    assert float(seqloss.token_accuracy(logits, jnp.array([[0, 1, -1, -1]]))) == 1.0
    assert float(
        seqloss.token_accuracy(logits, jnp.array([[0, 1, 0, 0]]), jnp.array([[1, 0, 1, 1]]))
    ) == pytest.approx(1 / 3)


def test_errors_name_the_argument():
    logits, targets = data()
    with pytest.raises(ValueError, match=r"targets must have shape \(3, 4\)"):
        seqloss.cross_entropy(logits, targets[:, :2])
    with pytest.raises(TypeError, match="targets must be integer classes"):
        seqloss.cross_entropy(logits, targets.astype(jnp.float32))
    with pytest.raises(ValueError, match=r"logits must be \[batch, seq, classes\]"):
        seqloss.cross_entropy(logits[0], targets[0])
    with pytest.raises(ValueError, match="mask must have the shape of targets"):
        seqloss.cross_entropy(logits, targets, jnp.ones((3,), bool))
