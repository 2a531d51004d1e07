"""Softmax turns logits into probabilities, and softmax followed by cross-entropy has the
simplest gradient in deep learning: ``p - onehot``.

``softmax(z)_k = exp(z_k) / sum_j exp(z_j)`` is positive and sums to 1. Adding a constant to
every logit changes nothing (it cancels between numerator and denominator; fnn subtracts the
row maximum so that logits of 1000 do not overflow), while dividing by a temperature ``T``
sharpens (``T < 1``) or flattens (``T > 1``) the distribution.

For one example with label ``y`` the loss is ``L = -log p_y = -z_y + log sum_j exp(z_j)``,
so ``dL/dz_k = -[k == y] + exp(z_k) / sum_j exp(z_j) = p_k - onehot_k``; averaged over a
batch of ``B`` examples it is ``(p - onehot) / B``. The long way round gives the same: the
cross-entropy's gradient with respect to the probabilities, ``-onehot / p / B``, pulled back
through softmax's full Jacobian (``dz = p * (dp - sum(dp * p))``). The script checks four
witnesses with :func:`fnn.check.compare`: the formula, fnn's hand-written loss gradient, the
chain through softmax's VJP, and ``jax.grad``; and, in float64, central finite differences.

Usage::

    python examples/softmax.py [--quick] [--out DIR] [--seed N]

Prints the worked example and the comparison tables; writes ``softmax.png``.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from fnn import activations, check, losses, plots

FIGURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures")
LOGITS = (2.0, 1.0, 0.1)
TEMPERATURES = (0.5, 1.0, 2.0)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smaller batch (for the tests)")
    p.add_argument("--out", default=FIGURES, help="folder for the figure")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def worked_example() -> dict:
    """Softmax of :data:`LOGITS` (float32): probabilities, shift and temperature."""
    z = jnp.asarray(LOGITS, jnp.float32)
    p = activations.softmax(z)
    shifted = activations.softmax(z + 100.0)
    huge = activations.softmax(z + 1000.0)  # exp(1002) overflows float32 without the shift
    by_t = {f"T = {t:g}": np.asarray(activations.softmax(z / t)).tolist() for t in TEMPERATURES}
    entropy = {k: float(-np.sum(np.asarray(v) * np.log(v))) for k, v in by_t.items()}
    print(
        f"logits {list(LOGITS)} -> probabilities "
        f"{[round(float(v), 4) for v in p]} (sum {float(jnp.sum(p)):.6f})"
    )
    print(
        f"logits + 100 -> {[round(float(v), 4) for v in shifted]}; logits + 1000 -> "
        f"{[round(float(v), 4) for v in huge]} (finite: {bool(jnp.all(jnp.isfinite(huge)))})"
    )
    for k, v in by_t.items():
        print(f"temperature {k}: {[round(x, 4) for x in v]}  entropy {entropy[k]:.3f}")
    return {
        "probabilities": np.asarray(p).tolist(),
        "sum": float(jnp.sum(p)),
        "shift_max_diff": float(jnp.max(jnp.abs(shifted - p))),
        "huge_max_diff": float(jnp.max(jnp.abs(huge - p))),
        "by_temperature": by_t,
        "entropy": entropy,
    }


def gradient_check(batch: int, classes: int, seed: int) -> dict:
    """The fused softmax + cross-entropy gradient, four ways (float64 when x64 is on)."""
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    kz, ky = jax.random.split(jax.random.key(seed))
    z = 3.0 * jax.random.normal(kz, (batch, classes), dtype)
    y = jax.random.randint(ky, (batch,), 0, classes)
    ce = losses.get("softmax_cross_entropy")
    onehot = jax.nn.one_hot(y, classes, dtype=dtype)
    p = activations.softmax(z)
    formula = (p - onehot) / batch
    witnesses = {
        "hand-written loss.grad": ce.grad(z, y),
        "chain through softmax's VJP": activations.get("softmax").vjp(z, -onehot / p / batch),
        "jax.grad": jax.grad(ce.fn)(z, y),
    }
    # One table, one row per witness: the formula copied into each leaf against the witness.
    report = check.compare(
        {name: formula for name in witnesses},
        witnesses,
        labels=("(p - onehot) / B", "each witness"),
    )
    print(report)
    out = {
        r.path[2:-2]: {"ok": r.ok, "max_abs_err": r.max_abs_err, "max_rel_err": r.max_rel_err}
        for r in report.rows
    }
    if dtype == jnp.float64:  # finite differences are only trustworthy in float64
        fd = check.numerical_grad(lambda t: ce.fn(t["dz"], y), {"dz": z})
        fd_report = fd.compare({"dz": formula}, label="(p - onehot) / B")
        print(fd_report)
        out["finite differences"] = {
            "ok": fd_report.ok,
            "max_abs_err": fd_report.max_abs_err,
            "max_rel_err": fd_report.max_rel_err,
        }
    return {
        "dtype": jnp.dtype(dtype).name,
        "witnesses": out,
        "ok": all(v["ok"] for v in out.values()),
    }


def one_example(label: int = 0) -> dict:
    """The worked logits with a label: ``p``, ``onehot`` and ``jax.grad`` (a batch of one)."""
    z = jnp.asarray([LOGITS], jnp.float32)
    y = jnp.asarray([label], jnp.int32)
    g = jax.grad(losses.get("softmax_cross_entropy").fn)(z, y)[0]
    row = {
        "p": np.asarray(activations.softmax(z)[0]).tolist(),
        "onehot": np.eye(len(LOGITS))[label].tolist(),
        "jax.grad": np.asarray(g).tolist(),
    }
    diff = [round(a - b, 4) for a, b in zip(row["p"], row["onehot"], strict=True)]
    auto = [round(v, 4) for v in row["jax.grad"]]
    print(f"label {label}: p - onehot = {diff}, jax.grad = {auto}")
    return row


def main(argv=None) -> dict:
    args = parse(argv)
    worked = worked_example()
    grads = gradient_check(8 if args.quick else 32, 5, args.seed)
    row = one_example()

    fig, axes = plots.panels(2, width=4.6, height=3.6)
    classes = [f"z={v:g}" for v in LOGITS]
    plots.bars(
        worked["by_temperature"],
        None,
        xlabels=classes,
        ylabel="probability",
        logy=False,
        ax=axes[0],
        title="softmax(z / T): the same logits",
    )
    plots.bars(
        row,
        None,
        xlabels=classes,
        ylabel="value",
        logy=False,
        ax=axes[1],
        title="label 0: the gradient is p - onehot",
    )
    axes[1].axhline(0, color="k", linewidth=0.6)
    figure = plots.save(fig, os.path.join(args.out, "softmax.png"))
    print(
        f"claim: probabilities sum to {worked['sum']:.6f}, a shift changes them by at most "
        f"{worked['shift_max_diff']:.1e}; the fused gradient equals (p - onehot) / B for "
        f"every witness ({grads['dtype']}): {'ok' if grads['ok'] else 'FAILED'}"
    )
    print(f"figure: {figure}")
    return {"worked": worked, "gradients": grads, "one_example": row, "figure": figure}


if __name__ == "__main__":
    jax.config.update("jax_enable_x64", True)  # at start-up, before any array: float64 checks
    main()
