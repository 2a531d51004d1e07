"""fnn.many: each run of a sweep is the run trained alone; memory guard; faults; errors."""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn import many, train
from fnn.train import memory, runs

LOSS = "softmax_cross_entropy"


def _data(n=96, d=3, classes=3, seed=0, dtype=np.float64):
    r = np.random.default_rng(seed)
    x = r.normal(size=(n, d)).astype(dtype)
    y = np.argmax(x @ r.normal(size=(d, classes)), axis=1).astype(np.int32)
    return x, y


def _rel(a, b) -> float:
    """Largest over leaves of max|a - b| / max|b| (a norm-wise relative difference)."""
    return max(
        float(jnp.max(jnp.abs(u - v)) / jnp.max(jnp.abs(v)))
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def _bitwise(a, b) -> bool:
    return all(
        bool(jnp.all(u == v)) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


@pytest.mark.parametrize(
    ("case", "seeds", "lrs", "grad", "dropout"),
    [
        ("seeds and learning rates", [0, 1, 2], [1e-3, 1e-2, 5e-2], "autodiff", 0.0),
        ("seeds, manual backprop, dropout", [5, 6], [0.02], "manual", 0.2),
    ],
)
def test_each_run_equals_fit_float64(case, seeds, lrs, grad, dropout):
    model = fnn.mlp([3, 16, 3], "tanh", dropout=dropout, dtype=jnp.float64)
    data, test = _data(seed=1), _data(n=40, seed=2)
    states, hists = many.fit_many(
        model,
        LOSS,
        optax.adam,
        data,
        epochs=2,
        batch_size=16,
        seeds=seeds,
        hparams={"learning_rate": lrs},
        eval_data=test,
        grad=grad,
        progress=False,
    )
    k_runs = max(len(seeds), len(lrs))
    assert states.params[0]["w"].shape == (k_runs, 3, 16) and len(hists) == k_runs
    opts = {lr: optax.inject_hyperparams(optax.adam)(learning_rate=lr) for lr in lrs}
    for k in range(k_runs):
        seed, lr = seeds[k % len(seeds)], lrs[k % len(lrs)]
        alone, hist = train.fit(
            model,
            LOSS,
            opts[lr],
            data,
            epochs=2,
            batch_size=16,
            key=jax.random.key(seed),
            eval_data=test,
            grad=grad,
            progress=False,
        )
        run = many.take(states, k)
        assert _rel(run.params, alone.params) <= 1e-10, (case, k)
        assert _rel(run.opt_state, alone.opt_state) <= 1e-10, (case, k)
        assert int(run.step) == int(alone.step) == 12
        assert _bitwise(jax.random.key_data(run.key), jax.random.key_data(alone.key))
        assert set(hists[k]) == set(hist)
        for m in ("train_loss", "train_accuracy", "eval_loss", "eval_accuracy", "lr"):
            np.testing.assert_allclose(hists[k][m], hist[m], rtol=1e-10, err_msg=m)
    # The runs really differ: a sweep is not K copies of run 0.
    assert _rel(many.take(states.params, 0), many.take(states.params, 1)) > 1e-3


def test_float32_sweep_is_bitwise_fit_where_vmap_keeps_the_arithmetic():
    """Per-run batches: vmapped matmuls and elementwise updates are computed exactly as alone
    (XLA CPU; measured for sgd, momentum, nesterov, rmsprop). Adam is not bitwise: see
    fnn.many's docstring."""
    factory = functools.partial(optax.sgd, momentum=0.9)
    model = fnn.mlp([3, 16, 3], "relu", dtype=jnp.float32)
    data = _data(dtype=np.float32)
    lrs = [0.01, 0.05]
    states, _ = many.fit_many(
        model,
        LOSS,
        factory,
        data,
        epochs=2,
        batch_size=16,
        seeds=[0, 1],
        hparams={"learning_rate": lrs},
        progress=False,
    )
    for k, lr in enumerate(lrs):
        opt = optax.inject_hyperparams(factory)(learning_rate=lr)
        alone, _ = train.fit(
            model, LOSS, opt, data, epochs=2, batch_size=16, key=jax.random.key(k), progress=False
        )
        assert _bitwise(many.take(states.params, k), alone.params), k
    # Runs trained one group at a time (lax.map over groups of 1): the same bits.
    grouped, _ = many.fit_many(
        model,
        LOSS,
        factory,
        data,
        epochs=2,
        batch_size=16,
        seeds=[0, 1],
        hparams={"learning_rate": lrs},
        chunk=1,
        progress=False,
    )
    assert _bitwise(grouped.params, states.params)


def test_shared_batches_and_per_run_data_float64():
    model = fnn.mlp([3, 8, 3], "tanh", dtype=jnp.float64)
    data = _data(seed=3)
    opt = optax.sgd(0.05)
    states, _ = many.fit_many(
        model,
        LOSS,
        opt,
        data,
        epochs=2,
        batch_size=16,
        seeds=[0, 1],
        shuffle="shared",
        progress=False,
    )
    for k in range(2):  # every run follows run 0's order: fit from run k's init, run 0's key
        start = train.init_state(
            model.init(jax.random.key(k)), opt, train.run_key(jax.random.key(0))
        )
        alone, _ = train.fit(
            model, LOSS, opt, data, epochs=2, batch_size=16, key=None, init=start, progress=False
        )
        assert _rel(many.take(states.params, k), alone.params) <= 1e-10, k
    # One dataset per run: run k trains on its own (x, y).
    sets = [_data(seed=10), _data(seed=11)]
    states, _ = many.fit_many(
        model, LOSS, opt, sets, epochs=1, batch_size=16, seeds=[7], progress=False
    )
    for k in range(2):
        alone, _ = train.fit(
            model,
            LOSS,
            opt,
            sets[k],
            epochs=1,
            batch_size=16,
            key=jax.random.key(7),
            progress=False,
        )
        assert _rel(many.take(states.params, k), alone.params) <= 1e-10, k


def test_one_compiled_epoch_serves_new_hyperparameter_values(caplog):
    model = fnn.mlp([3, 8, 3], "tanh", dtype=jnp.float64)
    data = _data(seed=4)
    kw = dict(epochs=1, batch_size=32, seeds=[0, 1], progress=False)
    first, _ = many.fit_many(
        model, LOSS, optax.adam, data, hparams={"learning_rate": [0.1, 0.2]}, **kw
    )
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
        again, _ = many.fit_many(
            model, LOSS, optax.adam, data, hparams={"learning_rate": [0.3, 0.4]}, **kw
        )
    assert not [r for r in caplog.records if "Compiling" in r.getMessage()]
    assert not _bitwise(first.params, again.params)
    np.testing.assert_array_equal(again.opt_state.hyperparams["learning_rate"], [0.3, 0.4])


def test_nonfinite_run_raises_naming_it_or_is_skipped():
    model = fnn.mlp([3, 8, 1], "tanh", dtype=jnp.float32)
    x, _ = _data(dtype=np.float32)
    y = x[:, :1] * 3.0
    kw = dict(
        epochs=2, batch_size=16, seeds=[0], hparams={"learning_rate": [0.01, 1e10]}, progress=False
    )
    with pytest.raises(
        train.NonFiniteError,
        match=r"in 1 of 2 runs \(run 1, learning_rate="
        r"10000000000.0\) at epoch 0",
    ) as info:
        many.fit_many(model, "mse", optax.sgd, (x, y), **kw)
    err = info.value
    assert err.runs == [1] and err.epoch == 0 and 0 <= err.step < 6
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(err.state.params))
    states, hists = many.fit_many(model, "mse", optax.sgd, (x, y), on_nonfinite="skip", **kw)
    assert hists[0]["skipped"] == [0, 0] and sum(hists[1]["skipped"]) > 0
    assert hists[0]["train_loss"][1] < hists[0]["train_loss"][0]  # run 0 trains on
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(states.params))


