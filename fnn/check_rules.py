"""Check any hand-written differentiation rule: a VJP, a ``jax.custom_vjp``, a ``jax.custom_jvp``.

Each check asks three witnesses, as :func:`fnn.check.check_model` does for a model: the rule
under test, JAX's autodiff of the plain function, and central finite differences
(:func:`fnn.jacobian.numerical_jacobian`, in float64). It draws several seeded random cotangents
(or tangents), so that a bug hiding in one direction shows in another, and compares every leaf
of every argument: rows are named by argument and pytree path (``arg0``, ``arg1['w']``), and a
row's ``worst_index`` starts with the number of the cotangent that showed the worst error.

The finite differences find kinks on their own (:func:`fnn.fd.kink_mask`: the left and right
slopes disagree), so relu, abs, max, clip, where and sort need no declaration: an estimate
whose steps straddle a kink is counted in the row's ``kinks`` and left out of the verdict.
To keep random primals away from declared kinks, draw them with
:func:`fnn.draws.draw_away_from_kinks` (or the hypothesis strategy ``away_from_kinks``).

The report also says which transformations work on the function (``grad``, ``vmap`` of its
gradient, ``jvp``): a ``jax.custom_vjp`` function has no forward mode, which is reported as a
fact, not a failure.

Options (keywords of every check):
    samples: random cotangents (tangents) to draw (default 3).
    key: PRNG key for them and for finite-difference directions (default key 0).
    rtol, atol: rule vs autodiff (default :data:`fnn.compare.TOLERANCES`).
    fd: take finite differences (float64; float32 primals are cast when x64 is on).
    fd_rtol, fd_atol: rule vs finite differences (default :data:`fnn.fd.FD_TOLERANCES`,
        ``atol`` scaled by the cotangent and ``|f|``).
    eps, max_coords, directions: as for :func:`fnn.jacobian.numerical_jacobian`.
    transforms: try ``grad``, ``vmap(grad)`` and ``jvp`` and say which work.
    name: the function's name in the report.

Example:
    >>> import jax.numpy as jnp
    >>> f = lambda x, w: jnp.tanh(x @ w)
    >>> def f_vjp(x, w, dy):  # y = tanh(x w): dz = dy (1 - y**2), dx = dz w^T, dw = x^T dz
    ...     dz = dy * (1 - f(x, w) ** 2)
    ...     return dz @ w.T, x.T @ dz
    >>> x, w = jnp.ones((2, 3)) / 3, jnp.eye(3)[:, :2]
    >>> check_vjp(f, f_vjp, x, w).ok
    True
    >>> bad = lambda x, w, dy: (f_vjp(x, w, dy)[0], -f_vjp(x, w, dy)[1])
    >>> check_vjp(f, bad, x, w).failed
    ['arg1']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from fnn.compare import ModelRow, default_tolerances
from fnn.draws import random_like
from fnn.fd import FD_TOLERANCES
from fnn.jacobian import Jacobian, numerical_jacobian, numerical_jvp
from fnn.rule_report import (
    RuleReport,
    bad_row,
    fd_tolerances,
    structure_problem,
    tol_row,
)

#: How many random cotangents (tangents) a check draws by default.
SAMPLES = 3


# ---------------------------------------------------------------------------------------------
# which transformations work


def first_line(err: Exception) -> str:
    """``"TypeError: the first line of the message"``."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:160]


