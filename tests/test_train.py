"""The trainer: steps, scan-fused epochs, evaluation, determinism, resume, bad input, faults."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from stateful_layer import centering

import fnn
from fnn import diagnostics, losses, many, optim, train
from fnn.train import GRADS

CE = losses.get("softmax_cross_entropy")


def counting(loss):
    """The loss record with a ``fn`` that counts how often it is traced."""
    calls = [0]

    def fn(pred, target):
        calls[0] += 1
        return loss.fn(pred, target)

    return loss._replace(fn=fn), calls


def blobs(n, seed=0, dtype=np.float32):
    """Two-class data separable by the sign of x0 * x1 (needs a hidden layer)."""
    x = np.random.default_rng(seed).normal(size=(n, 2)).astype(dtype)
    return x, (x[:, 0] * x[:, 1] > 0).astype(np.int32)


def leaves_equal(a, b):
    return all(
        np.array_equal(np.asarray(u), np.asarray(v))
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


# ---------------------------------------------------------------------------------------------
# make_step


@pytest.mark.parametrize("dropout", [0.0, 0.25])
def test_manual_and_autodiff_steps_agree_after_50_adam_steps(dropout):
    model = fnn.mlp([5, 16, 16, 3], activation="tanh", dropout=dropout, dtype=jnp.float64)
    opt = optax.adam(1e-2)
    x = jax.random.normal(jax.random.key(1), (50, 32, 5), jnp.float64)
    y = jax.random.randint(jax.random.key(2), (50, 32), 0, 3)
    params = {}
    for grad in ("autodiff", "manual"):
        step = train.make_step(model, "softmax_cross_entropy", opt, grad=grad)
        state = train.init_state(model.init(jax.random.key(0)), opt, jax.random.key(3))
        for i in range(50):
            state, metrics = step(state, x[i], y[i])
        assert int(state.step) == 50
        params[grad] = state.params
    for a, m in zip(
        jax.tree.leaves(params["autodiff"]), jax.tree.leaves(params["manual"]), strict=True
    ):
        rel = float(jnp.max(jnp.abs(a - m)) / jnp.max(jnp.abs(a)))
        assert rel <= 1e-8, rel


def test_step_metrics_are_measured_before_the_update_and_state_is_donated():
    model = fnn.mlp([4, 8, 3], activation="relu", dtype=jnp.float64)
    opt = optax.sgd(0.1)
    x = jax.random.normal(jax.random.key(1), (16, 4), jnp.float64)
    y = jax.random.randint(jax.random.key(2), (16,), 0, 3)
    params = model.init(jax.random.key(0))
    expected_loss, g = jax.value_and_grad(lambda p: CE.fn(model.apply(p, x), y))(params)
    expected_acc = CE.accuracy(model.apply(params, x), y)
    expected_w = params[0]["w"] - 0.1 * g[0]["w"]
    state = train.init_state(params, opt, jax.random.key(3))
    old_w = state.params[0]["w"]
    new, metrics = train.make_step(model, CE, opt, accuracy=True, grad_norm=True)(state, x, y)
    assert set(metrics) == {"loss", "grad_norm", "accuracy"}
    np.testing.assert_allclose(metrics["loss"], expected_loss, rtol=1e-12)
    np.testing.assert_allclose(metrics["accuracy"], expected_acc, rtol=1e-12)
    norm = jnp.sqrt(sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(g)))
    np.testing.assert_allclose(metrics["grad_norm"], norm, rtol=1e-12)
    np.testing.assert_allclose(new.params[0]["w"], expected_w, rtol=1e-12)
    assert old_w.is_deleted()  # the input state's buffers (and init_state's params) were donated
    mse_step = train.make_step(model, "mse", opt, accuracy=True, grad_norm=True)
    _, mse_metrics = mse_step(new, x, jnp.zeros((16, 3), jnp.float64))
    assert set(mse_metrics) == {"loss", "grad_norm"}  # no accuracy for a regression loss
    state = train.init_state(model.init(jax.random.key(0)), opt, jax.random.key(3))
    _, lean = train.make_step(model, CE, opt)(state, x, y)
    assert set(lean) == {"loss"}  # the default: the loss only, a hand-written step's work


# ---------------------------------------------------------------------------------------------
# fit


def test_epoch_compiles_once_across_epochs_and_fit_calls():
    loss, calls = counting(CE)
    model = fnn.mlp([2, 8, 2], activation="tanh")
    opt = optim.get("adam", 1e-2, schedule="cosine", steps=100)
    x, y = blobs(100)
    kw = dict(batch_size=32, progress=False)
    state, hist = train.fit(model, loss, opt, (x, y), epochs=3, key=jax.random.key(0), **kw)
    assert calls[0] == 1
    assert int(state.step) == 9  # 3 steps per epoch: the partial batch of 4 is dropped
    assert len(hist["train_loss"]) == 3
    # New key, new data of the same shapes, a params init: still the same compiled epoch.
    x2, y2 = blobs(100, seed=1)
    train.fit(model, loss, opt, (x2, y2), epochs=2, key=jax.random.key(1), **kw)
    train.fit(model, loss, opt, (x2, y2), epochs=2, key=jax.random.key(1), init=state.params, **kw)
    assert calls[0] == 1
    train.fit(
        model, loss, opt, (x2, y2), epochs=1, key=jax.random.key(1), batch_size=16, progress=False
    )
    assert calls[0] == 2  # a new batch size is a new shape: one more trace, as expected


def test_fit_learns_a_nonlinear_classification():
    model = fnn.mlp([2, 32, 2], activation="tanh")
    x, y = blobs(512)
    xt, yt = blobs(256, seed=1)
    state, hist = train.fit(
        model,
        "softmax_cross_entropy",
        optim.get("adam", 0.02),
        (x, y),
        epochs=40,
        batch_size=32,
        key=jax.random.key(0),
        eval_data=(xt, yt),
        progress=False,
    )
    assert hist["eval_accuracy"][-1] >= 0.93  # chance is 0.5; seeds 0-3 give 0.949-0.961
    assert hist["train_loss"][-1] < 0.25 * hist["train_loss"][0]
    assert set(hist) == {
        "train_loss",
        "train_accuracy",
        "eval_loss",
        "eval_accuracy",
        "lr",
        "seconds",
    }
    assert all(len(v) == 40 for v in hist.values())
    final = train.evaluate(model, "softmax_cross_entropy", state.params, (xt, yt), 100)
    assert final["accuracy"] == pytest.approx(hist["eval_accuracy"][-1], abs=1e-6)


def test_full_batch_gd_and_sgd_step_counts():
    model = fnn.mlp([2, 4, 2], activation="tanh")
    x, y = blobs(8)
    opt = optim.get("gd", 0.1)
    s, h = train.fit(
        model, CE, opt, (x, y), epochs=3, batch_size=None, key=jax.random.key(0), progress=False
    )
    assert int(s.step) == 3
    s, h = train.fit(
        model, CE, opt, (x, y), epochs=2, batch_size="full", key=jax.random.key(0), progress=False
    )
    assert int(s.step) == 2
    s, h = train.fit(
        model,
        CE,
        optim.get("sgd", 0.1),
        (x, y),
        epochs=2,
        batch_size=1,
        key=jax.random.key(0),
        progress=False,
    )
    assert int(s.step) == 16


def test_lr_history_follows_the_schedule_and_is_absent_for_plain_optax():
    model = fnn.mlp([2, 4, 2], activation="tanh")
    x, y = blobs(64)
    opt = optim.get("sgd", 0.5, schedule="cosine", steps=8)
    _, h = train.fit(
        model, CE, opt, (x, y), epochs=4, batch_size=32, key=jax.random.key(0), progress=False
    )
    sched = optax.cosine_decay_schedule(0.5, 8)
    # the rate of each epoch's last update: steps 1, 3, 5, 7
    np.testing.assert_allclose(h["lr"], [float(sched(i)) for i in (1, 3, 5, 7)], rtol=1e-6)
    _, h = train.fit(
        model,
        CE,
        optax.sgd(0.5),
        (x, y),
        epochs=1,
        batch_size=32,
        key=jax.random.key(0),
        progress=False,
    )
    assert "lr" not in h


def test_same_key_gives_bitwise_identical_params_and_another_key_does_not():
    model = fnn.mlp([2, 16, 2], activation="relu", dropout=0.2)
    x, y = blobs(96)
    opt = optim.get("adam", 1e-2)
    run = lambda k: (
        train.fit(
            model, CE, opt, (x, y), epochs=3, batch_size=16, key=jax.random.key(k), progress=False
        )[0].params
    )
    a, b, c = run(0), run(0), run(1)
    assert leaves_equal(a, b)
    assert not leaves_equal(a, c)


def test_resume_at_an_epoch_boundary_reproduces_the_uninterrupted_run():
    model = fnn.mlp([2, 16, 2], activation="relu", dropout=0.1)
    x, y = blobs(100)
    opt = optim.get("momentum", 0.05)
    kw = dict(batch_size=16, key=jax.random.key(0), progress=False)
    full, h_full = train.fit(model, CE, opt, (x, y), epochs=5, **kw)
    kept = []

    def stop_after_two(epoch, state, history):
        kept.append(epoch)
        return epoch == 1

    part, h1 = train.fit(model, CE, opt, (x, y), epochs=5, callback=stop_after_two, **kw)
    assert kept == [0, 1] and int(part.step) == 12
    rest, h2 = train.fit(model, CE, opt, (x, y), epochs=5, init=part, **kw)
    assert leaves_equal(rest.params, full.params)
    assert h1["train_loss"] + h2["train_loss"] == h_full["train_loss"]
    assert not jax.tree.leaves(part.params)[0].is_deleted()  # the caller's state survives


def test_fit_does_not_consume_the_callers_params():
    model = fnn.mlp([2, 4, 2], activation="tanh")
    params = model.init(jax.random.key(5))
    before = [np.asarray(a).copy() for a in jax.tree.leaves(params)]
    train.fit(
        model,
        CE,
        optax.sgd(0.1),
        blobs(32),
        epochs=1,
        batch_size=8,
        key=jax.random.key(0),
        init=params,
        progress=False,
    )
    assert all(
        np.array_equal(a, np.asarray(b))
        for a, b in zip(before, jax.tree.leaves(params), strict=True)
    )


def test_progress_bar_shows_epochs(capsys):
    model = fnn.mlp([2, 4, 2], activation="tanh")
    train.fit(
        model,
        CE,
        optax.sgd(0.1),
        blobs(32),
        epochs=2,
        batch_size=8,
        key=jax.random.key(0),
        progress=True,
    )
    out = capsys.readouterr()
    assert "epoch" in out.out + out.err and "2/2" in out.out + out.err


# ---------------------------------------------------------------------------------------------
# evaluate


@pytest.mark.parametrize(
    "name,outputs", [("softmax_cross_entropy", 3), ("binary_cross_entropy", 1), ("mse", 2)]
)
def test_evaluate_is_exact_on_a_size_that_is_not_a_multiple_of_the_batch(name, outputs):
    loss = losses.get(name)
    model = fnn.mlp([4, 8, outputs], activation="tanh", dtype=jnp.float64)
    params = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (103, 4), jnp.float64)
    if name == "softmax_cross_entropy":
        y = jax.random.randint(jax.random.key(2), (103,), 0, 3)
    elif name == "binary_cross_entropy":
        y = jax.random.bernoulli(jax.random.key(2), 0.5, (103, 1)).astype(jnp.float64)
    else:
        y = jax.random.normal(jax.random.key(2), (103, 2), jnp.float64)
    out = model.apply(params, x)
    got = train.evaluate(model, loss, params, (x, y), 16)
    assert got["loss"] == pytest.approx(float(loss.fn(out, y)), rel=1e-12)
    whole = train.evaluate(model, loss, params, (x, y), None)  # one batch, no padding
    assert whole["loss"] == pytest.approx(got["loss"], rel=1e-12)
    if loss.accuracy is not None:
        assert got["accuracy"] == pytest.approx(float(loss.accuracy(out, y)), rel=1e-12)
    else:
        assert set(got) == {"loss"}


# ---------------------------------------------------------------------------------------------
# bad input: clear errors, and nothing traced (hence nothing compiled)


def _bad_cases():
    x, y = blobs(40)
    xnan = x.copy()
    xnan[[3, 7, 9], 1] = np.nan
    return [
        ((x, y[:39]), {}, ValueError, r"same number of rows.*\(40, 2\).*39 rows"),
        ((x, y), {"batch_size": 41}, ValueError, r"batch_size: 41 is larger than the dataset \(40"),
        ((x, y.astype(np.float32)), {}, TypeError, r"float labels of shape \(40,\).*astype"),
        ((x, y + 1), {}, ValueError, r"labels must lie in 0\.\.1.*from 1 to 2"),
        ((xnan, y), {}, ValueError, r"data x: 3 of 40 rows hold NaN or inf \(the first is row 3\)"),
        ((x[:0], y[:0]), {}, ValueError, r"dataset is empty"),
        ((x.astype(np.int32), y), {}, TypeError, r"data x: expected a floating dtype"),
        ((x[:, :1], y), {}, ValueError, r"data x: expected shape \[n, 2\]"),
        ((x, y), {"batch_size": 0}, ValueError, r"batch_size: expected a positive int"),
        ((x, y), {"on_nonfinite": "ignore"}, ValueError, r"on_nonfinite: expected one of"),
        ((x, y), {"grad": "numeric"}, ValueError, r"grad: expected one of"),
        ((x, y), {"key": 0}, TypeError, r"key: expected a JAX PRNG key"),
        ((x, y), {"eval_data": (x, y[:5])}, ValueError, r"eval_data: x and y must have the same"),
        ((x, y), {"devices": 99}, ValueError, r"devices: expected 1\.\.1"),
    ]


@pytest.mark.parametrize("data,kwargs,exc,match", _bad_cases())
def test_bad_input_fails_before_any_tracing(data, kwargs, exc, match):
    loss, calls = counting(CE)
    model = fnn.mlp([2, 4, 2], activation="tanh")
    args = dict(epochs=1, batch_size=8, key=jax.random.key(0), progress=False)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        train.fit(model, loss, optax.sgd(0.1), data, **args)
    assert calls[0] == 0


def test_bad_targets_of_binary_cross_entropy_and_mse():
    x = np.zeros((10, 2), np.float32)
    one = fnn.mlp([2, 4, 1])
    kw = dict(epochs=1, batch_size=5, key=jax.random.key(0), progress=False)
    with pytest.raises(ValueError, match=r"shaped like the model output \(10, 1\).*y\[:, None\]"):
        train.fit(one, "binary_cross_entropy", optax.sgd(0.1), (x, np.zeros(10)), **kw)
    with pytest.raises(ValueError, match=r"binary targets must lie in \[0, 1\].*to 2\.0"):
        train.fit(one, "binary_cross_entropy", optax.sgd(0.1), (x, np.full((10, 1), 2.0)), **kw)
    yinf = np.zeros((10, 1), np.float32)
    yinf[4] = np.inf
    with pytest.raises(
        ValueError, match=r"data y: 1 of 10 rows hold NaN or inf \(the first is row 4"
    ):
        train.fit(one, "mse", optax.sgd(0.1), (x, yinf), **kw)
    with pytest.raises(TypeError, match=r"mse needs float targets"):
        train.fit(one, "mse", optax.sgd(0.1), (x, np.zeros((10, 1), np.int32)), **kw)
    with pytest.raises(ValueError, match=r"one-hot / probability targets must lie in \[0, 1\]"):
        train.fit(fnn.mlp([2, 3]), CE, optax.sgd(0.1), (x, np.full((10, 3), -1.0)), **kw)


def test_resuming_from_a_mid_epoch_state_is_refused():
    model = fnn.mlp([2, 4, 2], activation="tanh")
    opt = optax.sgd(0.1)
    state = train.init_state(model.init(jax.random.key(0)), opt, jax.random.key(1))
    state = state._replace(step=jnp.int32(3))
    with pytest.raises(ValueError, match=r"state.step=3 is not at an epoch boundary \(5 steps"):
        train.fit(
            model,
            CE,
            opt,
            blobs(40),
            epochs=2,
            batch_size=8,
            key=jax.random.key(0),
            init=state,
            progress=False,
        )


# ---------------------------------------------------------------------------------------------
# non-finite training


def _poisoned(n=64, b=16, at_step=2):
    """mse data whose row ``r`` overflows float32 and the step of epoch 0 that draws it."""
    x = np.random.default_rng(0).normal(size=(n, 3)).astype(np.float32)
    y = np.zeros((n, 1), np.float32)
    run_key = train.run_key(jax.random.key(0))
    row = int(train.epoch_indices(run_key, 0, n, b)[at_step, 0])
    clean = y.copy()
    y[row] = 1e30  # finite data; its squared error overflows to inf
    return x, y, clean


def test_nonfinite_loss_raises_naming_epoch_and_step_and_keeps_the_last_finite_state():
    model = fnn.mlp([3, 8, 1], activation="tanh")
    x, y, clean = _poisoned()
    opt = optax.sgd(0.01)
    kw = dict(batch_size=16, key=jax.random.key(0), progress=False)
    with pytest.raises(
        train.NonFiniteError, match=r"non-finite loss at epoch 0, step 2 of 4 \(global step 2\)"
    ) as err:
        train.fit(model, "mse", opt, (x, y), epochs=3, **kw)
    e = err.value
    assert (e.epoch, e.step, e.global_step, e.what) == (0, 2, 2, "loss")
    assert int(e.state.step) == 2 and e.history == {}
    # The kept state is the clean run's after the two steps before the poisoned batch.
    idx = train.epoch_indices(train.run_key(jax.random.key(0)), 0, 64, 16)
    step = train.make_step(model, "mse", opt)
    state = train.init_state(model.init(jax.random.key(0)), opt, jax.random.key(1))
    for i in range(2):
        state, _ = step(state, x[idx[i]], clean[idx[i]])
    for a, b in zip(jax.tree.leaves(e.state.params), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_nonfinite_gradients_with_a_finite_loss_are_named():
    mse = losses.get("mse")
    # sqrt(|0 * pred|) is 0, but its derivative is 0 * inf = NaN.
    fragile = mse._replace(
        name="fragile", fn=lambda p, t: mse.fn(p, t) + jnp.mean(jnp.sqrt(jnp.abs(p * 0.0)))
    )
    model = fnn.mlp([3, 4, 1], activation="tanh")
    x, _, clean = _poisoned()
    with pytest.raises(train.NonFiniteError, match=r"non-finite gradients at epoch 0, step 0"):
        train.fit(
            model,
            fragile,
            optax.sgd(0.1),
            (x, clean),
            epochs=1,
            batch_size=16,
            key=jax.random.key(0),
            progress=False,
        )


def test_skip_mode_skips_and_counts_nonfinite_steps():
    model = fnn.mlp([3, 8, 1], activation="tanh")
    x, y, _ = _poisoned()
    state, hist = train.fit(
        model,
        "mse",
        optax.sgd(0.01),
        (x, y),
        epochs=3,
        batch_size=16,
        key=jax.random.key(0),
        on_nonfinite="skip",
        progress=False,
    )
    assert hist["skipped"] == [1, 1, 1]  # the poisoned row is drawn once per epoch
    assert int(state.step) == 12
    assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(state.params))
    assert all(np.isfinite(hist["train_loss"]))


def test_parameters_overflowing_from_a_finite_update_are_named():
    model = fnn.mlp([3, 4, 1], activation="tanh")
    x, _, clean = _poisoned()
    clean = clean + 100.0  # gradients ~100: times lr 1e38 overflows float32
    init = model.init(jax.random.key(0))
    with pytest.raises(
        train.NonFiniteError, match=r"non-finite parameters at epoch 0, step 0"
    ) as err:
        train.fit(
            model,
            "mse",
            optax.sgd(1e38),
            (x, clean),
            epochs=1,
            batch_size=16,
            key=jax.random.key(0),
            progress=False,
        )
    assert leaves_equal(err.value.state.params, init)


@pytest.mark.parametrize("grad", ["autodiff", "manual"])
def test_skip_guards_cond_and_select_agree(grad):
    model = fnn.mlp([3, 8, 1], activation="tanh")
    x, y, _ = _poisoned()
    opt = optax.adam(1e-2)
    idx = jnp.asarray(train.epoch_indices(jax.random.key(7), 0, 64, 16))
    out = {}
    for guard in ("cond", "select"):
        epoch = train.make_epoch(model, "mse", opt, grad=grad, mode="skip", guard=guard)
        state = train.init_state(model.init(jax.random.key(0)), opt, jax.random.key(1))
        out[guard] = epoch(state, jnp.asarray(x), jnp.asarray(y), idx)
    (a, sa), (b, sb) = out["cond"], out["select"]
    assert int(sa["skipped"]) == int(sb["skipped"]) == 1
    assert int(a.step) == int(b.step) == 4
    # Every leaf is compared: floats to round-off, counters exactly, the keys by their data
    # (a typed key has no float dtype, so it needs key_data to be compared at all).
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert u.dtype == v.dtype
        if jnp.issubdtype(u.dtype, jax.dtypes.prng_key):
            np.testing.assert_array_equal(jax.random.key_data(u), jax.random.key_data(v))
        elif jnp.issubdtype(u.dtype, jnp.inexact):
            np.testing.assert_allclose(u, v, rtol=1e-6)
        else:
            np.testing.assert_array_equal(u, v)
    assert jnp.issubdtype(a.key.dtype, jax.dtypes.prng_key)  # the key leaf was among them


# ---------------------------------------------------------------------------------------------
# float32 in-process: conftest enables x64 for the session, so these pin every dtype.


def _dtypes(tree):
    return {str(a.dtype) for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.inexact)}


@pytest.mark.parametrize(
    "opt",
    [
        optim.get("adam", 1e-2, schedule="warmup_cosine", steps=8),
        optax.sgd(optax.exponential_decay(0.1, 4, 0.5), momentum=0.9),
        optax.inject_hyperparams(optax.rmsprop)(learning_rate=0.01),
    ],
    ids=["optim.get", "optax-schedule", "inject"],
)
def test_float32_training_stays_float32_with_x64_enabled(opt):
    """Under x64 a schedule computes in float64; the state must still come back float32
    (else the next step would retrace and the run would silently train in float64)."""
    assert jax.config.jax_enable_x64  # the session's setting, which makes this test bite
    model = fnn.mlp([2, 8, 2], activation="tanh", dtype=jnp.float32)
    x, y = blobs(64, dtype=np.float32)
    loss, calls = counting(CE)
    state = train.init_state(model.init(jax.random.key(0)), opt, jax.random.key(1))
    step = train.make_step(model, loss, opt)
    for _ in range(3):
        state, metrics = step(state, jnp.asarray(x[:16]), jnp.asarray(y[:16]))
    assert calls[0] == 1  # one trace: the output state's avals equal the input's
    assert _dtypes(state.params) == {"float32"}
    assert _dtypes(state.opt_state) <= {"float32"}
    assert metrics["loss"].dtype == jnp.float32
    fitted, hist = train.fit(
        model, CE, opt, (x, y), epochs=2, batch_size=16, key=jax.random.key(0), progress=False
    )
    assert _dtypes(fitted.params) == {"float32"} and _dtypes(fitted.opt_state) <= {"float32"}
    assert all(np.isfinite(hist["train_loss"]))
    assert train.evaluate(model, CE, fitted.params, (x, y))["accuracy"] > 0.4


def test_float32_sweep_and_lr_find_stay_float32():
    model = fnn.mlp([2, 8, 2], activation="tanh", dtype=jnp.float32)
    x, y = blobs(64, dtype=np.float64)  # float64 data is cast to the model's dtype
    states, _ = many.fit_many(
        model,
        CE,
        optax.adam,
        (x, y),
        epochs=1,
        batch_size=16,
        seeds=[0, 1],
        hparams={"learning_rate": [1e-3, 1e-2]},
        progress=False,
    )
    assert _dtypes(states.params) == {"float32"} and _dtypes(states.opt_state) <= {"float32"}
    res = diagnostics.lr_find(model, CE, (x, y), steps=12, batch_size=16)
    assert res.losses.shape == res.lrs.shape == (12,) and np.all(np.isfinite(res.losses))


# ---------------------------------------------------------------------------------------------
# Model state (running statistics) through the engine


def _stateful_model(dtype=jnp.float64):
    layers = fnn.layers
    return fnn.models.build(
        fnn.models.serial(
            layers.dense(6), centering(0.5), layers.activation("tanh"), layers.dense(2)
        ),
        (2,),
        dtype,
    )


def test_stateless_models_carry_an_empty_model_state():
    model = fnn.mlp([2, 4, 2], activation="tanh")
    x, y = blobs(32)
    state, _ = train.fit(
        model,
        CE,
        optax.sgd(0.1),
        (x, y),
        epochs=1,
        batch_size=16,
        key=jax.random.key(0),
        progress=False,
    )
    assert state.model_state == {} and jax.tree.leaves(state.model_state) == []


@pytest.mark.parametrize("grad", ["autodiff", "manual"])
def test_a_step_updates_the_running_statistics_from_the_batch(grad):
    model = _stateful_model()
    x, y = blobs(16, dtype=np.float64)
    params = model.init(jax.random.key(0))
    h = x @ np.asarray(params[0]["w"]) + np.asarray(params[0]["b"])  # the centering's input
    state = train.init_state(params, optax.sgd(0.1), jax.random.key(1), model.init_state())
    new, _ = train.make_step(model, CE, optax.sgd(0.1), grad=grad)(state, x, y)
    np.testing.assert_allclose(new.model_state[1]["mean"], 0.5 * h.mean(0), rtol=1e-12)
    var = ((h - h.mean(0)) ** 2).mean(0)
    np.testing.assert_allclose(new.model_state[1]["var"], 0.5 + 0.5 * var, rtol=1e-12)


def test_stateful_fit_manual_equals_autodiff_and_evaluation_reads_the_state():
    model = _stateful_model()
    x, y = blobs(96, dtype=np.float64)
    kw = dict(epochs=3, batch_size=16, key=jax.random.key(0), progress=False)
    runs = {g: train.fit(model, CE, optax.adam(1e-2), (x, y), grad=g, **kw)[0] for g in GRADS}
    a, m = runs["autodiff"], runs["manual"]
    for u, v in zip(
        jax.tree.leaves((a.params, a.model_state)),
        jax.tree.leaves((m.params, m.model_state)),
        strict=True,
    ):
        np.testing.assert_allclose(u, v, rtol=1e-9, atol=1e-9)  # centering zeroes b0's grad
    assert float(jnp.max(jnp.abs(a.model_state[1]["mean"]))) > 1e-3  # it moved from zeros
    # evaluate(state) runs the model in evaluation mode with the running statistics.
    out = model.apply(a.params, jnp.asarray(x), state=a.model_state)
    expected = float(CE.fn(out, jnp.asarray(y)))
    got = train.evaluate(model, CE, a, (x, y))["loss"]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    fresh = train.evaluate(model, CE, a.params, (x, y))["loss"]  # init_state's statistics
    assert abs(fresh - got) > 1e-6


def test_fit_many_threads_each_runs_model_state():
    model = _stateful_model()
    x, y = blobs(64, dtype=np.float64)
    kw = dict(epochs=2, batch_size=16, progress=False)
    states, _ = many.fit_many(model, CE, optax.sgd(0.1), (x, y), seeds=[0, 1], **kw)
    for k in (0, 1):
        alone, _ = train.fit(model, CE, optax.sgd(0.1), (x, y), key=jax.random.key(k), **kw)
        np.testing.assert_allclose(
            many.take(states.model_state, k)[1]["var"], alone.model_state[1]["var"], rtol=1e-10
        )