def test_memory_guard_and_estimate():
    model = fnn.mlp([3, 16, 3], "relu", dtype=jnp.float64)
    data = _data()
    opt = optax.adam(1e-3)
    assert many.available_memory() > 0
    budget = 2**20
    fits = many.max_runs(model, opt, 16, n=96, memory=budget)
    assert 1 <= fits < 100
    assert many.max_runs(model, opt, 16, n=96, memory=2 * budget) >= 2 * fits
    with pytest.raises(
        ValueError,
        match=rf"runs: a sweep of K={fits + 1} runs needs about "
        rf".* MiB per run .* budget is 1.0 MiB; run at most {fits} at once",
    ):
        many.fit_many(
            model,
            LOSS,
            opt,
            data,
            epochs=1,
            batch_size=16,
            seeds=range(fits + 1),
            memory=budget,
            progress=False,
        )
    with pytest.raises(ValueError, match="not even one run fits"):
        many.fit_many(
            model, LOSS, opt, data, epochs=1, batch_size=16, seeds=[0], memory=100, progress=False
        )
    # The estimate bounds what XLA allocates, and not wildly: per run, between 1x and 4x.
    _, per_run = memory.footprint(
        model, opt, 16, 96, shuffle="per_run", per_run_data=False, eval_n=0, eval_batch=0, y_row=4
    )
    epoch = jax.jit(jax.vmap(train.make_epoch(model, LOSS, opt), in_axes=(0, None, None, 0)))
    x, y = (jnp.asarray(a) for a in data)

    def total(k):
        st = jax.eval_shape(
            lambda: many.stack(
                [
                    train.init_state(model.init(jax.random.key(i)), opt, jax.random.key(i))
                    for i in range(k)
                ]
            )
        )
        idx = jax.ShapeDtypeStruct((k, 6, 16), jnp.int32)
        m = epoch.lower(st, x, y, idx).compile().memory_analysis()
        return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes

    actual = (total(6) - total(2)) / 4
    assert actual <= per_run <= 4 * actual, (actual, per_run)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        (
            dict(optimizer=optax.adam(1e-3), hparams={"learning_rate": [0.1, 0.2]}),
            TypeError,
            r"optimizer: hparams=\['learning_rate'\] need an optax factory",
        ),
        (
            dict(hparams={"learning_rate": [optax.constant_schedule(0.1)]}),
            TypeError,
            r"hparams\['learning_rate'\]\[0\]: expected a number, got .*schedule cannot differ",
        ),
        (
            dict(hparams={"learning_rate": [0.1, 0.2]}, seeds=[0, 1, 2]),
            ValueError,
            r"runs: every list must hold K values or one",
        ),
        (dict(keys=[jax.random.key(0)]), ValueError, r"keys, seeds: pass one of them"),
        (
            dict(keys=[jax.random.key(0), 3], seeds=None),
            TypeError,
            r"keys\[1\]: expected a JAX PRNG key",
        ),
        (dict(optimizer=optax.adam, hparams=None), TypeError, r"a factory needs hparams"),
        (dict(hparams={"lr": [0.1]}), TypeError, r"hparams: \['lr'\] do not fit the factory"),
        (dict(shuffle="random"), ValueError, r"shuffle: expected one of \('per_run', 'shared'\)"),
        (
            dict(data=[_data(n=96), _data(n=80)]),
            ValueError,
            r"data\[1\]: every run's data must have the same shapes",
        ),
    ],
)
def test_bad_input_is_named(kwargs, error, pattern):
    model = fnn.mlp([3, 8, 3], dtype=jnp.float64)
    args = dict(optimizer=optax.adam, data=_data(), hparams={"learning_rate": [0.1]}, seeds=[0])
    args.update(kwargs)
    with pytest.raises(error, match=pattern):
        many.fit_many(
            model,
            LOSS,
            args.pop("optimizer"),
            args.pop("data"),
            epochs=1,
            batch_size=16,
            progress=False,
            **args,
        )


