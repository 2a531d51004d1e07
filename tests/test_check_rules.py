"""fnn.check_rules (re-exported by fnn.check): check_vjp, check_custom_vjp, check_custom_jvp.

Each checker passes right rules and is shown to catch planted wrong ones, named by argument and
pytree path.
"""

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
from hypothesis import given, settings

from fnn import check, check_rules, fd, jacobian

F64 = jnp.float64


def dense(x, p):
    return jnp.tanh(x @ p["w"] + p["b"][None, :])


def dense_vjp(x, p, dy):
    """y = tanh(x w + b): dz = dy (1 - y**2); dx = dz w^T, dw = x^T dz, db = sum_batch dz."""
    dz = dy * (1 - dense(x, p) ** 2)
    return dz @ p["w"].T, {"w": x.T @ dz, "b": dz.sum(0)}


def dense_args(seed=0, batch=3):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(k1, (batch, 4), F64)
    p = {"w": jax.random.normal(k2, (4, 2), F64) / 2, "b": jax.random.normal(k3, (2,), F64)}
    return x, p


def with_bug(fix):
    """dense_vjp with its output passed through ``fix(dx, dparams) -> (dx, dparams)``."""
    return lambda x, p, dy: fix(*dense_vjp(x, p, dy))


# ---------------------------------------------------------------------------------------------
# check_vjp


def test_check_vjp_passes_a_right_rule_with_rows_by_argument_and_path():
    report = check.check_vjp(dense, dense_vjp, *dense_args())
    assert report.ok, str(report)
    assert [r.path for r in report.rows] == ["arg0", "arg1['b']", "arg1['w']"]
    assert report.max_rel_err <= 1e-12 and report.fd_max_rel_err <= 1e-7
    assert report.fd_dtype == "float64" and report.samples == 3 and report.kind == "vjp"
    assert all(r.fd_mode == "coords" and r.fd_autodiff.ok for r in report.rows)
    assert dict(report.transforms) == {"grad": "yes", "vmap(grad)": "yes", "jvp": "yes"}
    text = str(report)
    assert "PASS" in text and "arg1['w']" in text and "transforms: grad: yes" in text
    d = report.as_dict()
    assert d["ok"] and [leaf["path"] for leaf in d["leaves"]][0] == "arg0"


@pytest.mark.parametrize(
    ("name", "fix", "failed"),
    [
        ("sign flip in dw", lambda dx, dp: (dx, {**dp, "w": -dp["w"]}), ["arg1['w']"]),
        (
            "db for batch 1",
            lambda dx, dp: (dx, {**dp, "b": dp["b"] * 0 + dx[0, :2]}),
            ["arg1['b']"],
        ),
        ("dx missing factor", lambda dx, dp: (dx / 2, dp), ["arg0"]),
        ("db mean", lambda dx, dp: (dx, {**dp, "b": dp["b"] / 3}), ["arg1['b']"]),
    ],
)
def test_check_vjp_names_the_leaf_of_a_planted_bug(name, fix, failed):
    report = check.check_vjp(dense, with_bug(fix), *dense_args())
    assert report.failed == failed, str(report)
    for path in failed:
        row = next(r for r in report.rows if r.path == path)
        assert row.diagnosis == "rule wrong (autodiff agrees with finite differences)"
        assert row.fd_autodiff.ok and not row.fd.ok
        assert f"{path}: rule wrong" in report.verdict


def test_one_element_off_by_1e4_is_caught_at_its_index():
    def fix(dx, dp):
        return dx, {**dp, "w": dp["w"].at[2, 1].multiply(1 + 1e-4)}

    report = check.check_vjp(dense, with_bug(fix), *dense_args())
    row = next(r for r in report.rows if r.path == "arg1['w']")
    assert report.failed == ["arg1['w']"]
    assert row.autodiff.worst_index[1:] == (2, 1)  # (cotangent number, *index)
    assert row.autodiff.max_rel_err == pytest.approx(1e-4 / (2 + 1e-4), rel=1e-6)


def test_a_bug_in_one_cotangent_direction_only_is_found_by_several_samples():
    # a rule right only when the cotangent's first element is positive: one sample may miss it
    def vjp(x, dy):
        return (jnp.where(dy[0] > 0, dy * jnp.cos(x), -dy * jnp.cos(x)),)

    x = jnp.linspace(-1.0, 1.0, 5, dtype=F64)
    report = check.check_vjp(jnp.sin, vjp, x, samples=8)
    assert report.failed == ["arg0"]


