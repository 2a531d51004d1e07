"""Data-parallel fit over 4 forced host devices equals the 1-device run.

XLA fixes the CPU device count at start-up, so the check runs in a child process with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``, under a timeout that kills it (XLA CPU
collectives can hang on a loaded 2-core machine; a hang must fail the test, not stall CI).
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

CHILD = textwrap.dedent("""
    import json
    import jax, numpy as np
    import fnn
    from fnn import optim, train

    assert len(jax.devices()) == 4, jax.devices()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 8)).astype(np.float32)
    y = (x[:, :3].sum(axis=1) > 0).astype(np.int32)
    model = fnn.mlp([8, 32, 2], activation="tanh", dropout=0.1)
    opt = optim.get("adam", 1e-2)
    out = {}
    for name, devices, grad in [("one", None, "autodiff"), ("mesh_one", 1, "autodiff"),
                                ("four", 4, "autodiff"), ("all", "all", "autodiff"),
                                ("four_manual", 4, "manual")]:
        state, hist = train.fit(model, "softmax_cross_entropy", opt, (x, y), epochs=3,
                                batch_size=64, key=jax.random.key(0), devices=devices,
                                grad=grad, eval_data=(x[:100], y[:100]), progress=False)
        leaf = state.params[0]["w"]
        out[name] = {"hist": hist, "w": np.asarray(leaf).tolist(),
                     "replicated": len(leaf.sharding.device_set)}
    try:
        train.fit(model, "softmax_cross_entropy", opt, (x, y), epochs=1, batch_size=30,
                  key=jax.random.key(0), devices=4, progress=False)
    except ValueError as err:
        out["error"] = str(err)

    # A stateful model (tests/stateful_layer.py): its batch statistics must be over the
    # global batch, not per device shard.
    import sys
    sys.path.insert(0, TESTS)
    from stateful_layer import centering
    from fnn import layers, models, parallel
    smodel = models.build(models.serial(layers.dense(16), centering(0.5),
                                        layers.activation("tanh"), layers.dense(2)), (8,))
    sgd = optim.get("sgd", 0.1)
    params = smodel.init(jax.random.key(0))
    xb, yb = x[:64], y[:64]
    h = (xb @ np.asarray(params[0]["w"]) + np.asarray(params[0]["b"])).astype(np.float64)
    mesh = parallel.make_mesh(4)
    state = parallel.put_replicated(
        train.init_state(params, sgd, jax.random.key(1), smodel.init_state()), mesh)
    shard = parallel.batch_sharding(mesh)
    new, _ = train.make_step(smodel, "softmax_cross_entropy", sgd)(
        state, jax.device_put(xb, shard), jax.device_put(yb, shard))
    parts = h.reshape(4, 16, -1)
    out["stats"] = {"var": np.asarray(new.model_state[1]["var"]).tolist(),
                    "global": (0.5 + 0.5 * h.var(0)).tolist(),
                    "per_shard": (0.5 + 0.5 * parts.var(1).mean(0)).tolist()}
    for name, devices in (("state_one", None), ("state_four", 4)):
        st, hist = train.fit(smodel, "softmax_cross_entropy", sgd, (x, y), epochs=2,
                             batch_size=64, key=jax.random.key(0), devices=devices,
                             eval_data=(x[:100], y[:100]), progress=False)
        out[name] = {"var": np.asarray(st.model_state[1]["var"]).tolist(), "hist": hist}
    print(json.dumps(out))
""").replace("TESTS", repr(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def child():
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"
    )
    env.pop("JAX_ENABLE_X64", None)  # the child runs float32, as the comparison demands
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=240
        )  # kills the child on timeout
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"multi-device child hung and was killed after {err.timeout} s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_four_devices_match_one_device_within_1e5(child):
    one = child["one"]["hist"]
    for name in ("mesh_one", "four", "all", "four_manual"):
        other = child[name]["hist"]
        for key in ("train_loss", "train_accuracy", "eval_loss", "eval_accuracy"):
            np.testing.assert_allclose(other[key], one[key], rtol=1e-5, err_msg=f"{name} {key}")
        np.testing.assert_allclose(child[name]["w"], child["one"]["w"], rtol=1e-4, atol=1e-6)
    assert child["one"]["replicated"] == 1
    assert child["four"]["replicated"] == 4 and child["all"]["replicated"] == 4
    assert one["train_loss"][-1] < one["train_loss"][0]


def test_batch_not_divisible_by_the_device_count_is_named(child):
    assert "batch_size: 30 is not divisible by the 4 devices" in child["error"]
    assert "e.g. 28 or 32" in child["error"]


def test_batch_statistics_are_over_the_global_batch(child):
    stats = child["stats"]
    np.testing.assert_allclose(stats["var"], stats["global"], rtol=1e-5)
    # per-shard statistics would be measurably different: the check can fail
    assert np.max(np.abs(np.subtract(stats["per_shard"], stats["global"]))) > 1e-3
    one, four = child["state_one"], child["state_four"]
    np.testing.assert_allclose(four["var"], one["var"], rtol=1e-5)
    for key in ("train_loss", "eval_loss"):
        np.testing.assert_allclose(four["hist"][key], one["hist"][key], rtol=1e-5)