SPLIT = r"""
import json
import jax, jax.numpy as jnp, numpy as np, optax
import fnn
from fnn import many
r = np.random.default_rng(0)
x = r.normal(size=(96, 3)).astype(np.float32)
y = np.argmax(x @ r.normal(size=(3, 3)), axis=1).astype(np.int32)
model = fnn.mlp([3, 8, 3], "relu")
kw = dict(epochs=2, batch_size=16, seeds=[0, 1, 2, 3], progress=False,
          hparams={"learning_rate": [0.01, 0.02, 0.05, 0.1]})
one, h1 = many.fit_many(model, "softmax_cross_entropy", optax.sgd, (x, y), **kw)
two, h2 = many.fit_many(model, "softmax_cross_entropy", optax.sgd, (x, y), devices=2, chunk=1,
                        **kw)
same = all(bool(jnp.all(a == b)) for a, b in zip(jax.tree.leaves(one.params),
                                                  jax.tree.leaves(two.params)))
try:
    many.fit_many(model, "softmax_cross_entropy", optax.sgd, (x, y), devices=2,
                  **{**kw, "seeds": [0, 1, 2], "hparams": {"learning_rate": [0.1]}})
    error = None
except ValueError as err:
    error = str(err)
print(json.dumps({"same": same, "devices": len(two.params[0]["w"].sharding.device_set),
                  "keys": all(set(h) == set(g) for h, g in zip(h1, h2)),
                  "hist": max(abs(a - b) / max(abs(b), 1e-30) for h, g in zip(h1, h2)
                              for m in h if m != "seconds" for a, b in zip(h[m], g[m])),
                  "error": error}))
"""


def test_runs_split_over_devices_train_as_on_one():
    import json
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    }
    res = subprocess.run(
        [sys.executable, "-c", SPLIT], capture_output=True, text=True, timeout=240, env=env
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["devices"] == 2 and out["same"], out
    # Parameters bitwise; the metrics' epoch means may round differently in the last bit
    # (XLA fuses the [2]- and [4]-run reductions differently).
    assert out["keys"] and out["hist"] <= 1e-6, out
    assert out["error"].startswith("devices: 3 runs do not split evenly over 2 devices")


def test_compiled_start_of_many_runs_is_fits_start(monkeypatch):
    """Beyond EAGER_INIT_RUNS runs, one compiled program starts them: bitwise fit's start."""
    model = fnn.mlp([3, 16, 3], "relu", dtype=jnp.float64)
    keys = [jax.random.key(s) for s in (3, 4, 5)]
    hp = {"learning_rate": [0.1, 0.2, 0.3]}
    rep, opts = runs.optimizers(optax.adam, hp, 3)
    compiled = runs.init_program(model, rep, hp)(jnp.stack(keys))
    eager = many.stack([runs.init_one(model, o, k) for o, k in zip(opts, keys, strict=True)])
    assert runs.leaves_equal(compiled, eager)
    calls = []
    program = runs.init_program
    monkeypatch.setattr(runs, "init_program", lambda *a: calls.append(a) or program(*a))
    monkeypatch.setattr(runs, "EAGER_INIT_RUNS", 1)
    states, _ = many.fit_many(
        model,
        LOSS,
        optax.adam,
        _data(),
        epochs=0,
        batch_size=16,
        keys=keys,
        hparams=hp,
        progress=False,
    )
    assert len(calls) == 1  # the compiled start ran (and passed its check against fit's)
    assert runs.leaves_equal(states, eager)
