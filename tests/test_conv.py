"""conv2d and pooling: hand-written backwards against jax.vjp, finite differences, planted bugs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fnn import check, layers, models, recipes
from fnn.backprop import value_and_grad
from fnn.layers import conv as conv_mod
from fnn.layers import pool as pool_mod


def rel_err(a, b) -> float:
    """Largest elementwise difference relative to the largest magnitude of the reference."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b), initial=0.0) / max(np.max(np.abs(b), initial=0.0), 1e-300))


def vjp_errors(layer, in_shape, seed, dtype=jnp.float64, batch=2):
    """Max relative error of every cotangent of ``layer.backward`` vs ``jax.vjp`` of forward."""
    out, params = layer.init(jax.random.key(seed), in_shape, dtype)
    kx, kd = jax.random.split(jax.random.key(seed + 1))
    x = jax.random.normal(kx, (batch, *in_shape), dtype)
    dy = jax.random.normal(kd, (batch, *out), dtype)

    @jax.jit  # one compilation per example instead of one per primitive
    def both(params, x, dy):
        _, res = layer.forward(params, x)
        manual = layer.backward(params, res, dy)
        _, vjp = jax.vjp(lambda p, xx: layer.forward(p, xx)[0], params, x)
        return manual, vjp(dy)

    (dp, dx), (ap, ax) = both(params, x, dy)
    assert dx.dtype == x.dtype and dx.shape == x.shape
    errs = {"x": rel_err(dx, ax)}
    errs.update({k: rel_err(dp[k], ap[k]) for k in ap})
    return errs


paddings = st.one_of(
    st.sampled_from(["SAME", "VALID"]),
    st.integers(0, 2),
    st.tuples(
        st.tuples(st.integers(0, 2), st.integers(0, 2)),
        st.tuples(st.integers(0, 2), st.integers(0, 2)),
    ),
)


@settings(max_examples=4, deadline=None)
@given(
    # at least 5: the largest dilated kernel, 1 + (3 - 1) * 2, fits unpadded (VALID) input
    hw=st.tuples(st.integers(5, 9), st.integers(5, 9)),
    groups=st.sampled_from([1, 2, 3]),
    cin=st.integers(1, 2),
    fout=st.integers(1, 2),
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    padding=paddings,
    bias=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_conv2d_backward_equals_vjp_in_float64(
    hw, groups, cin, fout, kernel, stride, dilation, padding, bias, seed
):
    layer = layers.conv2d(
        fout * groups,
        kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        use_bias=bias,
    )
    errs = vjp_errors(layer, (*hw, cin * groups), seed)
    assert set(errs) == ({"x", "w", "b"} if bias else {"x", "w"})
    assert max(errs.values()) <= 1e-10, errs


@settings(max_examples=4, deadline=None)
@given(
    hw=st.tuples(st.integers(3, 8), st.integers(3, 8)),
    window=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))),
    padding=paddings,
    kind=st.sampled_from(["max_pool", "avg_pool"]),
    seed=st.integers(0, 1000),
)
def test_pooling_backward_equals_vjp_in_float64(hw, window, stride, padding, kind, seed):
    layer = getattr(layers, kind)(window, stride, padding)
    errs = vjp_errors(layer, (*hw, 2), seed)
    assert errs["x"] <= 1e-10, errs


@pytest.mark.parametrize(
    ("layer", "in_shape"),
    [(layers.global_avg_pool(), (3, 4, 5)), (layers.reshape((4, 3, 2)), (24,))],
)
def test_global_avg_pool_and_reshape_backward_equal_vjp(layer, in_shape):
    assert vjp_errors(layer, in_shape, 0)["x"] <= 1e-12


