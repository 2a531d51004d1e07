"""Attention's hand-written backward: against jax.vjp, finite differences, and planted bugs.

Shapes are tiny (seq <= 8, features 8) so the file runs in seconds. The planted bugs wrap the
real rule (``core_backward``, ``softmax_backward``) with one thing wrong, so every test below
that passes with the real rule and fails with a wrapper is about that one thing.
"""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn import check, layers, models

attention_module = importlib.import_module("fnn.layers.attention")
F = 8


def rel_err(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-300))


def setup(heads, seq, causal, keep="probs", dtype=jnp.float64, head_dim=None, batch=3):
    att = layers.attention(heads, causal=causal, keep=keep, head_dim=head_dim)
    _, p = att.init(jax.random.key(0), (seq, F), dtype)
    k1, k2 = jax.random.split(jax.random.key(1))
    x = jax.random.normal(k1, (batch, seq, F), dtype)
    dy = jax.random.normal(k2, (batch, seq, F), dtype)
    return att, p, x, dy


@jax.jit(static_argnums=0)
def both(att, p, x, dy):
    """The layer's output and backward, and jax.vjp's, in one compiled call (fewer compiles)."""
    y, res = att.forward(p, x)
    y_ad, vjp = jax.vjp(lambda pp, xx: att.forward(pp, xx)[0], p, x)
    return y, y_ad, att.backward(p, res, dy), vjp(dy)


@pytest.mark.parametrize(
    "heads, seq, head_dim, causal, keep",
    [
        (1, 1, None, False, "probs"),
        (2, 5, None, False, "probs"),
        (4, 8, None, True, "probs"),
        (3, 4, 5, True, "probs"),
        (2, 5, None, True, "lse"),
        (4, 8, None, False, "lse"),
    ],
)
def test_backward_equals_jax_vjp_float64(heads, seq, head_dim, causal, keep):
    att, p, x, dy = setup(heads, seq, causal, keep, head_dim=head_dim)
    y, y_ad, (dp, dx), (dp_ad, dx_ad) = both(att, p, x, dy)
    np.testing.assert_array_equal(y, y_ad)
    assert rel_err(dx, dx_ad) <= 1e-10
    for name in ("wq", "wk", "wv", "wo", "bo"):
        assert rel_err(dp[name], dp_ad[name]) <= 1e-10, name


def test_keep_lse_gives_the_gradients_of_keep_probs():
    att_p, p, x, dy = setup(2, 6, True, "probs")
    att_l = layers.attention(2, causal=True, keep="lse")
    gp = att_p.backward(p, att_p.forward(p, x)[1], dy)
    gl = att_l.backward(p, att_l.forward(p, x)[1], dy)
    for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(gl), strict=True):
        assert rel_err(a, b) <= 1e-12
    # What each keeps of the softmax: [b, h, t, t] probabilities or one number per row.
    assert att_p.forward(p, x)[1][-1].shape == (3, 2, 6, 6)
    assert att_l.forward(p, x)[1][-1].shape == (3, 2, 6, 1)


@pytest.mark.parametrize("keep", ["probs", "lse"])
def test_causal_backward_sends_nothing_to_later_positions(keep):
    att, p, x, _ = setup(2, 5, True, keep)
    y, res = att.forward(p, x)
    dy = jnp.zeros_like(y).at[:, 1].set(1.0)  # a loss on position 1 only
    _, dx = att.backward(p, res, dy)
    assert float(jnp.max(jnp.abs(dx[:, 2:]))) == 0.0
    assert float(jnp.max(jnp.abs(dx[:, :2]))) > 0.0
    # and the forward agrees: later inputs do not move position 1
    x2 = x.at[:, 2:].add(1.0)
    np.testing.assert_array_equal(att.forward(p, x2)[0][:, :2], y[:, :2])


def test_float32_stays_float32_and_matches_vjp():
    att, p, x, dy = setup(2, 6, True, dtype=jnp.float32)
    y, _, (dp, dx), (dp_ad, dx_ad) = both(att, p, x, dy)
    assert y.dtype == dx.dtype == jnp.float32
    assert {v.dtype for v in dp.values()} == {jnp.dtype(jnp.float32)}
    assert rel_err(dx, dx_ad) <= 1e-5
    for name in dp:
        assert rel_err(dp[name], dp_ad[name]) <= 1e-5, name


def block_model(causal=True, keep="probs"):
    """A pre-norm transformer block: residual(layer_norm, attention), then the MLP."""
    return models.build(
        models.serial(
            models.residual(layers.layer_norm(), layers.attention(2, causal=causal, keep=keep)),
            models.residual(
                layers.layer_norm(), layers.dense(16), layers.activation("tanh"), layers.dense(F)
            ),
        ),
        (4, F),
        jnp.float64,
    )


