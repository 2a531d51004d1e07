"""fnn's own arithmetic under ``jax_numpy_dtype_promotion="strict"``.

Strict promotion raises wherever two dtypes meet without an explicit cast (int32 labels against
int64 ones, a bool mask divided by an int count, a Python float against an int32 counter), so
dtype drift is caught where it starts instead of being cast away later (``train.step.strong``
and its ``_match`` still cast what optax returns). Strict cannot be the session's default:
optax itself mixes a Python float with its int32 step counter (``adam``'s bias correction,
every schedule), so the training paths here run ``optax.sgd`` with a constant rate, which is
strict-clean. Everything else runs as users call it, float32 and float64.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn import activations, backprop, check, layers, losses, models, train

DTYPES = [jnp.float32, jnp.float64]


@pytest.fixture(autouse=True)
def strict():
    with jax.numpy_dtype_promotion("strict"):
        yield


def test_strict_mode_is_on_in_this_module():
    with pytest.raises(jax.dtypes.TypePromotionError):
        jnp.ones(2, jnp.int32) + jnp.ones(2, jnp.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", activations.NAMES)
def test_activation_forward_vjp_and_autodiff_are_strict_clean(name, dtype):
    act = activations.get(name)
    x = jnp.linspace(-3, 3, 12, dtype=dtype).reshape(3, 4)
    y = act.fn(x)
    dx = act.vjp(x, jnp.ones_like(x))
    ad = jax.grad(lambda z: jnp.sum(act.fn(z)))(x)
    assert y.dtype == dx.dtype == ad.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", losses.NAMES)
def test_loss_value_gradient_and_accuracy_are_strict_clean(name, dtype):
    loss = losses.get(name)
    pred = jnp.linspace(-2, 2, 12, dtype=dtype).reshape(3, 4)
    if name == "softmax_cross_entropy":
        targets = [jnp.array([0, 3, 1], jnp.int32), jnp.array([0, 3, 1], jnp.int64)]
    else:
        targets = [jnp.eye(4, dtype=dtype)[:3]]
    for t in targets:
        value, g = loss.fn(pred, t), loss.grad(pred, t)
        assert value.dtype == g.dtype == jax.grad(loss.fn)(pred, t).dtype == dtype
        if loss.accuracy is not None:
            assert loss.accuracy(pred, t).dtype == dtype


def _cnn(dtype):
    net = models.serial(
        layers.conv2d(4, 3),
        layers.batch_norm(),
        layers.activation("relu"),
        layers.max_pool(2),
        layers.avg_pool(2),
        layers.global_avg_pool(),
        layers.dense(8),
        layers.layer_norm(),
        layers.dropout(0.5),
        layers.dense(3),
    )
    return models.build(net, (8, 8, 2), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_layer_forward_and_backward_are_strict_clean(dtype):
    cnn = _cnn(dtype)
    params = cnn.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 2), dtype)
    y = jnp.array([0, 1, 2, 0], jnp.int32)
    # jit: strict promotion acts while tracing, and one compile is cheaper than op-by-op
    value, grads = jax.jit(backprop.value_and_grad(cnn, "softmax_cross_entropy"))(params, x, y)
    assert value.dtype == dtype
    assert {leaf.dtype for leaf in jax.tree.leaves(grads)} == {jnp.dtype(dtype)}

    seq = models.build(
        models.serial(
            layers.embedding(10, 16),
            layers.position_embedding(),
            models.residual(layers.layer_norm(), layers.attention(2, causal=True)),
            layers.dense(10),
        ),
        (5,),
        dtype,
    )
    params = seq.init(jax.random.key(0))
    tokens = jnp.array([[1, 2, 3, 4, 5], [0, 9, 8, 7, 6]], jnp.int32)
    target = jnp.zeros((2, 5, 10), dtype)
    value, grads = jax.jit(backprop.value_and_grad(seq, "mse"))(params, tokens, target)
    assert {leaf.dtype for leaf in jax.tree.leaves(grads)} == {jnp.dtype(dtype)}


@pytest.mark.parametrize("dtype", DTYPES)
def test_check_model_is_strict_clean(dtype):
    model = fnn.mlp([4, 8, 3], dtype=dtype)
    params = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (5, 4), dtype)
    report = check.check_model(
        model, "softmax_cross_entropy", params, x, jnp.array([0, 1, 2, 0, 1])
    )
    assert report.ok, str(report)


@pytest.mark.parametrize("dtype", DTYPES)
def test_training_paths_are_strict_clean_with_a_strict_optimizer(dtype):
    model = fnn.mlp([4, 8, 3], dtype=dtype, dropout=0.2)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(dtype)
    y = np.arange(64) % 3  # int64 labels, as numpy gives them
    sgd = optax.sgd(0.1)
    for grad in ("manual", "autodiff"):
        state, hist = train.fit(
            model,
            "softmax_cross_entropy",
            sgd,
            (x, y),
            epochs=2,
            batch_size=16,
            key=jax.random.key(0),
            progress=False,
            eval_data=(x, y),
            grad=grad,
        )
        assert int(state.step) == 8 and len(hist["train_loss"]) == 2
        step = train.make_step(
            model, "softmax_cross_entropy", sgd, grad=grad, accuracy=True, grad_norm=True
        )
        start = train.init_state(model.init(jax.random.key(0)), sgd, jax.random.key(1))
        new, metrics = step(start, jnp.asarray(x[:8]), jnp.asarray(y[:8]))
        assert {m.dtype for m in metrics.values()} == {jnp.dtype(dtype)}
    states, _ = train.fit_many(
        model,
        "softmax_cross_entropy",
        sgd,
        (x, y),
        epochs=1,
        batch_size=16,
        seeds=[0, 1],
        progress=False,
    )
    assert int(states.step[1]) == 4