@pytest.mark.parametrize(
    ("fix", "note"),
    [
        (lambda dx, dp: (dx.astype(jnp.float32), dp), "dtype float32, expected float64"),
        (lambda dx, dp: (dx, {**dp, "b": dp["b"][None]}), "shape (1, 2), expected (2,)"),
        (lambda dx, dp: (dx, {"w": dp["w"]}), "missing from the rule's output"),
    ],
    ids=["dtype", "shape", "missing"],
)
def test_wrong_dtype_shape_or_structure_is_a_failing_row(fix, note):
    report = check.check_vjp(dense, with_bug(fix), *dense_args())
    assert not report.ok
    bad = [r for r in report.rows if not r.ok]
    assert len(bad) == 1 and bad[0].autodiff.note == note and note in str(report)


def test_kinks_are_found_without_declaration_and_not_failed():
    # relu at exactly 0: jnp.maximum's autodiff gives 1/2 there, the rule 0; both are
    # one-sided choices, and finite differences see a kink (left slope 0, right slope 1).
    x = jnp.array([0.0, 0.7, -1.3, 2.0], F64)
    report = check.check_vjp(lambda x: jnp.maximum(x, 0.0), lambda x, g: (g * (x > 0),), x)
    assert report.ok, str(report)
    assert report.kinks == 3 and report.rows[0].fd.n_skipped == 3  # element 0, 3 samples
    assert "straddled a kink" in str(report)
    # sort near a tie: swapping two elements is a kink too
    y = jnp.array([0.3, 0.3 + 1e-7, -1.0], F64)

    def sort_vjp(x, g):
        return (jnp.zeros_like(x).at[jnp.argsort(x)].set(g),)

    report = check.check_vjp(jnp.sort, sort_vjp, y)
    assert report.ok and report.kinks == 6, str(report)  # elements 0 and 1, 3 samples


def test_wrong_branch_of_a_kinked_rule_is_still_caught_away_from_the_kink():
    x = check.draw_away_from_kinks(jax.random.key(1), (3, 4), kinks=(-0.5, 0.5), margin=0.01)
    report = check.check_vjp(
        lambda x: jnp.clip(x, -0.5, 0.5), lambda x, g: (g * (jnp.abs(x) > 0.5),), x
    )
    assert report.failed == ["arg0"] and report.kinks == 0


def test_autodiff_unavailable_falls_back_to_finite_differences():
    def sin_host(x):  # jax cannot differentiate a host callback
        return jax.pure_callback(
            np.sin, jax.ShapeDtypeStruct(x.shape, x.dtype), x, vmap_method="sequential"
        )

    x = jnp.linspace(-1.0, 1.0, 4, dtype=F64)
    good = check.check_vjp(sin_host, lambda x, g: (g * jnp.cos(x),), x, transforms=False)
    assert good.ok and "checked by FD only" in good.note
    assert good.rows[0].diagnosis == "ok (no autodiff witness)"
    bad = check.check_vjp(sin_host, lambda x, g: (g * jnp.sin(x),), x, transforms=False)
    assert bad.failed == ["arg0"]


def test_float32_rule_gets_float32_tolerances_and_float64_differences():
    x, p = jax.tree.map(lambda v: v.astype(jnp.float32), dense_args())
    report = check.check_vjp(dense, dense_vjp, x, p)
    assert report.ok and report.dtype == "float32" and report.fd_dtype == "float64"
    assert report.rows[0].autodiff.rtol == check.TOLERANCES["float32"][0]


def test_large_leaves_are_checked_along_random_directions():
    x = jax.random.normal(jax.random.key(2), (20, 20), F64)
    report = check.check_vjp(
        jnp.tanh, lambda x, g: (-g * (1 - jnp.tanh(x) ** 2),), x, max_coords=100, rtol=1e300
    )  # autodiff off: FD alone must catch it
    assert report.rows[0].fd_mode == "directions" and report.failed == ["arg0"]


def test_options_are_checked():
    with pytest.raises(TypeError, match=r"check_vjp: unknown option\(s\) \['sample'\]"):
        check.check_vjp(jnp.sin, lambda x, g: (g,), jnp.ones(2), sample=3)
    with pytest.raises(ValueError, match="samples must be >= 1, got 0"):
        check.check_vjp(jnp.sin, lambda x, g: (g,), jnp.ones(2), samples=0)