def transform_support(
    f: Callable, primals: tuple, *, custom_vjp: bool = False
) -> tuple[tuple[str, str], ...]:
    """Whether ``jax.grad``, ``jax.vmap`` of the gradient and ``jax.jvp`` work on ``f``.

    Each is tried on ``sum(f(*primals))`` at the primals (``vmap`` over a batch of two
    copies); a failure is reported with its reason, never raised. ``custom_vjp`` says that
    ``f`` is (or wraps) a ``jax.custom_vjp`` function, whose ``jvp`` failure is then named.

    Returns:
        ``(("grad", verdict), ("vmap(grad)", verdict), ("jvp", verdict))``, each verdict
        ``"yes"`` or ``"no: <why>"``.
    """
    argnums = tuple(range(len(primals)))

    def total(*p):
        return sum(jnp.sum(jnp.real(v)) for v in jax.tree.leaves(f(*p)))

    def grad():
        return jax.grad(total, argnums)(*primals)

    def vmap_grad():
        two = jax.tree.map(lambda v: jnp.stack([v, v]), primals)
        return jax.vmap(jax.grad(total, argnums))(*two)

    def jvp():
        return jax.jvp(f, primals, jax.tree.map(jnp.zeros_like, primals))

    out = []
    for name, attempt in (("grad", grad), ("vmap(grad)", vmap_grad), ("jvp", jvp)):
        try:
            jax.block_until_ready(attempt())
            out.append((name, "yes"))
        except Exception as err:  # noqa: BLE001  (any failure is the answer we report)
            why = first_line(err)
            if name == "jvp" and (custom_vjp or isinstance(f, jax.custom_vjp)):
                why = "a jax.custom_vjp function has no forward mode (use grad/vjp)"
            out.append((name, f"no: {why}"))
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# the checks


OPTIONS = {
    "samples": SAMPLES,
    "key": None,
    "rtol": None,
    "atol": None,
    "fd": True,
    "fd_rtol": None,
    "fd_atol": None,
    "eps": None,
    "max_coords": 256,
    "directions": 8,
    "transforms": True,
    "name": None,
}


def resolve_options(who: str, options: dict) -> dict:
    """``options`` over :data:`OPTIONS`; unknown names raise ``TypeError``."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(
            f"{who}: unknown option(s) {unknown}; the options are {sorted(OPTIONS)} "
            "(pass primals positionally)"
        )
    opts = {**OPTIONS, **options}
    if int(opts["samples"]) < 1:
        raise ValueError(f"{who}: samples must be >= 1, got {opts['samples']}; use 3 or more")
    opts["key"] = jax.random.key(0) if opts["key"] is None else opts["key"]
    return opts


def to64(tree):
    """Float leaves cast to float64 (when x64 is on); the finite differences' copy."""

    def cast(v):
        v = jnp.asarray(v)
        return v.astype(jnp.float64) if jnp.issubdtype(v.dtype, jnp.floating) else v

    return jax.tree.map(cast, tree) if jax.config.jax_enable_x64 else tree


def float_dtype(tree) -> str:
    leaves = [v for v in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(v), jnp.inexact)]
    return str(jnp.result_type(*leaves)) if leaves else "float64"


def leaf_paths(primals: tuple, names: Sequence[str]) -> list[tuple[str, object]]:
    """``[(name, leaf)]`` over every leaf of every primal, named ``names[i]<path>``."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tuple(primals))[0]:
        out.append((f"{names[path[0].idx]}{jax.tree_util.keystr(tuple(path[1:]))}", leaf))
    return out


def finite_differences(f, primals, opts) -> tuple[Jacobian | None, str]:
    """The finite-difference Jacobian of ``f`` (in float64), or ``None`` and why not."""
    if not opts["fd"]:
        return None, ""
    p64 = to64(tuple(primals))
    if float_dtype(p64) != "float64":
        return None, "finite differences skipped: float64 is off (enable jax_enable_x64)"
    jac = numerical_jacobian(
        f,
        p64,
        eps=opts["eps"],
        max_coords=opts["max_coords"],
        directions=opts["directions"],
        key=opts["key"],
    )
    return jac, ""


def vjp_rows(primals, names, cts, manual, auto, jac: Jacobian | None, opts) -> list[ModelRow]:
    """One row per primal leaf from the rule's and autodiff's cotangents for each ``cts[k]``."""
    flat_cts = [np.asarray(ravel_pytree(ct)[0], np.float64) for ct in cts]
    rows = []
    for j, (path, want) in enumerate(leaf_paths(primals, names)):
        got = [dict(leaf_paths(m, names)).get(path) if m is not None else None for m in manual]
        problem = next((p for p in (structure_problem(g, want) for g in got) if p), "")
        if problem:
            rows.append(bad_row(path, want, problem))
            continue
        m = np.stack([np.asarray(g) for g in got])
        a = (
            None
            if auto is None
            else np.stack([np.asarray(dict(leaf_paths(x, names))[path]) for x in auto])
        )
        fd = tol = skip = None
        mode = "off"
        if jac is not None:
            leaf = jac.leaves[j]
            est = np.stack([leaf.pull(c) for c in flat_cts])
            pm = np.stack([leaf.project(g) for g in m])
            pa = None if a is None else np.stack([leaf.project(g) for g in a])
            _, frac = default_tolerances(m.dtype)
            at = max(max(jac.atol(c) for c in flat_cts), frac * float(np.abs(m).max(initial=0)))
            tol = fd_tolerances(m.dtype, opts["fd_rtol"], at, opts["fd_atol"])
            fd, skip, mode = (pm, pa, est), np.stack([leaf.skip] * len(cts)), leaf.mode
        ad_opts = (opts["rtol"], opts["atol"])
        rows.append(tol_row(path, m, a, fd, tol, skip, mode, ad_opts))
    return rows


def normalise_cotangents(out, n: int):
    """A VJP's result as a tuple of ``n`` cotangents (a lone cotangent when ``n == 1``)."""
    if isinstance(out, (tuple, list)) and len(out) == n:
        return tuple(out)
    if n == 1:
        return (out,)
    return None


