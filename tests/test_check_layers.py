"""fnn.check_layers (re-exported by fnn.check): check_layer, and naming the layer whose
backward is wrong (in check_layer on a composite and in check_model)."""

import jax
import jax.numpy as jnp
import pytest

from fnn import activations, check, layers, losses, models

F64 = jnp.float64


def activation_with(name, vjp):
    """The activation ``name`` with its backward replaced by ``vjp(x, y, dy) -> dx``."""
    good = layers.activation(name)

    def forward(params, x, **kw):
        y, _ = good.forward(params, x, **kw)
        return y, (x, y)

    return good._replace(forward=forward, backward=lambda p, res, dy: ({}, vjp(*res, dy)))


def dense_with(fan_out, bug):
    """dense(fan_out) with ``bug(dparams, dx) -> (dparams, dx)`` after its backward."""
    good = layers.dense(fan_out)
    return good._replace(backward=lambda p, x, dy: bug(*good.backward(p, x, dy)))


def bad_residual(*children):
    """A residual block whose backward forgets the skip connection's ``dy``."""
    good = models.residual(*children)

    def backward(params, res, dy):
        grads, dx = good.backward(params, res, dy)
        return grads, dx - dy

    return good._replace(backward=backward)


# ---------------------------------------------------------------------------------------------
# right layers pass


@pytest.mark.parametrize("name", activations.NAMES)
def test_every_activation_layer_passes(name):
    report = check.check_layer(layers.activation(name), (5,))
    assert report.ok, str(report)
    assert [r.path for r in report.rows] == ["x"] and report.kind == "layer"
    assert report.fd_dtype == "float64" and report.max_rel_err <= 1e-10


@pytest.mark.parametrize(
    "layer",
    [
        layers.dense(3),
        layers.flatten(),
        layers.dropout(0.5),
        models.serial(layers.dense(4), layers.activation("relu"), layers.dense(2)),
        models.residual(layers.dense(4), layers.activation("tanh"), layers.dense(4)),
        models.parallel(layers.dense(2), layers.activation("sigmoid"), combine="concat"),
    ],
    ids=lambda lyr: lyr.name,
)
def test_fnn_layers_and_composites_pass(layer):
    report = check.check_layer(layer, (4,))
    assert report.ok, str(report)
    assert all(f.ok and not f.culprit for f in report.layers)
    if layer.parts:
        assert [f.path for f in report.layers][-1] == ""  # backward-sweep order ends at the top


def test_dropout_in_training_mode_checks_its_mask():
    report = check.check_layer(layers.dropout(0.5), (6,), train=True, key=jax.random.key(3))
    assert report.ok, str(report)


def test_rows_name_params_by_path_and_x():
    report = check.check_layer(models.serial(layers.dense(3), layers.dense(2)), (2,))
    assert [r.path for r in report.rows] == [
        "params[0]['b']",
        "params[0]['w']",
        "params[1]['b']",
        "params[1]['w']",
        "x",
    ]


def test_custom_layers_manual_and_autodiff_rules():
    def cube(p, x):
        return p["a"] * x**3

    manual = layers.custom(
        cube,
        init=lambda key, shape, dtype: (shape, {"a": jnp.ones((), dtype)}),
        backward=lambda p, x, y, dy: ({"a": jnp.sum(dy * x**3)}, 3 * p["a"] * x**2 * dy),
    )
    assert check.check_layer(manual, (3,)).ok
    auto = layers.custom(lambda p, x: jnp.sin(x), name="sine")
    report = check.check_layer(auto, (3,))
    assert report.ok and report.name == "sine [autodiff rule]"
    assert "autodiff rule" in report.note and "sine [autodiff rule]" in str(report)
    serial = check.check_layer(models.serial(layers.dense(3), auto), (2,))
    assert [f.rule for f in serial.layers if f.path == "[1]"] == ["autodiff"]
    assert "autodiff rule" in str(serial)


# ---------------------------------------------------------------------------------------------
# wrong rules are caught, and the culprit is named