def test_max_pool_ties_go_to_the_first_maximum_in_row_order():
    x = jnp.array([[0.0, 2.0, 2.0, 1.0], [2.0, 1.0, 0.0, 0.0]]).reshape(1, 2, 4, 1)
    layer = layers.max_pool(2)
    y, res = layer.forward({}, x)
    _, dx = layer.backward({}, res, jnp.array([3.0, 5.0]).reshape(1, 1, 2, 1))
    # window 1 holds 0, 2 / 2, 1: the 2 at (0, 1) comes first; window 2 holds 2, 1 / 0, 0
    assert dx[0, :, :, 0].tolist() == [[0.0, 3.0, 5.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    assert float(dx.sum()) == 8.0


@pytest.mark.parametrize("kind", ["conv2d", "max_pool", "avg_pool"])
def test_float32_backwards_agree_with_vjp(kind):
    layer = {
        "conv2d": layers.conv2d(4, 3, stride=2, dilation=1, groups=2, padding=1),
        "max_pool": layers.max_pool(3, 2, "SAME"),
        "avg_pool": layers.avg_pool(3, 2, "SAME"),
    }[kind]
    errs = vjp_errors(layer, (7, 6, 4), 3, dtype=jnp.float32)
    assert max(errs.values()) <= 1e-5, errs


def small_cnn(mid=None, dtype=jnp.float64):
    """reshape, conv, relu, ``mid`` (the layer under test), global pool, dense: a tiny CNN."""
    mid = mid or layers.conv2d(4, 3, stride=2, padding=1, dilation=1, groups=2)
    return models.build(
        models.serial(
            layers.reshape((6, 6, 1)),
            layers.conv2d(4, 3, padding="SAME", w_init=jax.nn.initializers.normal(0.5)),
            layers.activation("tanh"),
            mid,
            layers.global_avg_pool(),
            layers.dense(3),
        ),
        (36,),
        dtype,
    )


def check_cnn(mid, dtype=jnp.float64, fd=True):
    model = small_cnn(mid, dtype)
    params = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (5, 36), dtype)
    y = jnp.arange(5) % 3
    return check.check_model(model, "softmax_cross_entropy", params, x, y, fd=fd)


def test_small_cnn_agrees_with_autodiff_and_finite_differences():
    mid = models.serial(
        layers.conv2d(4, 3, stride=2, padding=1, groups=2),
        layers.activation("tanh"),
        layers.max_pool(2, 1),
        layers.conv2d(4, (2, 1), padding="SAME", dilation=(2, 1)),
        layers.avg_pool(2, 1, "SAME"),
    )
    report = check_cnn(mid)
    assert report.ok, str(report)
    assert report.max_rel_err <= 1e-10
    assert len(report.rows) == 8
    assert all(r.fd is not None and r.fd.ok for r in report.rows)


def test_small_cnn_in_float32_agrees_with_autodiff():
    report = check_cnn(layers.conv2d(4, 3, stride=2, padding=1), jnp.float32, fd=False)
    assert report.dtype == "float32" and report.ok, str(report)


# ---------------------------------------------------------------------------------------------
# planted bugs: a wrong rule must be caught, named by the parameter paths it corrupts


def with_dx(layer, wrong_dx):
    """``layer`` whose backward computes ``dx`` by ``wrong_dx(params, res, dy)``."""

    def backward(params, res, dy):
        grads, _ = layer.backward(params, res, dy)
        return grads, wrong_dx(params, res, dy)

    return layer._replace(backward=backward)


CONV = {"stride": (2, 2), "pads": ((1, 1), (1, 1)), "dilation": (1, 1), "groups": 1}


def conv_dx(**change):
    conf = {**CONV, **change}
    flip = conf.pop("flip", True)

    def dx(params, x, dy):
        # input_grad flips the kernel itself; handing it a pre-flipped one cancels the flip
        w = params["w"] if flip else params["w"][::-1, ::-1]
        return conv_mod.input_grad(dy, w, x.shape[1:3], **conf)

    return dx


def test_the_reference_dx_of_the_planted_conv_bugs_passes():
    # the rule the planted bugs below change, written the same way: it must pass
    good = layers.conv2d(4, 3, stride=2, padding=1)
    assert check_cnn(with_dx(good, conv_dx()), fd=False).ok


@pytest.mark.parametrize(
    "wrong",
    [
        conv_dx(flip=False),
        conv_dx(stride=(1, 1)),
        conv_dx(pads=((0, 2), (0, 2))),
    ],
    ids=["kernel-not-flipped", "stride-ignored-in-dx", "padding-off-by-one"],
)
def test_planted_conv_bugs_are_caught_and_named(wrong):
    good = layers.conv2d(4, 3, stride=2, padding=1)
    report = check_cnn(with_dx(good, wrong), fd=False)
    assert not report.ok
    # dx feeds the first convolution: its parameters are wrong, the later layers' are not
    assert set(report.failed) == {"[1]['w']", "[1]['b']"}, report.failed
    assert "manual backward disagrees with jax.grad" in report.rows[0].diagnosis


def test_planted_max_pool_routing_bug_is_caught_and_named():
    good = layers.max_pool(2)

    def to_min(params, x, dy):  # routes each window's dy to its minimum instead
        pads = ((0, 0), (0, 0))
        p = pool_mod.patches(x, (2, 2), (2, 2), pads)
        pick = jax.nn.one_hot(jnp.argmin(p, axis=-1), 4, dtype=dy.dtype)
        return pool_mod.unpatches(pick * dy[..., None], x.shape[1:3], (2, 2), (2, 2), pads)

    report = check_cnn(with_dx(good, to_min), fd=False)
    assert set(report.failed) == {"[1]['w']", "[1]['b']"}, report.failed


def test_cnn_trains_under_jit_with_the_manual_sweep():
    model = small_cnn(layers.max_pool(2))
    params = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (24, 36), jnp.float64)
    y = (x.mean(1) > 0).astype(jnp.int32)
    vg = jax.jit(value_and_grad(model, "softmax_cross_entropy"))
    first = None
    for _ in range(100):
        value, grads = vg(params, x, y)
        first = value if first is None else first
        params = jax.tree.map(lambda p, g: p - 0.3 * g, params, grads)
    assert float(value) < 0.5 * float(first)