def vjp_report(kind, f_rule, f_plain, primals, names, opts, probed) -> RuleReport:
    """Shared body of :func:`check_vjp` and :func:`check_custom_vjp`.

    ``f_rule(ct) -> cotangents`` applies the rule; ``f_plain`` is the function autodiff and the
    finite differences see; ``probed`` the one whose transformations are reported; ``names``
    name the primals in the rows (``arg0``, ``params``).
    """
    notes = []
    try:
        out, pullback = jax.vjp(f_plain, *primals)
    except Exception as err:  # noqa: BLE001  (reported: the rule is still checked by FD)
        out, pullback = f_plain(*primals), None
        notes.append(f"autodiff of the function failed ({first_line(err)}); checked by FD only")
    cts = random_like(opts["key"], out, opts["samples"])
    try:
        manual = [normalise_cotangents(f_rule(ct), len(primals)) for ct in cts]
    except Exception as err:  # noqa: BLE001  (a rule that raises is a failing rule)
        raised = f"the rule raised {first_line(err)}"
        rows = [bad_row(path, want, raised) for path, want in leaf_paths(primals, names)]
        return RuleReport(
            tuple(rows),
            kind,
            opts["name"] or getattr(probed, "__name__", kind),
            float_dtype(primals),
            None,
            opts["samples"],
            (),
            raised,
        )
    auto = None if pullback is None else [pullback(ct) for ct in cts]
    jac, why = finite_differences(f_plain, primals, opts)
    notes += [why] if why else []
    rows = vjp_rows(primals, names, cts, manual, auto, jac, opts)
    transforms = (
        transform_support(probed, primals, custom_vjp=kind == "custom_vjp")
        if opts["transforms"]
        else ()
    )
    return RuleReport(
        tuple(rows),
        kind,
        opts["name"] or getattr(probed, "__name__", kind),
        float_dtype(primals),
        None if jac is None else jac.dtype,
        opts["samples"],
        transforms,
        " ".join(notes),
    )


def check_vjp(f: Callable, vjp: Callable, *primals, **options) -> RuleReport:
    """Check a hand-written VJP of ``f`` against ``jax.vjp`` of ``f`` and finite differences.

    Args:
        f: ``f(*primals) -> pytree``.
        vjp: ``vjp(*primals, cotangent) -> (cotangent_0, ..., cotangent_{n-1})``, one per
            primal, each shaped like it and of its dtype (a lone cotangent when ``n == 1``).
        *primals: where to check: pytrees of float arrays.
        **options: see the module docstring (Options).

    Returns:
        A :class:`RuleReport`, one row per leaf of every primal (``arg0``, ``arg1['w']``).

    Raises:
        TypeError: an unknown option.
    """
    opts = resolve_options("check_vjp", options)
    primals = tuple(primals)

    def rule(ct):
        return vjp(*primals, ct)

    return vjp_report("vjp", rule, f, primals, [f"arg{i}" for i in range(len(primals))], opts, f)


