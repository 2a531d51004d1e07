"""Optimizers and schedules by name: each one the optax recipe it claims to be."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn import optim

TARGET = jnp.array([3.0, -2.0], jnp.float64)


def descend(opt, steps=30):
    """Minimise |w - TARGET|^2 from 0; returns the final distance and the last state."""
    w = jnp.zeros(2, jnp.float64)
    state = opt.init(w)
    grad = jax.grad(lambda v: jnp.sum((v - TARGET) ** 2))
    for _ in range(steps):
        updates, state = opt.update(grad(w), state, w)
        w = optax.apply_updates(w, updates)
    return float(jnp.linalg.norm(w - TARGET)), w, state


@pytest.mark.parametrize("name", optim.NAMES)
def test_every_optimizer_descends_and_exposes_its_learning_rate(name):
    opt = optim.get(name, 0.05)
    dist, _, state = descend(opt)
    assert dist < 0.9 * float(jnp.linalg.norm(TARGET)), name
    assert float(optim.learning_rate(state)) == pytest.approx(0.05)


@pytest.mark.parametrize(
    "name,reference",
    [
        ("gd", lambda: optax.sgd(0.05)),
        ("sgd", lambda: optax.sgd(0.05)),
        ("momentum", lambda: optax.sgd(0.05, momentum=0.9)),
        ("nesterov", lambda: optax.sgd(0.05, momentum=0.9, nesterov=True)),
        ("adam", lambda: optax.adam(0.05)),
        ("adamw", lambda: optax.adamw(0.05, weight_decay=1e-4)),
        ("rmsprop", lambda: optax.rmsprop(0.05)),
        ("adagrad", lambda: optax.adagrad(0.05)),
    ],
)
def test_each_name_is_the_optax_recipe(name, reference):
    _, w, _ = descend(optim.get(name, 0.05), steps=5)
    _, w_ref, _ = descend(reference(), steps=5)
    np.testing.assert_allclose(w, w_ref, rtol=1e-12)


def test_schedules_take_the_documented_values():
    def rate(**kw):
        opt = optim.get("sgd", 0.1, steps=100, **kw)
        p = {"w": jnp.zeros(1)}
        return lambda count: float(optim.learning_rate(opt.update(p, _at(opt, count), p)[1]))

    cos = rate(schedule="cosine")
    assert cos(0) == pytest.approx(0.1) and cos(50) == pytest.approx(0.05)
    assert cos(100) == pytest.approx(0.0, abs=1e-12)
    warm = rate(schedule="warmup_cosine", warmup=10)
    assert warm(0) == pytest.approx(0.0, abs=1e-12) and warm(10) == pytest.approx(0.1)
    assert warm(5) == pytest.approx(0.05)
    exp = rate(schedule="exponential", decay_rate=0.5)
    assert exp(100) == pytest.approx(0.05) and exp(50) == pytest.approx(0.1 * 0.5**0.5)
    step = rate(schedule="step", boundaries=[20, 60])
    assert [step(c) for c in (19, 20, 59, 60)] == pytest.approx([0.1, 0.01, 0.01, 0.001])
    default_step = rate(schedule="step")  # drops at half and three quarters
    assert [default_step(c) for c in (49, 50, 75)] == pytest.approx([0.1, 0.01, 0.001])


def _at(opt, count):
    """The optimizer state with its step counters set to ``count``."""
    state = opt.init({"w": jnp.zeros(1)})
    return jax.tree.map(lambda a: jnp.full_like(a, count) if a.dtype == jnp.int32 else a, state)


def test_clipping_bounds_the_update_norm():
    opt = optim.get("sgd", 1.0, clip_norm=0.5)
    g = {"w": jnp.array([30.0, 40.0], jnp.float64)}
    updates, _ = opt.update(g, opt.init(g), g)
    assert float(optax.tree.norm(updates)) == pytest.approx(0.5)
    small = {"w": jnp.array([0.03, 0.04], jnp.float64)}
    updates, _ = opt.update(small, opt.init(small), small)
    np.testing.assert_allclose(updates["w"], -small["w"], rtol=1e-12)


def test_weight_decay_is_l2_for_sgd():
    opt = optim.get("sgd", 0.1, weight_decay=0.5)
    w = {"w": jnp.array([2.0], jnp.float64)}
    updates, _ = opt.update({"w": jnp.zeros(1, jnp.float64)}, opt.init(w), w)
    np.testing.assert_allclose(updates["w"], [-0.1 * 0.5 * 2.0], rtol=1e-12)


def test_equal_arguments_give_equal_optimizers_that_share_a_compiled_epoch():
    a, b = optim.get("adam", 1e-3, clip_norm=1.0), optim.get("adam", 1e-3, clip_norm=1.0)
    assert a is not b and a == b and hash(a) == hash(b)  # equal by value, no memoisation
    assert a != optim.get("adam", 2e-3, clip_norm=1.0)
    assert a != optim.get("adam", 1e-3)
    model = fnn.mlp([2, 4, 2], activation="tanh", dtype=jnp.float64)
    x = np.random.default_rng(0).normal(size=(32, 2))
    y = (x[:, 0] > 0).astype(np.int32)
    traces = [0]
    ce = fnn.losses.get("softmax_cross_entropy")

    def fn(pred, target):
        traces[0] += 1
        return ce.fn(pred, target)

    loss = ce._replace(fn=fn)
    kw = dict(epochs=1, batch_size=16, key=jax.random.key(0), progress=False)
    fnn.train.fit(model, loss, a, (x, y), **kw)
    fnn.train.fit(model, loss, b, (x, y), **kw)
    assert traces[0] == 1  # jax.jit's cache served b with a's compiled epoch
    fnn.train.fit(model, loss, optim.get("adam", 2e-3, clip_norm=1.0), (x, y), **kw)
    assert traces[0] == 2


def test_rule_and_factory_are_the_table_that_get_schedules():
    w = {"w": jnp.array([1.0, -2.0], jnp.float64)}
    g = {"w": jnp.array([0.5, 0.25], jnp.float64)}
    direct = optim.rule("nesterov", momentum=0.5)(0.1)
    ref = optax.sgd(0.1, momentum=0.5, nesterov=True)
    np.testing.assert_array_equal(
        direct.update(g, direct.init(w), w)[0]["w"], ref.update(g, ref.init(w), w)[0]["w"]
    )
    swept = optax.inject_hyperparams(optim.factory("sgd", schedule="cosine", steps=10))(
        learning_rate=0.2
    )
    got = optim.get("sgd", 0.2, schedule="cosine", steps=10)
    s1, s2 = swept.init(w), got.init(w)
    for _ in range(3):
        u1, s1 = swept.update(g, s1, w)
        u2, s2 = got.update(g, s2, w)
        np.testing.assert_allclose(u1["w"], u2["w"], rtol=1e-12)
    with pytest.raises(ValueError, match=r"optimizer: unknown 'adamm'; expected one of"):
        optim.rule("adamm")
    with pytest.raises(ValueError, match=r"steps: the 'cosine' schedule needs"):
        optim.factory("sgd", schedule="cosine")


def test_learning_rate_is_none_without_inject_hyperparams():
    assert optim.learning_rate(optax.adam(1e-3).init(jnp.zeros(2))) is None
    wrapped = optax.chain(optax.clip(1.0), optax.inject_hyperparams(optax.sgd)(learning_rate=0.3))
    assert float(optim.learning_rate(wrapped.init(jnp.zeros(2)))) == pytest.approx(0.3)


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        (
            ("adamax", 0.1),
            {},
            r"unknown 'adamax'; expected one of: gd, sgd, momentum, nesterov, "
            r"adam, adamw, rmsprop, adagrad",
        ),
        (("adam", 0.0), {}, r"lr: expected a learning rate > 0, got 0\.0"),
        (("adam", -1), {}, r"lr: expected a learning rate > 0"),
        (
            ("adam", 0.1),
            {"schedule": "linear"},
            r"schedule: unknown 'linear'; expected one of: "
            r"constant, cosine",
        ),
        (("adam", 0.1), {"schedule": "cosine"}, r"steps: the 'cosine' schedule needs"),
        (("adam", 0.1), {"schedule": "cosine", "steps": 0}, r"steps: expected a positive int"),
        (("adam", 0.1), {"warmup": 5}, r"warmup: only the 'warmup_cosine' schedule"),
        (
            ("adam", 0.1),
            {"schedule": "warmup_cosine", "steps": 10, "warmup": 10},
            r"warmup: expected fewer warm-up steps than steps=10",
        ),
        (("momentum", 0.1), {"momentum": 1.0}, r"momentum: expected a value in \[0, 1\)"),
        (("sgd", 0.1), {"clip_norm": 0}, r"clip_norm: expected a value > 0"),
        (("sgd", 0.1), {"weight_decay": -1}, r"weight_decay: expected a value >= 0"),
        (
            ("adam", 0.1),
            {"schedule": "exponential", "steps": 5, "decay_rate": 2},
            r"decay_rate: expected a value in \(0, 1\]",
        ),
    ],
)
def test_bad_settings_are_named(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        optim.get(*args, **kwargs)


def test_bad_factory_option_is_a_type_error():
    with pytest.raises(TypeError, match=r"optimizer 'sgd': bad option in \['b1'\]"):
        optim.get("sgd", 0.1, b1=0.9)
