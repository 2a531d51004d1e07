"""Manual backprop vs autodiff: the hand-written backward pass gives the same gradient as
``jax.grad`` and as finite differences, and trains at about the same speed.

Part 1, correctness: :func:`fnn.check.check_model` asks three witnesses for the gradient of
an MLP's loss, leaf by leaf: fnn's hand-written reverse sweep
(:func:`fnn.backprop.value_and_grad`), ``jax.grad`` of the forward, and central finite
differences, all in float64 (the script switches x64 on at start-up; finite differences in
float32 keep only ~1e-5 relative accuracy, too coarse to tell a small bug from noise).

Part 2, speed: one compiled training step (:func:`fnn.train.make_step`, Adam, float32) with
``grad="manual"`` and with ``grad="autodiff"`` on the same MLP and batch. Both are timed in
this process after a warm-up, with ``block_until_ready``, in interleaved rounds (the order
alternates, so drift from other processes hits both alike); the ratio reported is the median
over rounds of manual time / autodiff time. XLA compiles both to much the same program, so
expect a ratio near 1; it is printed, not promised.

Usage::

    python examples/manual_vs_autodiff.py [--quick] [--out DIR] [--seed N]

Prints the three-way table and the step-time ratio; writes ``manual_vs_autodiff.png``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import fnn
from fnn import check, plots, train

FIGURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures")
LOSS = "softmax_cross_entropy"
FLOOR = 1e-18  # exact agreement (error 0) is drawn at this height on the log axis


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer timing rounds (for the tests)")
    p.add_argument("--out", default=FIGURES, help="folder for the figure")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def gradient_check(sizes, seed: int) -> check.ModelReport:
    """The three-way check of a tanh MLP on a batch of 16, in float64 if x64 is on."""
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    model = fnn.mlp(sizes, activation="tanh", dtype=dtype)
    kp, kx, ky = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (16, sizes[0]), dtype)
    y = jax.random.randint(ky, (16,), 0, sizes[-1])
    return check.check_model(model, LOSS, model.init(kp), x, y)


def time_steps(sizes, batch: int, rounds: int, steps: int, seed: int) -> dict:
    """Median over interleaved rounds of the manual and autodiff step times (float32)."""
    model = fnn.mlp(sizes, activation="relu", dtype=jnp.float32)
    kp, kx, ky = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (batch, sizes[0]), jnp.float32)
    y = jax.random.randint(ky, (batch,), 0, sizes[-1])
    opt = optax.adam(1e-3)
    params = model.init(kp)
    kinds = ("autodiff", "manual")
    step = {k: train.make_step(model, LOSS, opt, grad=k) for k in kinds}
    # Each step donates its state: every variant carries its own copy.
    state = {
        k: train.init_state(jax.tree.map(jnp.copy, params), opt, jax.random.key(i))
        for i, k in enumerate(kinds)
    }
    for k in kinds:  # warm-up: compile and settle
        for _ in range(3):
            state[k], _ = step[k](state[k], x, y)
        jax.block_until_ready(state[k])

    times = {k: [] for k in kinds}
    for r in range(rounds):
        for k in kinds if r % 2 == 0 else kinds[::-1]:
            t0 = time.perf_counter()
            for _ in range(steps):
                state[k], metrics = step[k](state[k], x, y)
            jax.block_until_ready((state[k], metrics))
            times[k].append((time.perf_counter() - t0) / steps)
    ratios = [m / a for m, a in zip(times["manual"], times["autodiff"], strict=True)]
    return {
        "ms": {k: 1e3 * statistics.median(v) for k, v in times.items()},
        "ratio": statistics.median(ratios),
        "rounds": rounds,
        "steps": steps,
        "sizes": list(sizes),
        "batch": batch,
    }


def main(argv=None) -> dict:
    args = parse(argv)
    # --quick: smaller models and fewer rounds, the same kind of evidence
    report = gradient_check([4, 8, 8, 3] if args.quick else [8, 16, 16, 4], args.seed)
    print(report)
    if args.quick:
        timing = time_steps([64, 64, 10], 64, 3, 5, args.seed)
    else:
        timing = time_steps([64, 256, 128, 10], 128, 30, 50, args.seed)
    mlp = "-".join(map(str, timing["sizes"]))
    print(
        f"training step, MLP {mlp} relu, batch {timing['batch']}, Adam, float32: autodiff "
        f"{timing['ms']['autodiff']:.3f} ms, manual {timing['ms']['manual']:.3f} ms; "
        f"manual/autodiff = {timing['ratio']:.3f} (median of {timing['rounds']} rounds of "
        f"{timing['steps']} steps, {jax.devices()[0].platform})"
    )

    leaves = [r.path for r in report.rows]
    errors = {"manual vs jax.grad": [max(r.autodiff.max_rel_err, FLOOR) for r in report.rows]}
    if report.fd_dtype is not None:
        errors["manual vs finite diff."] = [max(r.fd.max_rel_err, FLOOR) for r in report.rows]
    fig, axes = plots.panels(2, width=4.8, height=3.8)
    plots.bars(
        errors,
        None,
        xlabels=leaves,
        ylabel="max relative error",
        ax=axes[0],
        title=f"gradient check ({report.dtype}): {'PASS' if report.ok else 'FAIL'}",
    )
    axes[0].tick_params(axis="x", labelsize=7, rotation=30)
    rtol = check.TOLERANCES[report.dtype][0]  # above it, manual vs jax.grad would fail
    axes[0].axhline(rtol, color="k", linestyle="--", linewidth=0.8)
    axes[0].text(-0.4, rtol * 2, f"tolerance vs jax.grad ({rtol:.0e})", fontsize=7)
    axes[0].set_ylim(top=1e-3)
    axes[0].legend(loc="upper right", fontsize=8, ncol=2)
    names, ms = list(timing["ms"]), list(timing["ms"].values())
    bars = axes[1].bar(names, ms, width=0.5, color=["C0", "C1"])
    axes[1].bar_label(bars, labels=[f"{v:.3f} ms" for v in ms], fontsize=8)
    axes[1].set_ylabel("milliseconds per step (median)")
    axes[1].set_title(f"training step: manual/autodiff = {timing['ratio']:.2f}")
    figure = plots.save(fig, os.path.join(args.out, "manual_vs_autodiff.png"))
    print(
        f"claim: {report.verdict}; the manual step takes {timing['ratio']:.2f}x the "
        f"autodiff step's time"
    )
    print(f"figure: {figure}")
    return {
        "ok": report.ok,
        "verdict": report.verdict,
        "dtype": report.dtype,
        "fd_dtype": report.fd_dtype,
        "max_rel_err": report.max_rel_err,
        "fd_max_rel_err": report.fd_max_rel_err,
        "leaves": len(report.rows),
        "timing": timing,
        "figure": figure,
    }


if __name__ == "__main__":
    jax.config.update("jax_enable_x64", True)  # at start-up, before any array: float64 check
    main()