def test_rule_right_only_for_batch_1_is_caught():
    def backward(p, x, y, dy):  # the bias gradient of the first example only
        return {"w": x.T @ dy, "b": dy[0]}, dy @ p["w"].T

    def init(key, shape, dtype):
        return (2,), {"w": jax.random.normal(key, (*shape, 2), dtype), "b": jnp.zeros(2, dtype)}

    lin = layers.custom(lambda p, x: x @ p["w"] + p["b"][None, :], init=init, backward=backward)
    assert check.check_layer(lin, (3,), batch=1).ok
    report = check.check_layer(lin, (3,), batch=4)
    assert report.failed == ["params['b']"]
    with pytest.raises(AssertionError, match=r"(?s)layer backward is wrong.*params\['b'\]"):
        check.assert_layer_ok(lin, (3,))


def test_a_wrong_activation_derivative_is_named_as_that_activation():
    bad_tanh = activation_with("tanh", lambda x, y, dy: dy * (1 - y))  # 1 - y, not 1 - y**2
    net = models.serial(
        layers.dense(4), layers.activation("tanh"), layers.dense(4), bad_tanh, layers.dense(3)
    )
    report = check.check_layer(net, (3,))
    # every leaf below the bug disagrees ...
    assert report.failed == [
        "params[0]['b']",
        "params[0]['w']",
        "params[2]['b']",
        "params[2]['w']",
        "x",
    ]
    # ... but one layer is named: the tanh at [3], a layer without parameters
    culprits = [f for f in report.layers if f.culprit]
    assert [(f.path, f.name, f.failed) for f in culprits] == [("[3]", "tanh", ("x",))]
    assert "first wrong backward (in sweep order): layer [3] tanh: backward wrong in x" in str(
        report
    )
    inside = {f.path: f for f in report.layers}
    assert not inside[""].ok and not inside[""].culprit  # the serial is wrong only through [3]


def test_culprits_in_nested_blocks_and_in_a_combination_rule():
    sign = dense_with(4, lambda dp, dx: ({**dp, "w": -dp["w"]}, dx))
    net = models.serial(layers.dense(4), models.residual(sign, layers.activation("relu")))
    report = check.check_layer(net, (3,))
    assert [f.path for f in report.layers if f.culprit] == ["[1][0]"]
    # all children right, the block's own rule (the skip's cotangent) wrong: the block is named
    glue = models.serial(layers.dense(4), bad_residual(layers.dense(4)), layers.dense(2))
    report = check.check_layer(glue, (3,))
    assert [(f.path, f.failed) for f in report.layers if f.culprit] == [("[1]", ("x",))]


def test_two_wrong_layers_are_named_in_backward_sweep_order():
    half = activation_with("sigmoid", lambda x, y, dy: dy * y * (1 - y) / 2)
    sign = dense_with(3, lambda dp, dx: (dp, -dx))
    net = models.serial(layers.dense(3), half, sign, layers.dense(2))
    report = check.check_layer(net, (2,))
    assert [f.path for f in report.layers if f.culprit] == ["[2]", "[1]"]


def test_check_model_names_the_culprit_when_it_fails():
    bad_relu = activation_with("relu", lambda x, y, dy: dy)  # forgets the mask
    net = models.serial(layers.dense(5), bad_relu, layers.dense(3))
    model = models.build(net, (3,), F64)
    params = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (6, 3), F64)
    y = jnp.arange(6) % 3
    report = check.check_model(model, "softmax_cross_entropy", params, x, y)
    assert report.failed == ["[0]['b']", "[0]['w']"]
    assert [(f.path, f.name) for f in report.layers if f.culprit] == [("[1]", "relu")]
    assert [f.path for f in report.layers][0] == "loss" and report.layers[0].ok
    assert "layer [1] relu: backward wrong in x" in report.verdict
    assert report.as_dict()["layers"][0]["path"] == "loss"
    good = check.check_model(fnn_mlp(), "mse", *mlp_data())
    assert good.ok and good.layers == ()  # nothing to locate when every leaf agrees
    assert len(check.check_model(fnn_mlp(), "mse", *mlp_data(), locate=True).layers) == 5


