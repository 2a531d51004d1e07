"""batch_norm and layer_norm: three-term backwards, running statistics as state, planted bug."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fnn import backprop, check, layers, models


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b), initial=0.0) / max(np.max(np.abs(b), initial=0.0), 1e-300))


def random_case(layer, shape, seed, dtype):
    """Params, state (random, not the initial ones), x and dy for ``layer`` on ``shape``."""
    k = jax.random.split(jax.random.key(seed), 6)
    c = shape[-1]
    params = {
        "scale": 1 + jax.random.normal(k[0], (c,), dtype),
        "offset": jax.random.normal(k[1], (c,), dtype),
    }
    state = {
        "mean": jax.random.normal(k[2], (c,), dtype),
        "var": jax.random.uniform(k[3], (c,), dtype, 0.5, 2.0),
    }
    x = 3 + 2 * jax.random.normal(k[4], shape, dtype)
    dy = jax.random.normal(k[5], shape, dtype)
    return params, state, x, dy


def errors(layer, shape, seed, train, dtype=jnp.float64):
    params, state, x, dy = random_case(layer, shape, seed, dtype)

    @jax.jit
    def both(params, x, dy):
        _, res = layer.forward(params, x, train=train, state=state)
        manual = layer.backward(params, res, dy)
        _, vjp = jax.vjp(lambda p, xx: layer.forward(p, xx, train=train, state=state)[0], params, x)
        return manual, vjp(dy)

    (dp, dx), (ap, ax) = both(params, x, dy)
    assert dx.dtype == jnp.dtype(dtype)
    return {"x": rel_err(dx, ax), **{n: rel_err(dp[n], ap[n]) for n in ap}}


@settings(max_examples=6, deadline=None)
@given(
    shape=st.sampled_from([(5, 3), (4, 3, 2, 4), (2, 2, 5, 3), (3, 2, 4)]),
    kind=st.sampled_from(["batch_norm/train", "batch_norm/eval", "layer_norm"]),
    seed=st.integers(0, 1000),
)
def test_norm_backward_equals_vjp_in_float64(shape, kind, seed):
    layer = layers.layer_norm() if kind == "layer_norm" else layers.batch_norm()
    errs = errors(layer, shape, seed, train=kind.endswith("train"))
    assert set(errs) == {"x", "scale", "offset"}
    assert max(errs.values()) <= 1e-10, errs


@pytest.mark.parametrize("kind", ["batch_norm", "layer_norm"])
def test_norm_backward_in_float32(kind):
    errs = errors(getattr(layers, kind)(), (6, 3, 3, 4), 1, train=True, dtype=jnp.float32)
    assert max(errs.values()) <= 1e-5, errs


def bn_cnn(norm, dtype=jnp.float64):
    return models.build(
        models.serial(
            layers.reshape((4, 4, 2)),
            # no bias: batch norm subtracts the mean, so a bias's true gradient is exactly 0
            # and only round-off would be compared
            layers.conv2d(3, 3, use_bias=False, w_init=jax.nn.initializers.normal(0.5)),
            norm,
            layers.activation("tanh"),
            layers.global_avg_pool(),
            layers.dense(3),
        ),
        (32,),
        dtype,
    )


def check_bn_cnn(norm, fd=True):
    model = bn_cnn(norm)
    params = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (6, 32), jnp.float64)
    y = jnp.arange(6) % 3
    return check.check_model(model, "softmax_cross_entropy", params, x, y, train=True, fd=fd)


@pytest.mark.parametrize("kind", ["batch_norm", "layer_norm"])
def test_cnn_with_norm_agrees_with_autodiff_and_finite_differences(kind):
    report = check_bn_cnn(getattr(layers, kind)())
    assert report.ok, str(report)
    assert report.max_rel_err <= 1e-10
    assert all(r.fd is not None and r.fd.ok for r in report.rows)


def test_planted_batch_norm_without_the_mean_term_is_caught_and_named():
    good = layers.batch_norm()

    def no_mean_term(params, res, dy):
        grads, _ = good.backward(params, res, dy)
        xhat, inv_std = res[0], res[1]  # residuals documented as (xhat, inv_std, mu, var)
        dxhat = dy * params["scale"].reshape(1, 1, 1, -1)
        var_term = xhat * jnp.mean(dxhat * xhat, axis=(0, 1, 2), keepdims=True)
        return grads, (dxhat - var_term) * inv_std

    report = check_bn_cnn(good._replace(backward=no_mean_term), fd=False)
    # the bug is in dx: the convolution before the norm is wrong, the norm's own params are not
    assert report.failed == ["[1]['w']"], report.failed


def test_running_statistics_follow_the_momentum_and_serve_evaluation():
    layer = models.serial(layers.batch_norm(momentum=0.8), layers.dense(2))
    model = models.build(layer, (3,), jnp.float64)
    params = model.init(jax.random.key(0))
    x = 3 + 2 * jax.random.normal(jax.random.key(1), (64, 3), jnp.float64)
    y = jnp.arange(64) % 2
    assert model.stateful
    state = model.init_state()
    assert jnp.all(state[0]["mean"] == 0) and jnp.all(state[0]["var"] == 1)
    step = jax.jit(
        backprop.value_grad_state(model, "softmax_cross_entropy"), static_argnames="train"
    )
    for _ in range(30):
        _, grads, state = step(params, x, y, train=True, state=state)
        params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    mean, var = x.mean(0), x.var(0)
    np.testing.assert_allclose(state[0]["mean"], (1 - 0.8**30) * mean, rtol=1e-12)
    np.testing.assert_allclose(state[0]["var"], 0.8**30 + (1 - 0.8**30) * var, rtol=1e-12)
    # with the running statistics near the batch's, evaluation output is the training output
    train_out = model.apply(params, x, train=True, state=state)
    eval_out = model.apply(params, x, train=False, state=state)
    np.testing.assert_allclose(eval_out, train_out, atol=1e-2)
    # an evaluation step leaves the state alone
    _, _, same = step(params, x, y, train=False, state=state)
    assert all(
        jnp.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(state), strict=True)
    )


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match=r"batch_norm: momentum must be a number in \[0.0, 1.0\)"):
        layers.batch_norm(momentum=1.5)
    with pytest.raises(ValueError, match=r"layer_norm: eps must be a number"):
        layers.layer_norm(eps=-1)
    bn = layers.batch_norm()
    _, p = bn.init(jax.random.key(0), (3,), jnp.float32)
    with pytest.raises(ValueError, match=r"train=False needs state"):
        bn.forward(p, jnp.zeros((2, 3), jnp.float32), train=False)
    with pytest.raises(ValueError, match=r"shape \[batch, \.\.\., 3\], got \(2, 4\)"):
        bn.forward(p, jnp.zeros((2, 4), jnp.float32), train=True)
