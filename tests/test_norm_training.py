"""batch_norm inside the engine: running statistics trained by fit, used by evaluate, saved."""

import jax
import jax.numpy as jnp
import numpy as np

import fnn
from fnn import checkpoint, layers, models, optim, train

F64 = jnp.float64


def bn_model():
    net = models.serial(
        layers.dense(16),
        layers.batch_norm(momentum=0.8),
        layers.activation("relu"),
        layers.dense(2),
    )
    return models.build(net, (2,), F64)


def test_fit_trains_running_statistics_that_evaluate_uses_and_checkpoints_keep(tmp_path):
    ds = fnn.data.load("moons", seed=0)
    model = bn_model()
    assert model.stateful
    x, y = jnp.asarray(ds.x_train, F64), jnp.asarray(ds.y_train)
    state, history = train.fit(
        model,
        "softmax_cross_entropy",
        optim.get("adam", 1e-2),
        (x, y),
        epochs=5,
        batch_size=50,
        key=jax.random.key(0),
        grad="manual",
        progress=False,
    )
    running = state.model_state[1]
    start = model.init_state()[1]
    assert not np.allclose(running["mean"], start["mean"])  # the statistics moved
    # after training, the running mean approaches the mean of the batch norm's input
    pre = models.taps(model, state.params, x, state=state.model_state)["[1]"]["in"]
    np.testing.assert_allclose(running["mean"], jnp.mean(pre, axis=0), atol=0.3)
    with_state = train.evaluate(model, "softmax_cross_entropy", state, (ds.x_test, ds.y_test))
    fresh = train.evaluate(model, "softmax_cross_entropy", state.params, (ds.x_test, ds.y_test))
    assert with_state["accuracy"] > 0.75  # moons after 5 epochs; chance is 0.5
    assert with_state["loss"] != fresh["loss"]  # evaluate really reads the running statistics
    checkpoint.save(str(tmp_path), state, step=1)
    back, _ = checkpoint.restore(str(tmp_path), state)
    for a, b in zip(
        jax.tree.leaves(back.model_state), jax.tree.leaves(state.model_state), strict=True
    ):
        np.testing.assert_array_equal(a, b)
