"""fnn.backprop: the manual reverse sweep needs no autodiff, and the custom_vjp bridge."""

import jax
import jax.numpy as jnp
import pytest

import fnn
from fnn import backprop, check, layers, losses, models

F64 = jnp.float64
CE = losses.get("softmax_cross_entropy")


def data(model, batch=6, seed=0, classes=None):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(k2, (batch, *model.in_shape), model.dtype)
    y = jax.random.randint(k3, (batch,), 0, classes or model.out_shape[0])
    return model.init(k1), x, y


def autodiff(model, params, x, y, **kw):
    return jax.value_and_grad(lambda p: CE.fn(model.apply(p, x, **kw), y))(params)


class AutodiffForbidden(Exception):
    pass


def no_autodiff(layer):
    """The layer with every leaf's forward wrapped in a custom_vjp whose backward raises."""
    if layer.parts:
        kids = [no_autodiff(c) for _, c in layer.parts]
        if layer.name.startswith("residual"):
            return models.residual(*kids)
        if layer.name.startswith("parallel[sum]"):
            return models.parallel(*kids, combine="sum")
        if layer.name.startswith("parallel"):
            return models.parallel(*kids)
        return models.serial(*kids)

    def forward(params, x, *, key=None, train=False, state=None):
        y, res = layer.forward(params, x, key=key, train=train, state=state)

        @jax.custom_vjp
        def f(p, xx):
            return layer.forward(p, xx, key=key, train=train, state=state)[0]

        def bwd(_, dy):
            raise AutodiffForbidden(f"autodiff reached {layer.name}")

        f.defvjp(lambda p, xx: (f(p, xx), None), bwd)
        return f(params, x), res

    return layer._replace(forward=forward)


def test_manual_sweep_uses_no_autodiff():
    inner = models.serial(layers.dense(5), layers.activation("tanh"))
    block = models.parallel(
        models.residual(layers.dense(5), layers.activation("relu")),
        [layers.dense(2), layers.activation("sigmoid")],
    )
    net = models.serial(
        inner,
        block,
        layers.dropout(0.3),
        layers.dense(4),
        layers.activation("relu"),
        layers.dense(3),
    )
    plain = models.build(net, (4,), F64)
    guarded = models.build(no_autodiff(net), (4,), F64)
    params, x, y = data(plain)
    key = jax.random.key(9)
    with pytest.raises(AutodiffForbidden, match="autodiff reached"):
        jax.grad(lambda p: CE.fn(guarded.apply(p, x, key=key, train=True), y))(params)
    value, grads = jax.jit(backprop.value_and_grad(guarded, CE))(params, x, y, key=key)
    want_value, want = autodiff(plain, params, x, y, key=key, train=True)
    assert float(value) == pytest.approx(float(want_value), rel=1e-14)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    check.assert_grads_close(grads, want, rtol=1e-10)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_value_and_grad_and_grad(jit):
    model = fnn.mlp([5, 7, 6, 3], activation="gelu", dtype=F64)
    params, x, y = data(model)
    vg = backprop.value_and_grad(model, "softmax_cross_entropy")
    g = backprop.grad(model, CE)
    if jit:
        vg, g = jax.jit(vg), jax.jit(g)
    value, grads = vg(params, x, y)
    want_value, want = autodiff(model, params, x, y)
    assert float(value) == pytest.approx(float(want_value), rel=1e-14)
    check.assert_grads_close(grads, want, rtol=1e-10)
    check.assert_grads_close(g(params, x, y), want, rtol=1e-10)


def test_dropout_same_key_in_both_passes():
    model = fnn.mlp([4, 16, 16, 3], activation="relu", dropout=0.5, dtype=F64)
    params, x, y = data(model)
    key = jax.random.key(1)
    _, manual = backprop.value_and_grad(model, CE)(params, x, y, key=key)  # train defaults on
    _, want = autodiff(model, params, x, y, key=key, train=True)
    check.assert_grads_close(manual, want, rtol=1e-10)
    _, other = autodiff(model, params, x, y, key=jax.random.key(2), train=True)
    assert not check.compare(manual, other).ok  # a different key drops other units
    _, off = backprop.value_and_grad(model, CE)(params, x, y, key=key, train=False)
    check.assert_grads_close(off, autodiff(model, params, x, y)[1], rtol=1e-10)