def test_assert_vjp_ok_raises_with_the_table():
    x, p = dense_args()
    assert check.assert_vjp_ok(dense, dense_vjp, x, p).ok
    with pytest.raises(AssertionError, match=r"(?s)vjp rule is wrong.*arg1\['w'\].*FAIL"):
        check.assert_vjp_ok(dense, with_bug(lambda dx, dp: (dx, {**dp, "w": 0 * dp["w"]})), x, p)


# ---------------------------------------------------------------------------------------------
# custom_vjp and custom_jvp


def make_softplus(bug=1.0):
    @jax.custom_vjp
    def softplus(x, beta):
        return jnp.logaddexp(beta * x, 0.0) / beta

    def fwd(x, beta):
        return softplus(x, beta), (x, beta)

    def bwd(res, g):  # d/dx = sigmoid(beta x); d/dbeta = (x sigmoid(beta x) - y) / beta
        x, beta = res
        s = jax.nn.sigmoid(beta * x)
        y = jnp.logaddexp(beta * x, 0.0) / beta
        return bug * g * s, jnp.sum(g * (x * s - y)) / beta

    softplus.defvjp(fwd, bwd)
    return softplus


def test_check_custom_vjp_passes_and_says_there_is_no_forward_mode():
    x = jnp.linspace(-2.0, 2.0, 5, dtype=F64)
    report = check.check_custom_vjp(make_softplus(), x, jnp.asarray(1.5, F64))
    assert report.ok, str(report)
    assert [r.path for r in report.rows] == ["arg0", "arg1"] and report.name == "softplus"
    t = dict(report.transforms)
    assert t["grad"] == "yes" and t["vmap(grad)"] == "yes"
    assert t["jvp"] == "no: a jax.custom_vjp function has no forward mode (use grad/vjp)"


def test_check_custom_vjp_catches_a_wrong_rule():
    x = jnp.linspace(-2.0, 2.0, 5, dtype=F64)
    report = check.check_custom_vjp(make_softplus(bug=1.001), x, jnp.asarray(1.5, F64))
    assert report.failed == ["arg0"]
    with pytest.raises(AssertionError, match="custom_vjp rule is wrong"):
        check.assert_custom_vjp_ok(make_softplus(bug=-1.0), x, jnp.asarray(1.5, F64))


def test_check_custom_vjp_holds_nondiff_arguments_fixed():
    scale = jax.custom_vjp(lambda n, x: x * n, nondiff_argnums=(0,))
    scale.defvjp(lambda n, x: (x * n, None), lambda n, _, g: (g * n,))
    report = check.check_custom_vjp(scale, 3.0, jnp.ones(3, F64))
    assert report.ok and [r.path for r in report.rows] == ["arg1"], str(report)


def test_check_custom_vjp_refuses_other_functions():
    with pytest.raises(
        TypeError, match="must be a jax.custom_vjp function, got PjitFunction; for a plain function"
    ):
        check.check_custom_vjp(jnp.sin, jnp.ones(2))


def make_scaled_sin(bug=1.0):
    @jax.custom_jvp
    def f(x, y):
        return {"s": jnp.sin(x) * y, "c": jnp.cos(x)}

    @f.defjvp
    def f_jvp(primals, tangents):  # the product rule, and d cos = -sin
        (x, y), (dx, dy) = primals, tangents
        out = f(x, y)
        return out, {"s": jnp.cos(x) * dx * y + bug * jnp.sin(x) * dy, "c": -jnp.sin(x) * dx}

    return f


def test_check_custom_jvp_passes_and_catches_a_forgotten_term():
    x = jnp.linspace(-1.0, 1.0, 4, dtype=F64)
    good = check.check_custom_jvp(make_scaled_sin(), x, x + 2)
    assert good.ok, str(good)
    assert [r.path for r in good.rows] == ["out['c']", "out['s']"]
    assert good.kind == "custom_jvp" and "random tangents" in str(good)
    bad = check.check_custom_jvp(make_scaled_sin(bug=0.0), x, x + 2)
    assert bad.failed == ["out['s']"]
    assert bad.rows[1].diagnosis == "rule wrong (autodiff agrees with finite differences)"
    with pytest.raises(AssertionError, match=r"(?s)custom_jvp rule is wrong.*out\['s'\]"):
        check.assert_custom_jvp_ok(make_scaled_sin(bug=1.01), x, x + 2)
    with pytest.raises(TypeError, match="must be a jax.custom_jvp function"):
        check.check_custom_jvp(make_softplus(), x, 1.0)


# ---------------------------------------------------------------------------------------------
# drawing primals away from kinks


