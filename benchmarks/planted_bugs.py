"""Planted bugs: how often fnn.check.check_vjp and jax.test_util.check_grads catch a wrong rule.

Each case is a function ``f`` with a hand-written VJP. The *bugs* are the mistakes people make
deriving backward rules by hand (sign flips, missing factors, transposed matrices, sums over
the wrong axis, one element off by 1e-4, a forgotten term of the product rule, the wrong
branch at a kink, broadcasting slips, cotangents of the wrong dtype or shape, rules right
only for batch 1, ...); the *correct* rules include kinked functions (abs, relu, max, clip,
where, sort, max-pooling, a relu network). For every case and seed both checkers see the same
random primals (seeded normal draws, no kink avoidance):

- fnn: ``check_vjp(f, vjp, *primals, key=seed)``: the rule against ``jax.vjp`` and float64
  finite differences over 3 random cotangents, every coordinate, kinks found by left/right
  slopes;
- jax: ``check_grads(custom_vjp(f, vjp), primals, order=1, modes=["rev"])``, the rule wrapped
  as a ``jax.custom_vjp`` (how JAX users test such a rule); an exception counts as a catch.
- torch: ``torch.autograd.gradcheck`` when torch is importable (it is not part of this
  comparison otherwise; the column is left out).

A checker *catches* a bug when it reports a failure; a *false failure* is a failure reported
on a correct rule. Run: ``python benchmarks/planted_bugs.py [--seeds 100] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

jax.config.update("jax_enable_x64", True)

from fnn.check import check_vjp  # noqa: E402  (x64 first)

F64 = jnp.float64


class Case(NamedTuple):
    """One rule: ``f(*primals)``, ``vjp(*primals, g) -> tuple``, ``shapes`` of the primals."""

    name: str
    kind: str  # "bug" or "correct"
    what: str
    f: Callable
    vjp: Callable
    shapes: tuple
    positive: tuple = ()  # indices of primals drawn positive (log, division)


def primals(case: Case, seed: int) -> tuple:
    keys = jax.random.split(jax.random.key(seed), len(case.shapes))
    out = []
    for i, (k, s) in enumerate(zip(keys, case.shapes, strict=True)):
        x = jax.random.normal(k, s, F64)
        out.append(jnp.abs(x) + 0.5 if i in case.positive else x)
    return tuple(out)


sig = jax.nn.sigmoid
X, W, B, V, SQ = (3, 4), (4, 2), (2,), (5,), (3, 3)


def softmax(x):
    return jax.nn.softmax(x, axis=-1)


def sort_vjp(x, g):
    return (jnp.zeros_like(x).at[jnp.argsort(x)].set(g),)


def max_vjp(x, g):  # max over axis 1: the cotangent goes to each row's arg-max
    return (jax.nn.one_hot(jnp.argmax(x, axis=1), x.shape[1], dtype=x.dtype) * g[:, None],)


def pool(x):  # max over pairs of columns: [3, 4] -> [3, 2]
    return jnp.max(x.reshape(3, 2, 2), axis=2)


def pool_vjp(x, g):
    win = x.reshape(3, 2, 2)
    hot = jax.nn.one_hot(jnp.argmax(win, axis=2), 2, dtype=x.dtype)
    return ((hot * g[..., None]).reshape(3, 4),)


def mlp(x, w1, w2):  # a relu network: relu(x w1) w2
    return jax.nn.relu(x @ w1) @ w2


def mlp_vjp(x, w1, w2, g, mask=True):
    z = x @ w1
    dh = g @ w2.T
    dz = dh * (z > 0) if mask else dh
    return dz @ w1.T, x.T @ dz, jax.nn.relu(z).T @ g


WIDE = ((16, 8), (8, 32), (32, 4))  # 512 relu pre-activations


def mlp_off(cts):
    dx, dw1, dw2 = cts
    return dx, off(dw1), dw2


def dense(x, w, b):
    return x @ w + b[None, :]


def dense_vjp(x, w, b, g):
    return g @ w.T, x.T @ g, g.sum(0)


def lse(x):
    return jax.scipy.special.logsumexp(x, axis=1)


def where_f(x):
    return jnp.where(x > 0, x**2, jnp.sin(x))


def hinge(x, y):
    return jnp.maximum(0.0, 1.0 - x * y)


def hinge_vjp(x, y, g):
    act = (1.0 - x * y > 0).astype(x.dtype)
    return -g * y * act, -g * x * act


def off(a, rel=1e-4):
    """``a`` with its first element off by ``rel`` relative."""
    return a.at[(0,) * a.ndim].multiply(1 + rel)


def t(*a):
    return tuple(a)


CORRECT = [
    Case("sin", "correct", "", jnp.sin, lambda x, g: t(g * jnp.cos(x)), (X,)),
    Case("tanh", "correct", "", jnp.tanh, lambda x, g: t(g * (1 - jnp.tanh(x) ** 2)), (X,)),
    Case("sigmoid", "correct", "", sig, lambda x, g: t(g * sig(x) * (1 - sig(x))), (X,)),
    Case("exp", "correct", "", jnp.exp, lambda x, g: t(g * jnp.exp(x)), (X,)),
    Case("log", "correct", "", jnp.log, lambda x, g: t(g / x), (X,), (0,)),
    Case("square", "correct", "", jnp.square, lambda x, g: t(2 * x * g), (X,)),
    Case(
        "x*sin(x)",
        "correct",
        "",
        lambda x: x * jnp.sin(x),
        lambda x, g: t(g * (jnp.sin(x) + x * jnp.cos(x))),
        (X,),
    ),
    Case("product", "correct", "", jnp.multiply, lambda x, y, g: (g * y, g * x), (X, X)),
    Case("divide", "correct", "", jnp.divide, lambda x, y, g: (g / y, -g * x / y**2), (X, X), (1,)),
    Case("matmul", "correct", "", jnp.matmul, lambda x, w, g: (g @ w.T, x.T @ g), (X, W)),
    Case("dense", "correct", "", dense, dense_vjp, (X, W, B)),
    Case(
        "sum axis 1",
        "correct",
        "",
        lambda x: x.sum(1),
        lambda x, g: t(jnp.broadcast_to(g[:, None], x.shape)),
        (SQ,),
    ),
    Case(
        "mean axis 0",
        "correct",
        "",
        lambda x: x.mean(0),
        lambda x, g: t(jnp.broadcast_to(g[None, :] / x.shape[0], x.shape)),
        (X,),
    ),
    Case(
        "softmax",
        "correct",
        "",
        softmax,
        lambda x, g: t(softmax(x) * (g - jnp.sum(g * softmax(x), -1, keepdims=True))),
        (X,),
    ),
    Case("logsumexp", "correct", "", lse, lambda x, g: t(g[:, None] * softmax(x)), (X,)),
    Case(
        "l2 norm", "correct", "", jnp.linalg.norm, lambda x, g: t(g * x / jnp.linalg.norm(x)), (V,)
    ),
    Case("outer", "correct", "", jnp.outer, lambda u, v, g: (g @ v, g.T @ u), (V, (4,))),
    Case("transpose", "correct", "", jnp.transpose, lambda x, g: t(g.T), (SQ,)),
    Case(
        "reshape", "correct", "", lambda x: x.reshape(2, 6), lambda x, g: t(g.reshape(3, 4)), (X,)
    ),
    Case("cumsum", "correct", "", jnp.cumsum, lambda x, g: t(jnp.cumsum(g[::-1])[::-1]), (V,)),
    Case("softplus", "correct", "", jax.nn.softplus, lambda x, g: t(g * sig(x)), (X,)),
    Case("dot", "correct", "", jnp.dot, lambda x, y, g: (g * y, g * x), (V, V)),
    Case("abs", "correct", "kink", jnp.abs, lambda x, g: t(g * jnp.sign(x)), (X,)),
    Case("relu", "correct", "kink", jax.nn.relu, lambda x, g: t(g * (x > 0)), (X,)),
    Case(
        "leaky relu",
        "correct",
        "kink",
        lambda x: jax.nn.leaky_relu(x, 0.01),
        lambda x, g: t(jnp.where(x > 0, g, 0.01 * g)),
        (X,),
    ),
    Case(
        "maximum",
        "correct",
        "kink",
        jnp.maximum,
        lambda x, y, g: (g * (x > y), g * (x < y)),
        (X, X),
    ),
    Case("max axis 1", "correct", "kink", lambda x: jnp.max(x, axis=1), max_vjp, (X,)),
    Case(
        "clip",
        "correct",
        "kink",
        lambda x: jnp.clip(x, -0.5, 0.5),
        lambda x, g: t(g * (jnp.abs(x) < 0.5)),
        (X,),
    ),
    Case(
        "where",
        "correct",
        "kink",
        where_f,
        lambda x, g: t(jnp.where(x > 0, 2 * x * g, jnp.cos(x) * g)),
        (X,),
    ),
    Case("sort", "correct", "kink", jnp.sort, sort_vjp, (V,)),
    Case("max pool", "correct", "kink", pool, pool_vjp, (X,)),
    Case("hinge", "correct", "kink", hinge, hinge_vjp, (X, X)),
    Case("relu mlp", "correct", "kink", mlp, mlp_vjp, (X, (4, 6), (6, 2))),
    Case("wide relu mlp", "correct", "kink", mlp, mlp_vjp, WIDE),
]

BUGS = [
    Case("sin", "bug", "sign flip", jnp.sin, lambda x, g: t(-g * jnp.cos(x)), (X,)),
    Case(
        "tanh",
        "bug",
        "1 - y instead of 1 - y**2",
        jnp.tanh,
        lambda x, g: t(g * (1 - jnp.tanh(x))),
        (X,),
    ),
    Case("sigmoid", "bug", "missing factor (1 - s)", sig, lambda x, g: t(g * sig(x)), (X,)),
    Case(
        "exp", "bug", "one element off by 1e-4", jnp.exp, lambda x, g: t(off(g * jnp.exp(x))), (X,)
    ),
    Case("log", "bug", "g * x instead of g / x", jnp.log, lambda x, g: t(g * x), (X,), (0,)),
    Case("square", "bug", "missing factor 2", jnp.square, lambda x, g: t(x * g), (X,)),
    Case(
        "x*sin(x)",
        "bug",
        "forgotten product-rule term",
        lambda x: x * jnp.sin(x),
        lambda x, g: t(g * x * jnp.cos(x)),
        (X,),
    ),
    Case(
        "product", "bug", "cotangents swapped", jnp.multiply, lambda x, y, g: (g * x, g * y), (X, X)
    ),
    Case(
        "divide",
        "bug",
        "sign of d/dy",
        jnp.divide,
        lambda x, y, g: (g / y, g * x / y**2),
        (X, X),
        (1,),
    ),
    Case(
        "matmul",
        "bug",
        "transposed dW (square)",
        jnp.matmul,
        lambda x, w, g: (g @ w.T, (x.T @ g).T),
        (X, (4, 4)),
    ),
    Case(
        "matmul",
        "bug",
        "one element of dW off by 1e-4",
        jnp.matmul,
        lambda x, w, g: (g @ w.T, off(x.T @ g)),
        (X, W),
    ),
    Case(
        "matmul",
        "bug",
        "dx = g w (not w^T), square",
        jnp.matmul,
        lambda x, w, g: (g @ w, x.T @ g),
        (X, (4, 4)),
    ),
    Case(
        "dense",
        "bug",
        "db right only for batch 1",
        dense,
        lambda x, w, b, g: (g @ w.T, x.T @ g, g[0]),
        (X, W, B),
    ),
    Case(
        "dense",
        "bug",
        "db = mean over batch",
        dense,
        lambda x, w, b, g: (g @ w.T, x.T @ g, g.mean(0)),
        (X, W, B),
    ),
    Case(
        "dense",
        "bug",
        "db summed over the wrong axis",
        dense,
        lambda x, w, b, g: (g @ w.T, x.T @ g, g.sum(1)),
        ((2, 4), W, B),
    ),
    Case(
        "dense",
        "bug",
        "db of the wrong shape",
        dense,
        lambda x, w, b, g: (g @ w.T, x.T @ g, g),
        (X, W, B),
    ),
    Case(
        "sum axis 1",
        "bug",
        "broadcasting slip g[None, :]",
        lambda x: x.sum(1),
        lambda x, g: t(jnp.broadcast_to(g[None, :], x.shape)),
        (SQ,),
    ),
    Case(
        "mean axis 0",
        "bug",
        "missing 1/n",
        lambda x: x.mean(0),
        lambda x, g: t(jnp.broadcast_to(g[None, :], x.shape)),
        (X,),
    ),
    Case(
        "softmax",
        "bug",
        "Jacobian kept diagonal",
        softmax,
        lambda x, g: t(g * softmax(x) * (1 - softmax(x))),
        (X,),
    ),
    Case(
        "logsumexp",
        "bug",
        "exp without normalising",
        lse,
        lambda x, g: t(g[:, None] * jnp.exp(x)),
        (X,),
    ),
    Case("l2 norm", "bug", "missing / ||x||", jnp.linalg.norm, lambda x, g: t(g * x), (V,)),
    Case(
        "outer",
        "bug",
        "transposed matrix in dv",
        jnp.outer,
        lambda u, v, g: (g @ v, g @ u),
        ((4,), (4,)),
    ),
    Case("transpose", "bug", "cotangent not transposed", jnp.transpose, lambda x, g: t(g), (SQ,)),
    Case("cumsum", "bug", "forward cumsum of g", jnp.cumsum, lambda x, g: t(jnp.cumsum(g)), (V,)),
    Case("softplus", "bug", "sigmoid(-x)", jax.nn.softplus, lambda x, g: t(g * sig(-x)), (X,)),
    Case(
        "sin",
        "bug",
        "cotangent in float32",
        jnp.sin,
        lambda x, g: t((g * jnp.cos(x)).astype(jnp.float32)),
        (X,),
    ),
    Case("abs", "bug", "wrong branch for x < 0", jnp.abs, lambda x, g: t(g), (X,)),
    Case("relu", "bug", "branches swapped", jax.nn.relu, lambda x, g: t(g * (x < 0)), (X,)),
    Case(
        "leaky relu",
        "bug",
        "slope 0.1 for x < 0",
        lambda x: jax.nn.leaky_relu(x, 0.01),
        lambda x, g: t(jnp.where(x > 0, g, 0.1 * g)),
        (X,),
    ),
    Case("maximum", "bug", "both inputs get g", jnp.maximum, lambda x, y, g: (g, g), (X, X)),
    Case(
        "max axis 1",
        "bug",
        "g spread evenly",
        lambda x: jnp.max(x, axis=1),
        lambda x, g: t(jnp.broadcast_to(g[:, None] / 4, x.shape)),
        (X,),
    ),
    Case(
        "clip",
        "bug",
        "gradient passed outside the interval",
        lambda x: jnp.clip(x, -0.5, 0.5),
        lambda x, g: t(g * (jnp.abs(x) > 0.5)),
        (X,),
    ),
    Case(
        "where",
        "bug",
        "branches swapped",
        where_f,
        lambda x, g: t(jnp.where(x > 0, jnp.cos(x) * g, 2 * x * g)),
        (X,),
    ),
    Case("sort", "bug", "permutation forgotten", jnp.sort, lambda x, g: t(g), (V,)),
    Case(
        "max pool",
        "bug",
        "every window element gets g",
        pool,
        lambda x, g: t(jnp.repeat(g, 2, axis=1)),
        (X,),
    ),
    Case(
        "relu mlp",
        "bug",
        "relu mask forgotten in backward",
        mlp,
        lambda x, w1, w2, g: mlp_vjp(x, w1, w2, g, mask=False),
        (X, (4, 6), (6, 2)),
    ),
    Case(
        "wide relu mlp",
        "bug",
        "one element of dW1 off by 1e-4",
        mlp,
        lambda x, w1, w2, g: mlp_off(mlp_vjp(x, w1, w2, g)),
        WIDE,
    ),
    Case(
        "tanh",
        "bug",
        "all elements off by 1e-4",
        jnp.tanh,
        lambda x, g: t(g * (1 - jnp.tanh(x) ** 2) * (1 + 1e-4)),
        (X,),
    ),
]

CASES = CORRECT + BUGS


def as_custom_vjp(case: Case):
    """The rule wrapped as a ``jax.custom_vjp`` (what ``check_grads`` can test)."""
    g = jax.custom_vjp(lambda *p: case.f(*p))  # exactly the primals (no keyword defaults)
    g.defvjp(lambda *p: (case.f(*p), p), lambda p, ct: tuple(case.vjp(*p, ct)))
    return g


def fnn_flags(case: Case, args: tuple, seed: int) -> bool:
    """Whether ``check_vjp`` reports a failure (an exception counts as one)."""
    try:
        return not check_vjp(case.f, case.vjp, *args, key=jax.random.key(seed), transforms=False).ok
    except Exception:  # noqa: BLE001  (a crash flags the rule too)
        return True


def jax_flags(wrapped, args: tuple) -> bool:
    """Whether ``check_grads`` (reverse mode, order 1) raises."""
    try:
        check_grads(wrapped, args, order=1, modes=["rev"])
        return False
    except Exception:  # noqa: BLE001  (AssertionError, or a custom_vjp shape/dtype error)
        return True


def torch_gradcheck():
    """``flags(case, args)`` by ``torch.autograd.gradcheck`` of the rule, or ``None`` when
    torch is not importable (it is in the bench extra only)."""
    try:
        import torch
    except ImportError:
        return None

    def flags(case: Case, args: tuple) -> bool:
        class Rule(torch.autograd.Function):
            @staticmethod
            def forward(ctx, *xs):
                ctx.save_for_backward(*xs)
                out = case.f(*(jnp.asarray(x.detach().numpy()) for x in xs))
                return torch.from_numpy(np.array(out))

            @staticmethod
            def backward(ctx, g):
                xs = [jnp.asarray(x.detach().numpy()) for x in ctx.saved_tensors]
                cts = case.vjp(*xs, jnp.asarray(g.numpy()))
                return tuple(torch.from_numpy(np.array(c)) for c in cts)

        inputs = tuple(torch.tensor(np.asarray(a), requires_grad=True) for a in args)
        try:
            return not torch.autograd.gradcheck(Rule.apply, inputs, raise_exception=False)
        except Exception:  # noqa: BLE001  (a crash flags the rule too)
            return True

    return flags


def run(cases=CASES, seeds: int = 100, progress: bool = True, torch_flags=None) -> list[dict]:
    """Flag rates per case: ``{"name", "kind", "what", "seeds", "fnn", "jax"[, "torch"]}``."""
    rows = []
    for case in cases:
        wrapped = as_custom_vjp(case)
        hits = {"fnn": 0, "jax": 0} | ({} if torch_flags is None else {"torch": 0})
        start = time.perf_counter()
        for seed in range(seeds):
            args = primals(case, seed)
            hits["fnn"] += fnn_flags(case, args, seed)
            hits["jax"] += jax_flags(wrapped, args)
            if torch_flags is not None:
                hits["torch"] += torch_flags(case, args)
        row = {"name": case.name, "kind": case.kind, "what": case.what, "seeds": seeds}
        row.update({k: v / seeds for k, v in hits.items()})
        rows.append(row)
        if progress:
            print(
                f"{case.kind:7s} {case.name:12s} {case.what:38s} fnn {row['fnn']:.2f} "
                f"jax {row['jax']:.2f} ({time.perf_counter() - start:.1f} s)",
                file=sys.stderr,
            )
    return rows


def summary(rows: list[dict]) -> dict:
    """Catch rate over bugs and false-failure rate over correct rules, per checker."""
    out = {}
    for who in [k for k in ("fnn", "jax", "torch") if k in rows[0]]:
        bugs = [r[who] for r in rows if r["kind"] == "bug"]
        good = [r[who] for r in rows if r["kind"] == "correct"]
        out[who] = {
            "catch_rate": float(np.mean(bugs)) if bugs else None,
            "bugs_always_caught": sum(b == 1.0 for b in bugs),
            "bugs": len(bugs),
            "false_failure_rate": float(np.mean(good)) if good else None,
            "correct_ever_failed": sum(g > 0 for g in good),
            "correct": len(good),
        }
    return out


def markdown(rows: list[dict], totals: dict) -> str:
    lines = [
        "| rule | planted bug | fnn check_vjp | jax check_grads |",
        "|---|---|---|---|",
    ]
    for r in rows:
        what = r["what"] if r["kind"] == "bug" else f"correct{' (kinked)' if r['what'] else ''}"
        lines.append(f"| {r['name']} | {what} | {r['fnn']:.0%} | {r['jax']:.0%} |")
    f, j = totals["fnn"], totals["jax"]
    lines += [
        "",
        f"Bugs caught ({f['bugs']} bugs x {rows[0]['seeds']} seeds): fnn {f['catch_rate']:.1%} "
        f"(every seed for {f['bugs_always_caught']} of {f['bugs']}), check_grads "
        f"{j['catch_rate']:.1%} ({j['bugs_always_caught']} of {j['bugs']}).",
        f"False failures ({f['correct']} correct rules): fnn {f['false_failure_rate']:.1%} "
        f"({f['correct_ever_failed']} rules ever failed), check_grads "
        f"{j['false_failure_rate']:.1%} ({j['correct_ever_failed']} rules ever failed).",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100, help="seeds per case (default 100)")
    parser.add_argument("--json", help="write the rows and totals to this JSON file")
    parser.add_argument("--quiet", action="store_true", help="no per-case progress lines")
    args = parser.parse_args(argv)
    torch_flags = torch_gradcheck()
    if torch_flags is None:
        print("torch not importable: the gradcheck column is left out", file=sys.stderr)
    cpu = time.process_time()
    rows = run(seeds=args.seeds, progress=not args.quiet, torch_flags=torch_flags)
    totals = summary(rows)
    totals["cpu_seconds"] = time.process_time() - cpu
    print(f"CPU time: {totals['cpu_seconds']:.0f} s", file=sys.stderr)
    print(markdown(rows, totals))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "totals": totals}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