def block_data(model):
    params = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, 4, F), jnp.float64)
    y = jax.random.normal(jax.random.key(2), (2, 4, F), jnp.float64)
    return params, x, y


def test_transformer_block_agrees_with_autodiff_and_finite_differences():
    model = block_model(causal=True)
    params, x, y = block_data(model)
    report = check.check_model(model, "mse", params, x, y, max_coords=24, directions=2)
    assert report.ok, str(report)
    assert report.max_rel_err <= 1e-10
    assert report.fd_max_rel_err <= 1e-6


ATT = "[0][1]"


def _scale_missing(real):
    def core(q, k, v, saved, do, *, scale, causal, keep="probs"):
        return real(q, k, v, saved, do, scale=1.0, causal=causal, keep=keep)

    return core


def _mask_forgotten(real):
    # keep="lse": the backward rebuilds P from Q K^T, here without the causal mask
    def core(q, k, v, saved, do, *, scale, causal, keep="probs"):
        return real(q, k, v, saved, do, scale=scale, causal=False, keep=keep)

    return core


def _keys_queries_swapped(real):
    def core(q, k, v, saved, do, *, scale, causal, keep="probs"):
        return real(k, q, v, saved, do, scale=scale, causal=causal, keep=keep)

    return core


@pytest.mark.parametrize(
    "bug, keep, wrong, right",
    [
        (_scale_missing, "probs", ["wq", "wk"], ["wv", "wo", "bo"]),
        (_mask_forgotten, "lse", ["wq", "wk", "wv"], ["wo", "bo"]),
        (_keys_queries_swapped, "probs", ["wq", "wk"], ["wv", "wo", "bo"]),
    ],
    ids=["scale_missing", "mask_forgotten", "keys_queries_swapped"],
)
def test_planted_core_bugs_are_caught_and_named(monkeypatch, bug, keep, wrong, right):
    model = block_model(causal=True, keep=keep)
    params, x, y = block_data(model)
    assert check.check_model(model, "mse", params, x, y, fd=False).ok  # the real rule passes
    monkeypatch.setattr(attention_module, "core_backward", bug(attention_module.core_backward))
    report = check.check_model(model, "mse", params, x, y, fd=False)
    failed = set(report.failed)
    assert {f"{ATT}['{w}']" for w in wrong} <= failed, str(report)
    assert not {f"{ATT}['{w}']" for w in right} & failed, str(report)
    # the block after the attention is untouched by a bug inside it
    assert not {p for p in failed if p.startswith("[1]")}, str(report)


def test_planted_diagonal_softmax_jacobian_is_caught_and_named(monkeypatch):
    model = block_model(causal=False)
    params, x, y = block_data(model)
    monkeypatch.setattr(attention_module, "softmax_backward", lambda p, dp: p * (1 - p) * dp)
    report = check.check_model(model, "mse", params, x, y, fd=False)
    assert {f"{ATT}['wq']", f"{ATT}['wk']"} <= set(report.failed), str(report)
    assert f"{ATT}['wv']" not in report.failed


def test_layer_norm_backward_equals_jax_vjp():
    ln = layers.layer_norm()
    _, p = ln.init(jax.random.key(0), (4, F), jnp.float64)
    p = {"g": p["g"] + 0.3, "b": p["b"] - 0.2}
    x = jax.random.normal(jax.random.key(1), (3, 4, F), jnp.float64)
    dy = jax.random.normal(jax.random.key(2), (3, 4, F), jnp.float64)
    dp, dx = ln.backward(p, ln.forward(p, x)[1], dy)
    _, vjp = jax.vjp(lambda pp, xx: ln.forward(pp, xx)[0], p, x)
    dp_ad, dx_ad = vjp(dy)
    assert rel_err(dx, dx_ad) <= 1e-10
    assert rel_err(dp["g"], dp_ad["g"]) <= 1e-10
    assert rel_err(dp["b"], dp_ad["b"]) <= 1e-10


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="heads must be a positive int, got 0"):
        layers.attention(0)
    with pytest.raises(ValueError, match="keep must be one of"):
        layers.attention(2, keep="all")
    with pytest.raises(ValueError, match=r"features \(8\) must be divisible by heads \(3\)"):
        layers.attention(3).init(jax.random.key(0), (4, 8), jnp.float32)
    with pytest.raises(ValueError, match=r"expects inputs \[batch, seq, features\]"):
        layers.attention(2).init(jax.random.key(0), (8,), jnp.float32)
    att, p, _, _ = setup(2, 4, False)
    with pytest.raises(
        ValueError, match=r"input x must have shape \[batch, seq, 8\], got \(2, 4, 6\)"
    ):
        att.forward(p, jnp.zeros((2, 4, 6)))
