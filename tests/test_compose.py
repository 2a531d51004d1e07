"""serial, residual and parallel: nesting, the one chain rule, user layers inside networks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import backprop, check, layers, losses, models, optim, train

F64 = jnp.float64
CE = losses.get("softmax_cross_entropy")


def setup(model, batch=6, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(k2, (batch, *model.in_shape), model.dtype)
    y = jax.random.randint(k3, (batch,), 0, model.out_shape[-1])
    return model.init(k1), x, y


def autodiff(model, params, x, y):
    return jax.grad(lambda p: CE.fn(model.apply(p, x), y))(params)


def residual_in_parallel_in_serial():
    branch = models.residual(layers.dense(5), layers.activation("tanh"), layers.dense(5))
    return models.serial(
        layers.dense(5),
        models.parallel(branch, [layers.dense(3), layers.activation("sigmoid")]),
        layers.activation("elu"),
        layers.dense(3),
    )


def parallel_in_residual_in_serial():
    fork = models.parallel(
        [layers.dense(4), layers.activation("gelu")],
        models.serial(layers.dense(4), layers.activation("softplus")),
        combine="sum",
    )
    block = models.residual(fork, layers.dense(4))
    return models.serial(layers.dense(4), block, models.residual(layers.dense(4)), layers.dense(3))


@pytest.mark.parametrize("make", [residual_in_parallel_in_serial, parallel_in_residual_in_serial])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_nested_composites_match_jax_grad(make, jit):
    model = models.build(make(), (4,), F64)
    params, x, y = setup(model)
    vg = backprop.value_and_grad(model, CE)
    value, manual = (jax.jit(vg) if jit else vg)(params, x, y)
    want = autodiff(model, params, x, y)
    report = check.compare(manual, want, rtol=1e-10)
    assert report.ok and report.max_rel_err <= 1e-10, str(report)
    assert float(value) == pytest.approx(float(CE.fn(model.apply(params, x), y)), rel=1e-14)


def test_parallel_concat_splits_the_cotangent_and_sums_dx():
    # y = [x W1, x W2]: dx must be dy1 W1^T + dy2 W2^T, each branch its own slice of dy.
    layer = models.parallel(layers.dense(2), layers.dense(3))
    out, params = layer.init(jax.random.key(0), (4,), F64)
    assert out == (5,)
    x = jax.random.normal(jax.random.key(1), (3, 4), F64)
    dy = jax.random.normal(jax.random.key(2), (3, 5), F64)
    _, res = layer.forward(params, x)
    grads, dx = layer.backward(params, res, dy)
    w1, w2 = params[0]["w"], params[1]["w"]
    np.testing.assert_allclose(dx, dy[:, :2] @ w1.T + dy[:, 2:] @ w2.T, rtol=1e-13)
    np.testing.assert_allclose(grads[1]["w"], x.T @ dy[:, 2:], rtol=1e-13)


def test_residual_adds_the_skip_cotangent():
    block = models.residual(layers.dense(3))
    _, params = block.init(jax.random.key(0), (3,), F64)
    x = jnp.ones((2, 3), F64)
    y, res = block.forward(params, x)
    np.testing.assert_allclose(y, x + x @ params[0]["w"] + params[0]["b"][None, :])
    _, dx = block.backward(params, res, jnp.ones((2, 3), F64))
    np.testing.assert_allclose(dx, 1.0 + jnp.ones((2, 3)) @ params[0]["w"].T, rtol=1e-13)


def test_composition_errors_name_the_problem():
    with pytest.raises(
        ValueError,
        match=r"residual\(dense\(5\)\): the branch maps feature shape "
        r"\(4,\) to \(5,\); y = x \+ branch\(x\) needs them equal",
    ):
        models.build(models.residual(layers.dense(5)), (4,))
    with pytest.raises(
        ValueError,
        match=r"combine='sum' needs equal branch shapes, got "
        r"\[\(2,\), \(3,\)\]",
    ):
        models.build(models.parallel(layers.dense(2), layers.dense(3), combine="sum"), (4,))
    with pytest.raises(ValueError, match=r"combine must be 'concat' or 'sum', got 'max'"):
        models.parallel(layers.dense(2), combine="max")
    with pytest.raises(
        TypeError,
        match=r"serial: argument 1 must be a Layer, got function; "
        r"wrap a function with fnn.layers.custom",
    ):
        models.serial(layers.dense(2), lambda x: jnp.tanh(x))
    with pytest.raises(ValueError, match=r"serial, layer 1 \(residual\(dense\(3\)\)\)"):
        models.build(models.serial(layers.dense(2), models.residual(layers.dense(3))), (4,))


def test_sublayers_and_taps_name_every_intermediate_by_path():
    model = models.build(residual_in_parallel_in_serial(), (4,), F64)
    params, x, _ = setup(model)
    subs = models.sublayers(model)
    assert subs["[1][0][1]"].name == "tanh" and subs["[1][1][1]"].name == "sigmoid"
    t = models.taps(model, params, x)
    assert set(t) == set(subs)
    # the sigmoid's input is the dense before it applied to the parallel block's input
    d = params[1][1][0]
    want = t["[1]"]["in"] @ d["w"] + d["b"][None, :]
    np.testing.assert_allclose(t["[1][1][1]"]["in"], want, rtol=1e-13)
    np.testing.assert_allclose(t["[1][1][1]"]["out"], jax.nn.sigmoid(want), rtol=1e-13)
    np.testing.assert_allclose(t[""]["out"], model.apply(params, x), rtol=1e-13)


def cube(p, x):
    return x * x * x * p["s"][None, :]


def cube_init(key, in_shape, dtype):
    return tuple(in_shape), {"s": jnp.full(in_shape, 0.5, dtype)}


def cube_backward(p, x, y, dy):
    return {"s": jnp.sum(x * x * x * dy, axis=0)}, 3 * x * x * p["s"][None, :] * dy


def cube_backward_wrong(p, x, y, dy):  # forgets the factor 3 in dx
    return {"s": jnp.sum(x * x * x * dy, axis=0)}, x * x * p["s"][None, :] * dy


def test_a_custom_layer_with_a_wrong_backward_is_caught_and_named():
    def net(backward):
        own = layers.custom(cube, init=cube_init, backward=backward, name="cube")
        stack = models.serial(layers.dense(3), models.residual(own), layers.dense(2))
        return models.build(stack, (4,), F64)

    good = net(cube_backward)
    params, x, y = setup(good)
    assert check.check_model(good, CE, params, x, y).ok
    bad = net(cube_backward_wrong)
    report = check.check_model(bad, CE, params, x, y)
    # The cube's own parameter is right; everything below it gets a wrong cotangent.
    assert report.failed == ["[0]['b']", "[0]['w']"], str(report)


def test_a_custom_layer_without_backward_trains_with_the_manual_sweep():
    own = layers.custom(cube, init=cube_init)  # autodiff rule
    model = models.build(models.serial(layers.dense(6), own, layers.dense(2)), (2,), F64)
    ds = fnn.data.load("moons", seed=0)
    params = model.init(jax.random.key(0))
    x, y = jnp.asarray(ds.x_train, F64), jnp.asarray(ds.y_train)
    _, manual = backprop.value_and_grad(model, CE)(params, x, y)
    check.assert_grads_close(manual, autodiff(model, params, x, y), rtol=1e-10)
    state, history = train.fit(
        model,
        CE,
        optim.get("adam", 1e-2),
        (x, y),
        epochs=3,
        batch_size=64,
        key=jax.random.key(1),
        grad="manual",
        progress=False,
    )
    assert history["train_loss"][-1] < history["train_loss"][0]


@pytest.mark.parametrize("composite", [False, True], ids=["mlp", "residual+parallel"])
def test_bridge_vmap_gives_per_example_grads_equal_to_a_loop(composite):
    if composite:
        model = models.build(parallel_in_residual_in_serial(), (4,), F64)
    else:
        model = fnn.mlp([3, 5, 2], activation="sigmoid", dtype=F64)
    bridged = backprop.manual_vjp(model)
    params, x, y = setup(model, batch=4)

    def one(m):
        return jax.grad(lambda p, xi, yi: CE.fn(m.apply(p, xi[None, :]), yi[None]))

    per_example = jax.jit(jax.vmap(one(bridged), in_axes=(None, 0, 0)))(params, x, y)
    for i in range(x.shape[0]):
        single = one(model)(params, x[i], y[i])
        check.assert_grads_close(jax.tree.map(lambda g, i=i: g[i], per_example), single, rtol=1e-10)


def test_bridge_refuses_forward_mode_with_a_hint():
    model = fnn.mlp([3, 4, 2], dtype=F64)
    bridged = backprop.manual_vjp(model)
    params, x, _ = setup(model)
    with pytest.raises(
        TypeError,
        match=r"forward-mode autodiff .* cannot differentiate a "
        r"jax.custom_vjp function; use model.apply",
    ):
        jax.jvp(lambda xx: bridged.apply(params, xx), (x,), (x,))

    # reverse-over-reverse works: the Hessian of the bridged loss equals the plain one's
    labels = jnp.zeros(x.shape[0], jnp.int32)

    def loss(m):
        return lambda b: CE.fn(m.apply([params[0], {}, {**params[2], "b": b}], x), labels)

    h1 = jax.jit(jax.hessian(loss(bridged)))(params[2]["b"])
    h2 = jax.jit(jax.hessian(loss(model)))(params[2]["b"])
    np.testing.assert_allclose(h1, h2, rtol=1e-10, atol=1e-14)


def test_diagnostics_reach_layers_inside_blocks():
    model = models.build(residual_in_parallel_in_serial(), (4,), F64)
    params, x, y = setup(model)
    norms = fnn.diagnostics.grad_norms(backprop.grad(model, CE)(params, x, y))
    assert list(norms) == ["[0]", "[1][0][0]", "[1][0][2]", "[1][1][0]", "[3]"]
    stats = fnn.diagnostics.unit_stats(model, params, x)
    assert set(stats.saturated) == {"[1][0][1]", "[1][1][1]"}  # tanh, sigmoid inside blocks
    assert set(stats.mean_derivative) == {"[1][0][1]", "[1][1][1]", "[2]"}


def test_check_model_marks_layers_whose_rule_is_autodiff():
    own = layers.custom(cube, init=cube_init)  # no backward: jax.vjp is its rule
    model = models.build(models.serial(layers.dense(3), own, layers.dense(2)), (4,), F64)
    params, x, y = setup(model)
    report = check.check_model(model, CE, params, x, y)
    assert report.ok and report.autodiff_rules == ("[1] cube",)
    assert "autodiff rule (not hand-written, so not proven here): [1] cube" in str(report)
    assert report.as_dict()["autodiff_rules"] == ["[1] cube"]
    proven = models.build(models.serial(layers.dense(3), layers.dense(2)), (4,), F64)
    assert check.check_model(proven, CE, *setup(proven)).autodiff_rules == ()