def test_bridge_grad_equals_plain_grad_and_runs_the_manual_rules():
    model = fnn.mlp([4, 6, 5, 3], activation="tanh", dropout=0.2, dtype=F64)
    bridged = backprop.manual_vjp(model)
    params, x, y = data(model)
    key = jax.random.key(3)
    assert "manual_vjp" in bridged.name
    value, grads = jax.jit(lambda p: autodiff(bridged, p, x, y, key=key, train=True))(params)
    want_value, want = autodiff(model, params, x, y, key=key, train=True)
    assert float(value) == pytest.approx(float(want_value), rel=1e-14)
    check.assert_grads_close(grads, want, rtol=1e-10)
    # A wrong backward rule shows through the bridge, so jax.grad really runs the manual rule.
    dense = layers.dense(3)
    bad = dense._replace(
        backward=lambda p, xx, dy: (
            {"w": -(xx.T @ dy), "b": jnp.sum(dy, axis=0)},
            dy @ p["w"].T,
        )
    )
    buggy = models.build(models.serial(layers.dense(5), layers.activation("tanh"), bad), (4,), F64)
    bp, bx, by = data(buggy)
    _, through_bridge = autodiff(backprop.manual_vjp(buggy), bp, bx, by)
    _, manual = backprop.value_and_grad(buggy, CE)(bp, bx, by)
    check.assert_grads_close(through_bridge, manual, rtol=1e-10)
    assert check.compare(through_bridge, autodiff(buggy, bp, bx, by)[1]).failed == ["[2]['w']"]


def test_bad_params_name_the_layer_and_shapes():
    model = fnn.mlp([3, 4, 2], activation="relu", dtype=F64)
    params, x, y = data(model)
    vg = backprop.value_and_grad(model, CE)
    wrong = [params[0], {}, {"w": jnp.zeros((5, 2), F64), "b": params[2]["b"]}]
    with pytest.raises(
        ValueError,
        match=r"params\[2\]\['w'\] \(layer 2, dense\(2\)\): expected "
        r"shape \(4, 2\), got \(5, 2\)",
    ):
        vg(wrong, x, y)
    with pytest.raises(ValueError, match=r"params\[0\] \(layer 0, dense\(4\)\): expected .*'b'"):
        vg([{"w": params[0]["w"]}, {}, params[2]], x, y)
    with pytest.raises(
        ValueError,
        match=r"one entry per layer \(3: dense\(4\), relu, dense\(2\)\)"
        r", got list of length 2",
    ):
        vg(params[:2], x, y)
    with pytest.raises(ValueError, match=r"params\[2\]\['w'\] \(layer 2"):
        jax.grad(lambda p: CE.fn(backprop.manual_vjp(model).apply(p, x), y))(wrong)


def test_bad_input_feature_size_names_layer_0_and_shapes():
    model = fnn.mlp([3, 4, 2], activation="relu", dtype=F64)
    params, _, y = data(model)
    x = jnp.ones((6, 7), F64)
    with pytest.raises(
        ValueError,
        match=r"x: expected shape \[batch, 3\] for layer 0 "
        r"\(dense\(4\)\), got \(6, 7\)",
    ):
        backprop.value_and_grad(model, CE)(params, x, y)
    with pytest.raises(ValueError, match=r"layer 0 \(dense\(4\)\), got \(6, 7\)"):
        backprop.manual_vjp(model).apply(params, x)
    with pytest.raises(ValueError, match=r"integer labels must have shape \(6,\)"):
        backprop.value_and_grad(model, CE)(params, jnp.ones((6, 3), F64), y[:2])