def split_static(f, primals, nondiff: Sequence[int]):
    """``(g, diff_primals, argnums)``: ``f`` as a function of its differentiable arguments
    only, the others (``nondiff_argnums``) closed over."""
    argnums = [i for i in range(len(primals)) if i not in set(nondiff)]

    def g(*diff):
        args = list(primals)
        for i, v in zip(argnums, diff, strict=True):
            args[i] = v
        return f(*args)

    return g, tuple(primals[i] for i in argnums), argnums


def check_custom_vjp(f, *primals, **options) -> RuleReport:
    """Check a ``jax.custom_vjp`` function's rule against autodiff of its undecorated
    function (``f.fun``) and finite differences.

    Arguments in ``f.nondiff_argnums`` are held fixed and get no rows.

    Args:
        f: the decorated function.
        *primals: where to check.
        **options: see the module docstring (Options).

    Returns:
        A :class:`RuleReport`; ``transforms`` says ``jvp: no`` (custom_vjp has no forward mode).

    Raises:
        TypeError: ``f`` is not a ``jax.custom_vjp`` (use :func:`check_vjp` for a plain
            function and its VJP, :func:`check_custom_jvp` for a ``jax.custom_jvp``).
    """
    if not isinstance(f, jax.custom_vjp):
        raise TypeError(
            f"check_custom_vjp: f must be a jax.custom_vjp function, got {type(f).__name__}; "
            "for a plain function and a hand-written VJP use check_vjp(f, vjp, *primals), "
            "for a jax.custom_jvp use check_custom_jvp"
        )
    opts = resolve_options("check_custom_vjp", options)
    g_rule, diff, argnums = split_static(f, tuple(primals), f.nondiff_argnums)
    g_plain, _, _ = split_static(f.fun, tuple(primals), f.nondiff_argnums)

    def rule(ct):
        return jax.vjp(g_rule, *diff)[1](ct)

    opts["name"] = opts["name"] or getattr(f.fun, "__name__", "custom_vjp")
    names = [f"arg{i}" for i in argnums]
    return vjp_report("custom_vjp", rule, g_plain, diff, names, opts, g_rule)


def check_custom_jvp(f, *primals, **options) -> RuleReport:
    """Check a ``jax.custom_jvp`` function's rule against autodiff of its undecorated
    function (``f.fun``) and finite differences, along random tangent directions.

    Rows are the output's leaves (``out``, ``out[1]``, ``out['y']``); a row's worst index
    starts with the tangent's number.

    Args:
        f: the decorated function.
        *primals: where to check.
        **options: see the module docstring (Options).

    Returns:
        A :class:`RuleReport`.

    Raises:
        TypeError: ``f`` is not a ``jax.custom_jvp``.
    """
    if not isinstance(f, jax.custom_jvp):
        raise TypeError(
            f"check_custom_jvp: f must be a jax.custom_jvp function, got {type(f).__name__}; "
            "use check_custom_vjp for a jax.custom_vjp, check_vjp for a plain function"
        )
    opts = resolve_options("check_custom_jvp", options)
    g_rule, diff, _ = split_static(f, tuple(primals), f.nondiff_argnums)
    g_plain, _, _ = split_static(f.fun, tuple(primals), f.nondiff_argnums)
    tangents = random_like(opts["key"], diff, opts["samples"])
    manual = [jax.jvp(g_rule, diff, t)[1] for t in tangents]
    notes = []
    try:
        auto = [jax.jvp(g_plain, diff, t)[1] for t in tangents]
    except Exception as err:  # noqa: BLE001  (reported: the rule is still checked by FD)
        auto = None
        notes.append(f"autodiff of f.fun failed ({first_line(err)}); checked by FD only")
    out = g_plain(*diff)
    fd = None
    if opts["fd"]:
        p64, t64 = to64(diff), [to64(t) for t in tangents]
        if float_dtype(p64) == "float64":
            fd = numerical_jvp(g_plain, p64, t64, eps=opts["eps"])
        else:
            notes.append("finite differences skipped: float64 is off (enable jax_enable_x64)")
    rows = jvp_rows(out, manual, auto, fd, tangents, opts)
    return RuleReport(
        tuple(rows),
        "custom_jvp",
        opts["name"] or getattr(f.fun, "__name__", "custom_jvp"),
        float_dtype(diff),
        None if fd is None else "float64",
        opts["samples"],
        transform_support(g_rule, diff) if opts["transforms"] else (),
        " ".join(notes),
    )