def fnn_mlp():
    return models.mlp([3, 4, 2], activation="tanh", dtype=F64)


def mlp_data():
    model = fnn_mlp()
    x = jax.random.normal(jax.random.key(2), (4, 3), F64)
    return model.init(jax.random.key(1)), x, jax.random.normal(jax.random.key(3), (4, 2), F64)


def test_check_model_names_a_wrong_loss_gradient():
    mse = losses.get("mse")
    bad = mse._replace(grad=lambda pred, target: mse.grad(pred, target) / 2)
    report = check.check_model(fnn_mlp(), bad, *mlp_data())
    assert [(f.path, f.culprit) for f in report.layers if not f.ok] == [("loss", True)]
    assert "the loss gradient mse: backward wrong in dpred" in report.verdict


def test_check_layer_bad_arguments():
    with pytest.raises(
        TypeError, match="layer must be an fnn.layers.Layer or a model, got function"
    ):
        check.check_layer(lambda x: x, (3,))
    with pytest.raises(ValueError, match="batch must be a positive int, got 0"):
        check.check_layer(layers.dense(2), (3,), batch=0)


def test_float32_layer_gets_float32_tolerances_and_float64_differences():
    report = check.check_layer(
        models.serial(layers.dense(3), layers.activation("gelu")), (4,), dtype=jnp.float32
    )
    assert report.ok and report.dtype == "float32" and report.fd_dtype == "float64", str(report)
    assert report.rows[0].autodiff.rtol == check.TOLERANCES["float32"][0]


def test_integer_inputs_are_held_fixed_and_only_dparams_checked():
    def lookup(p, ids):
        return p["table"][ids]

    def backward(p, ids, y, dy):  # rows hit several times accumulate
        return {"table": jnp.zeros_like(p["table"]).at[ids].add(dy)}, None

    def init(key, shape, dtype):
        return (*shape, 3), {"table": jax.random.normal(key, (5, 3), dtype)}

    ids = jnp.array([[0], [2], [2], [4]])
    emb = layers.custom(lookup, init=init, backward=backward, name="lookup")
    report = check.check_layer(emb, (1,), x=ids, transforms=False)
    assert report.ok and [r.path for r in report.rows] == ["params['table']"], str(report)
    wrong = layers.custom(
        lookup,
        init=init,
        backward=lambda p, i, y, dy: ({"table": jnp.zeros_like(p["table"]).at[i].set(dy)}, None),
    )
    assert check.check_layer(wrong, (1,), x=ids, transforms=False).failed == ["params['table']"]


def test_a_loss_whose_autodiff_is_the_odd_one_out_at_a_tie_is_not_blamed():
    def fn(pred, target):  # BCE on logits written with max and |z|: smooth, but at z = 0
        z = pred  # autodiff takes subgradients (1/2 and 1) that do not add up to s(0) - t
        return jnp.mean(jnp.maximum(z, 0.0) - z * target + jnp.log1p(jnp.exp(-jnp.abs(z))))

    bce = losses.get("binary_cross_entropy")._replace(name="tie_bce", fn=fn)
    model = models.mlp([3, 4, 1], activation="tanh", dtype=F64)
    params = model.init(jax.random.key(0))
    params[-1] = jax.tree.map(jnp.zeros_like, params[-1])  # every logit exactly 0
    x = jax.random.normal(jax.random.key(1), (6, 3), F64)
    y = jnp.array([[0.0], [1.0], [1.0], [0.0], [1.0], [1.0]], F64)
    report = check.check_model(model, bce, params, x, y)
    assert not report.ok and report.layers and all(f.ok for f in report.layers), str(report)
    assert "jax.grad is the odd one out" in report.verdict and "first wrong" not in report.verdict