def test_draw_away_from_kinks_keeps_its_margin():
    x = check.draw_away_from_kinks(jax.random.key(0), (4000,), kinks=(0.0, 1.0), margin=0.05)
    assert float(jnp.min(jnp.abs(x))) >= 0.05 and float(jnp.min(jnp.abs(x - 1.0))) >= 0.05
    assert x.dtype == F64 and x.shape == (4000,)


@settings(max_examples=15, deadline=None)
@given(check.away_from_kinks((3, 4), kinks=(0.0,), margin=1e-3))
def test_relu_rule_passes_on_drawn_primals(x):
    assert np.min(np.abs(x)) >= 1e-3
    report = check.check_vjp(
        jax.nn.relu, lambda x, g: (g * (x > 0),), jnp.asarray(x), transforms=False
    )
    assert report.ok and report.kinks == 0, str(report)


# ---------------------------------------------------------------------------------------------
# fd: kink_mask, numerical_jacobian, numerical_jvp


def test_kink_mask_tells_kinks_from_steep_slopes():
    h = np.full(4, 1e-5)
    x = np.array([0.0, 1.5e-5, 3e-5, 0.5])[:, None]  # on, within 2h of, beyond 2h of the kink

    def probes(f):
        return f(x), f(x + h[:, None]), f(x - h[:, None]), f(x + 2e-5), f(x - 2e-5)

    assert fd.kink_mask(*probes(np.abs), h).tolist() == [True, True, False, False]
    assert not fd.kink_mask(*probes(lambda v: np.exp(8 * v)), h).any()  # steep, but smooth


def test_numerical_jacobian_matches_mpmath():
    x = jnp.array([0.3, -1.1, 2.0], F64)
    jac = jacobian.numerical_jacobian(lambda v: jnp.sin(v) * jnp.exp(v[::-1]), (x,))
    want = np.zeros((3, 3))
    xs = [mpmath.mpf(float(v)) for v in x]
    for i in range(3):
        for j in range(3):

            def fi(t, i=i, j=j):
                v = list(xs)
                v[j] = t
                return mpmath.sin(v[i]) * mpmath.exp(v[2 - i])

            want[i, j] = float(mpmath.diff(fi, xs[j]))
    (leaf,) = jac.leaves
    assert leaf.path == "arg0" and leaf.mode == "coords" and not leaf.kinks.any()
    np.testing.assert_allclose(leaf.columns.T, want, rtol=1e-8, atol=1e-10)


def test_numerical_jvp_along_tangents():
    x = jnp.array([0.3, -1.1], F64)
    f0, slopes, kinks = jacobian.numerical_jvp(
        lambda v: jnp.sin(v) ** 2, (x,), [(jnp.ones(2, F64),)]
    )
    np.testing.assert_allclose(slopes[0], np.sin(2 * np.asarray(x)), rtol=1e-8)
    assert f0.shape == (2,) and kinks.tolist() == [False]
    _, _, kinks = jacobian.numerical_jvp(
        jnp.abs, (jnp.array([0.0, 1.0], F64),), [(jnp.ones(2, F64),)]
    )
    assert kinks.tolist() == [True]


def test_rows_name_nested_arguments():
    names = [n for n, _ in check_rules.leaf_paths(({"a": [1.0, 2.0]}, 3.0), ["arg0", "arg1"])]
    assert names == ["arg0['a'][0]", "arg0['a'][1]", "arg1"]


def test_fixed_public_names_are_in_fnn_check():
    for name in [
        "compare",
        "assert_grads_close",
        "Report",
        "Row",
        "TOLERANCES",
        "numerical_grad",
        "check_model",
        "check_vjp",
        "check_custom_vjp",
        "check_custom_jvp",
        "assert_vjp_ok",
        "assert_custom_vjp_ok",
        "assert_custom_jvp_ok",
        "RuleReport",
        "draw_away_from_kinks",
        "away_from_kinks",
        "kink_mask",
        "numerical_jacobian",
        "transform_support",
    ]:
        assert callable(getattr(check, name)) or isinstance(getattr(check, name), dict), name


def test_a_custom_vjp_rule_that_raises_is_a_failing_report():
    f = jax.custom_vjp(lambda x: jnp.sin(x))
    f.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (jnp.ones(7) * g[0],))  # wrong shape
    report = check.check_custom_vjp(f, jnp.ones(3, F64), transforms=False)
    assert report.failed == ["arg0"] and "the rule raised" in report.rows[0].autodiff.note