def jvp_rows(out, manual, auto, fd, tangents, opts) -> list[ModelRow]:
    """One row per output leaf: the rule's tangents against autodiff's and the differences'."""
    unravel = ravel_pytree(out)[1]
    k = len(tangents)
    est = None
    if fd is not None:
        f0, slopes, kinks = fd
        est = [dict(out_paths(unravel_64(unravel, s, out))) for s in slopes]
        norms = [float(np.linalg.norm(ravel_pytree(t)[0])) for t in tangents]
        fd_atol = FD_TOLERANCES[1] * max(1.0, float(np.abs(f0).max(initial=0))) * max(norms)
    rows = []
    for path, want in out_paths(out):
        got = [dict(out_paths(m)).get(path) for m in manual]
        problem = next((p for p in (structure_problem(g, want) for g in got) if p), "")
        if problem:
            rows.append(bad_row(path, want, problem))
            continue
        m = np.stack([np.asarray(g) for g in got])
        a = None if auto is None else np.stack([np.asarray(dict(out_paths(x))[path]) for x in auto])
        fdt = tol = skip = None
        if est is not None:
            e = np.stack([d[path] for d in est])
            _, frac = default_tolerances(m.dtype)
            at = max(fd_atol, frac * float(np.abs(m).max(initial=0)))
            tol = fd_tolerances(m.dtype, opts["fd_rtol"], at, opts["fd_atol"])
            skip = np.broadcast_to(kinks.reshape((k,) + (1,) * (m.ndim - 1)), m.shape)
            fdt = (m, a, e)
        rows.append(tol_row(path, m, a, fdt, tol, skip, "directions", (opts["rtol"], opts["atol"])))
    return rows


def out_paths(tree) -> list[tuple[str, object]]:
    """``[(name, leaf)]`` over an output pytree, named ``out<path>``."""
    return [
        (f"out{jax.tree_util.keystr(p)}", v)
        for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]


def unravel_64(unravel, flat, like):
    """``unravel`` of a float64 vector, keeping float64 (``unravel`` casts to ``like``'s dtypes)."""
    leaves, treedef = jax.tree.flatten(like)
    sizes = np.cumsum([0] + [int(np.size(v)) for v in leaves])
    parts = [
        np.asarray(flat[a:b]).reshape(np.shape(v))
        for a, b, v in zip(sizes[:-1], sizes[1:], leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, parts)


# ---------------------------------------------------------------------------------------------
# assert forms for tests


def assert_report_ok(report) -> None:
    """Raise ``AssertionError`` carrying the report's table unless it passed."""
    if not report.ok:
        raise AssertionError(f"{report.kind} rule is wrong\n{report}")


def assert_vjp_ok(f: Callable, vjp: Callable, *primals, **options) -> RuleReport:
    """:func:`check_vjp`, raising ``AssertionError`` with the table on failure."""
    report = check_vjp(f, vjp, *primals, **options)
    assert_report_ok(report)
    return report


def assert_custom_vjp_ok(f, *primals, **options) -> RuleReport:
    """:func:`check_custom_vjp`, raising ``AssertionError`` with the table on failure."""
    report = check_custom_vjp(f, *primals, **options)
    assert_report_ok(report)
    return report


def assert_custom_jvp_ok(f, *primals, **options) -> RuleReport:
    """:func:`check_custom_jvp`, raising ``AssertionError`` with the table on failure."""
    report = check_custom_jvp(f, *primals, **options)
    assert_report_ok(report)
    return report
