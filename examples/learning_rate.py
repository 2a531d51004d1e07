"""The learning rate: too high overshoots and diverges, too low crawls, and the range test
finds a good one in a few dozen steps.

Full-batch gradient descent (``optax.sgd``) trains an MLP 64-64-10 (relu) on the 8x8
digits, so every epoch is exactly one step on the exact gradient. First the range test
(:func:`fnn.diagnostics.lr_find`) raises the rate geometrically from 1e-4 to 100 over 100
steps and suggests a rate (a tenth of the rate at the smoothed loss's minimum). Then three
runs start from the same parameters for the same number of steps:

* **too high**, 30 times the suggestion (three times the rate at the range test's minimum):
  each step overshoots the valley further, the loss grows by orders of magnitude and becomes
  NaN (:class:`fnn.train.NonFiniteError` stops the run and keeps the last finite state);
* **too low**, a thousandth of the suggestion: the loss barely moves;
* **the range test's pick**: the lowest loss of the three.

Usage::

    python examples/learning_rate.py [--quick] [--out DIR] [--seed N]

Prints the suggested rate and each run's loss; writes ``learning_rate.png`` (the three loss
curves and the range test).
"""

from __future__ import annotations

import argparse
import math
import os

import jax
import optax

import fnn
from fnn import data, diagnostics, optim, plots, train

FIGURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures")
LOSS = "softmax_cross_entropy"


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer steps (for the tests)")
    p.add_argument("--out", default=FIGURES, help="folder for the figure")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def gd(model, params, x, y, lr: float, steps: int, seed: int) -> dict:
    """``steps`` full-batch GD steps at ``lr``; stops at the first non-finite loss."""
    try:
        _, history = train.fit(
            model,
            LOSS,
            optim.get("gd", lr),
            (x, y),
            epochs=steps,
            batch_size=None,
            key=jax.random.key(seed),
            init=params,
            progress=False,
        )
        return {"lr": lr, "losses": history["train_loss"], "nonfinite_at": None}
    except train.NonFiniteError as err:
        return {
            "lr": lr,
            "losses": err.history.get("train_loss", []),
            "nonfinite_at": err.global_step,
        }


def main(argv=None) -> dict:
    args = parse(argv)
    steps = 40 if args.quick else 150
    ds = data.digits()
    x, y = ds.x_train, ds.y_train
    model = fnn.mlp([64, 64, 10], activation="relu")
    params = model.init(jax.random.key(args.seed))

    sweep = diagnostics.lr_find(
        model,
        LOSS,
        (x, y),
        optimizer=optax.sgd,
        min_lr=1e-4,
        max_lr=100.0,
        steps=100,
        batch_size=len(x),
        params=params,
        key=jax.random.key(args.seed),
    )
    pick = sweep.suggested_lr
    print(
        f"range test: smoothed loss lowest at lr {sweep.min_loss_lr:.3g}; suggested lr "
        f"{pick:.3g} (a tenth of it); diverged at step {sweep.diverged_at}"
    )

    runs = {
        "too high": gd(model, params, x, y, 30 * pick, steps, args.seed),
        "too low": gd(model, params, x, y, pick / 1000, steps, args.seed),
        "range-test pick": gd(model, params, x, y, pick, steps, args.seed),
    }
    for name, r in runs.items():
        losses = r["losses"]
        end = (
            f"NaN at step {r['nonfinite_at']} (last finite loss {losses[-1]:.3g})"
            if r["nonfinite_at"] is not None
            else f"final loss {losses[-1]:.4g}"
        )
        print(
            f"{name:16s} lr {r['lr']:.3g}: first loss {losses[0]:.4g}, largest "
            f"{max(losses):.3g}, {end}"
        )

    fig, axes = plots.panels(2, width=4.8, height=3.8)
    plots.curves(
        {f"{k} (lr {r['lr']:.2g})": r["losses"] for k, r in runs.items()},
        None,
        ax=axes[0],
        xlabel="step (full batch)",
        ylabel="training loss",
        title=f"gradient descent, {steps} steps",
    )
    axes[0].legend(loc="lower left", fontsize=8)
    high = runs["too high"]
    # The diverging run leaves the chart within a few steps; keep the other two readable.
    shown = [v for k, r in runs.items() if k != "too high" for v in r["losses"]]
    axes[0].set_ylim(min(shown) / 2, 1e3)
    fate = (
        "then NaN at step " + str(high["nonfinite_at"])
        if high["nonfinite_at"] is not None
        else "still finite"
    )
    axes[0].text(
        0.5,
        0.93,
        f"too high: loss up to {max(high['losses']):.1e}, {fate}",
        transform=axes[0].transAxes,
        ha="center",
        fontsize=8,
        color="C0",
    )
    plots.lr_sweep(sweep, None, ax=axes[1], title="range test (100 steps)")
    for color, name in (("C0", "too high"), ("C1", "too low")):
        axes[1].axvline(runs[name]["lr"], color=color, linestyle=":", linewidth=1.2)
    figure = plots.save(fig, os.path.join(args.out, "learning_rate.png"))

    final = {
        k: (math.nan if r["nonfinite_at"] is not None else r["losses"][-1]) for k, r in runs.items()
    }
    low = runs["too low"]["losses"]
    print(
        f"claim: lr {high['lr']:.3g} diverges (loss up to {max(high['losses']):.3g}"
        f"{', then NaN' if high['nonfinite_at'] is not None else ''}); lr "
        f"{runs['too low']['lr']:.3g} crawls ({low[0]:.3f} -> {low[-1]:.3f} in {steps} "
        f"steps); the range test's {pick:.3g} reaches {final['range-test pick']:.3f}"
    )
    print(f"figure: {figure}")
    return {
        "suggested_lr": pick,
        "min_loss_lr": sweep.min_loss_lr,
        "runs": runs,
        "final": final,
        "steps": steps,
        "figure": figure,
    }


if __name__ == "__main__":
    main()
