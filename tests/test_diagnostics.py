"""Diagnostics, each on a network built to show what it measures."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn import diagnostics, plots


def test_dead_fraction_is_one_when_biases_are_very_negative():
    model = fnn.mlp([3, 16, 16, 2], activation="relu", dtype=jnp.float64)
    params = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (64, 3), jnp.float64)
    healthy = diagnostics.unit_stats(model, params, x)
    assert float(healthy.dead["[1]"]) < 0.25
    params[0]["b"] = jnp.full((16,), -1e3, jnp.float64)
    killed = diagnostics.unit_stats(model, params, x)
    assert float(killed.dead["[1]"]) == 1.0
    # Layer 3 receives only zeros, so its pre-activation is its bias (zero): never > 0.
    assert float(killed.dead["[3]"]) == 1.0


def test_half_dead_layer():
    model = fnn.mlp([2, 4, 1], activation="relu", dtype=jnp.float64)
    params = model.init(jax.random.key(0))
    params[0]["w"] = jnp.zeros((2, 4), jnp.float64)
    params[0]["b"] = jnp.array([1.0, 1.0, -1.0, -1.0], jnp.float64)
    stats = diagnostics.unit_stats(model, params, jnp.ones((5, 2), jnp.float64))
    assert float(stats.dead["[1]"]) == 0.5


def test_saturated_fraction_of_tanh_and_sigmoid():
    for act in ("tanh", "sigmoid"):
        model = fnn.mlp([2, 10, 1], activation=act, dtype=jnp.float64)
        params = model.init(jax.random.key(0))
        x = jax.random.normal(jax.random.key(1), (32, 2), jnp.float64)
        assert float(diagnostics.unit_stats(model, params, x).saturated["[1]"]) < 0.5
        params[0]["w"] = params[0]["w"] * 1e3  # huge pre-activations: flat ends of the curve
        stats = diagnostics.unit_stats(model, params, x)
        assert float(stats.saturated["[1]"]) > 0.9, act
        assert float(stats.mean_derivative["[1]"]) < 0.01


def test_sigmoid_gradients_vanish_with_depth_relu_do_not():
    x = jax.random.normal(jax.random.key(1), (64, 8), jnp.float64)
    y = jax.random.randint(jax.random.key(2), (64,), 0, 4)
    ratio = {}
    for act in ("sigmoid", "relu"):
        model = fnn.mlp([8] + [32] * 10 + [4], activation=act, dtype=jnp.float64)
        params = model.init(jax.random.key(0))
        norms = diagnostics.layer_grad_norms(model, "softmax_cross_entropy", params, x, y)
        values = list(norms.values())
        assert len(values) == 11
        ratio[act] = float(values[0] / values[-1])
    assert ratio["sigmoid"] < 1e-3  # first layer's gradient is tiny next to the last's
    assert ratio["relu"] > 1e-1


def test_update_ratio():
    before = [{"w": jnp.ones((2, 2)), "b": jnp.zeros(2)}, {}]
    after = [{"w": jnp.ones((2, 2)) * 1.001, "b": jnp.zeros(2)}, {}]
    r = diagnostics.update_ratios(before, after)
    assert list(r) == ["[0]"]
    assert float(r["[0]"]) == pytest.approx(1e-3, rel=1e-6)


def test_grad_norms_keys_follow_dense_layers():
    g = [
        {"w": jnp.full((2, 2), 3.0), "b": jnp.zeros(2)},
        {},
        {"w": jnp.ones((2, 1)), "b": jnp.zeros(1)},
    ]
    norms = diagnostics.grad_norms(g)
    assert list(norms) == ["[0]", "[2]"]
    assert float(norms["[0]"]) == pytest.approx(6.0)


def _blobs(n=256):
    k1, k2 = jax.random.split(jax.random.key(0))
    y = jax.random.randint(k1, (n,), 0, 3)
    centers = jnp.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0]], jnp.float32)
    x = centers[y] + 0.5 * jax.random.normal(k2, (n, 2), jnp.float32)
    return x, y


def test_lr_find_suggests_a_rate_that_trains_and_stops_on_divergence(tmp_path):
    x, y = _blobs()
    model = fnn.mlp([2, 16, 3], activation="relu")
    res = diagnostics.lr_find(
        model,
        "softmax_cross_entropy",
        (x, y),
        optimizer=optax.sgd,
        min_lr=1e-4,
        max_lr=1e4,
        steps=120,
        batch_size=32,
    )
    assert res.diverged_at is not None  # 1e4 on SGD must blow up
    assert len(res.lrs) == res.diverged_at + 1
    assert np.all(np.diff(res.lrs) > 0)
    assert 1e-4 < res.suggested_lr < res.min_loss_lr < 1e4
    assert res.smoothed[-1] > res.smoothed.min()
    # The suggestion trains: 100 SGD steps at it beat the loss at start.
    p = model.init(jax.random.key(0))
    opt = optax.sgd(res.suggested_lr)
    s = opt.init(p)
    ce = fnn.losses.get("softmax_cross_entropy")
    start = float(ce.fn(model.apply(p, x), y))
    for _ in range(100):
        g = jax.grad(lambda q: ce.fn(model.apply(q, x), y))(p)
        u, s = opt.update(g, s)
        p = optax.apply_updates(p, u)
    assert float(ce.fn(model.apply(p, x), y)) < 0.5 * start
    out = plots.lr_sweep(res, tmp_path / "lr.png")
    assert (tmp_path / "lr.png").stat().st_size > 1000 and out.endswith("lr.png")


def test_lr_find_bad_arguments():
    x, y = _blobs(16)
    model = fnn.mlp([2, 4, 3])
    with pytest.raises(ValueError, match=r"min_lr, max_lr: expected 0 < min_lr < max_lr"):
        diagnostics.lr_find(model, "softmax_cross_entropy", (x, y), min_lr=1.0, max_lr=0.1)
    with pytest.raises(ValueError, match=r"batch_size: expected 1..16"):
        diagnostics.lr_find(model, "softmax_cross_entropy", (x, y), batch_size=64)


def test_plots_write_pngs(tmp_path):
    hist = {
        "train_loss": [1.0, 0.5, 0.3],
        "test_loss": [1.1, 0.6, 0.4],
        "train_accuracy": [0.5, 0.7, 0.9],
        "test_accuracy": [0.4, 0.6, 0.8],
    }
    plots.training_curves(hist, tmp_path / "c.png", title="t")
    plots.curves({"a": [3, 2, 1], "b": [3, 1, 0.5]}, tmp_path / "d.png")
    plots.bars(
        {"relu": [1, 2], "sigmoid": [0.01, 1]},
        tmp_path / "e.png",
        xlabels=["l0", "l1"],
        ylabel="norm",
    )
    x, y = _blobs(30)
    plots.decision_boundary(
        lambda pts: (pts[:, 0] > 0).astype(int), x, y, tmp_path / "f.png", resolution=20
    )
    for name in "cdef":
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