# ---------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: layers.conv2d(3, 3, groups=2), r"features \(3\) must be a multiple of groups"),
        (lambda: layers.conv2d(4, 0), r"kernel_size must be a positive int"),
        (lambda: layers.conv2d(4, 3, padding="FULL"), r"padding must be 'SAME', 'VALID'"),
        (lambda: layers.max_pool(2, padding=-1), r"padding must be"),
        (lambda: layers.reshape((8, -8)), r"shape must be a tuple of positive ints"),
    ],
)
def test_bad_arguments_name_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_shapes_name_the_layer_and_the_fix():
    with pytest.raises(ValueError, match=r"expects NHWC inputs.*reshape\(\(H, W, C\)\)"):
        models.build(layers.conv2d(4, 3), (64,))
    with pytest.raises(ValueError, match=r"input channels \(3\) must be a multiple of groups"):
        models.build(layers.conv2d(4, 3, groups=2), (8, 8, 3))
    with pytest.raises(ValueError, match=r"cannot reshape feature shape \(64,\).*to \(7, 7, 1\)"):
        models.build(layers.reshape((7, 7, 1)), (64,))
    conv = layers.conv2d(4, 3)
    _, p = conv.init(jax.random.key(0), (5, 5, 2), jnp.float32)
    with pytest.raises(ValueError, match=r"shape \[N, H, W, 2\], got \(1, 5, 5, 3\)"):
        conv.forward(p, jnp.zeros((1, 5, 5, 3), jnp.float32))
    with pytest.raises(TypeError, match=r"floating dtype"):
        conv.forward(p, jnp.zeros((1, 5, 5, 2), jnp.int32))


# ---------------------------------------------------------------------------------------------
# the recipe


@pytest.mark.parametrize("norm", [None, "batch", "layer"])
def test_cnn_recipe_takes_flat_rows_and_picks_the_image_layout(norm):
    model = recipes.cnn((8, 8, 1), 10, channels=(4, 6), hidden=8, norm=norm)
    assert model.in_shape == (64,) and model.out_shape == (10,)
    names = [lyr.name for _, lyr in model.layer.parts]
    assert names[0] == "reshape((8, 8, 1))"
    assert model.stateful == (norm == "batch")
    params = model.init(jax.random.key(0))
    out = model.apply(params, jnp.zeros((3, 64), jnp.float32))
    assert out.shape == (3, 10) and out.dtype == jnp.float32
    # 28x28x1 (MNIST) rows work the same way
    assert recipes.cnn((28, 28, 1), 10, channels=(2,), hidden=0).in_shape == (784,)


def test_cnn_recipe_bad_arguments():
    with pytest.raises(ValueError, match=r"cnn: in_shape must be \(H, W, C\), got \(64,\)"):
        recipes.cnn((64,))
    with pytest.raises(ValueError, match=r"cnn: norm must be None, 'batch' or 'layer'"):
        recipes.cnn(norm="group")


def test_image_shape_of_flat_rows():
    assert recipes.image_shape((64,)) == (8, 8, 1)
    assert recipes.image_shape(784) == (28, 28, 1)
    with pytest.raises(ValueError, match=r"image_shape: 10 features are not a square image"):
        recipes.image_shape(10)
