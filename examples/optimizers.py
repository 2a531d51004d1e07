"""Optimizers: GD, SGD, mini-batch SGD, momentum, RMSprop and Adam on the same problem, the
same learning rate and the same number of epochs reach very different losses.

The data are three interleaved spirals (480 training points), the model an MLP 2-32-32-3 with
tanh, the learning rate 0.01 for everyone, every run from the same initial parameters.

* GD takes one step per epoch on the exact gradient of the whole training set;
* SGD (batch 1) takes 480 noisy steps per epoch;
* mini-batch SGD (batch 32) takes 15 steps per epoch, less noisy;
* momentum, RMSprop and Adam take the same 15 mini-batch steps as mini-batch SGD, but
  momentum accumulates a velocity and RMSprop/Adam divide each coordinate's step by a
  running RMS of its gradient, so a small learning rate still makes progress where the
  gradient is small (Adam combines both).

At this small rate, plain GD and mini-batch SGD have hardly left the starting loss (ln 3 =
1.10) when momentum, RMSprop and Adam are far down. SGD with batch 1 also gets far, but
by taking 32 times more steps than the mini-batch methods. (optax does the arithmetic:
``fnn.optim.get`` only picks the optax factory by name.)

Usage::

    python examples/optimizers.py [--quick] [--out DIR] [--seed N]

Prints each run's final training loss and accuracy; writes ``optimizers.png``.
"""

from __future__ import annotations

import argparse
import os

import jax

import fnn
from fnn import data, optim, plots, train

FIGURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures")
LOSS = "softmax_cross_entropy"
LR = 0.01
#: label -> (fnn.optim name, batch size; None = the full training set)
RUNS = {
    "GD (full batch)": ("gd", None),
    "SGD (batch 1)": ("sgd", 1),
    "mini-batch SGD (32)": ("sgd", 32),
    "momentum 0.9 (32)": ("momentum", 32),
    "RMSprop (32)": ("rmsprop", 32),
    "Adam (32)": ("adam", 32),
}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer epochs (for the tests)")
    p.add_argument("--out", default=FIGURES, help="folder for the figure")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse(argv)
    epochs = 25 if args.quick else 100
    ds = data.spirals(seed=args.seed)
    x, y = ds.x_train, ds.y_train
    model = fnn.mlp([2, 32, 32, ds.classes], activation="tanh")
    params = model.init(jax.random.key(args.seed))

    curves, final = {}, {}
    for label, (name, batch) in RUNS.items():
        state, history = train.fit(
            model,
            LOSS,
            optim.get(name, LR),
            (x, y),
            epochs=epochs,
            batch_size=batch,
            key=jax.random.key(args.seed),
            init=params,
            progress=False,
        )
        curves[label] = history["train_loss"]
        final[label] = train.evaluate(model, LOSS, state.params, (x, y))
        steps = epochs * (len(x) // (batch or len(x)))
        print(
            f"{label:20s} final training loss {final[label]['loss']:.4f}  accuracy "
            f"{final[label]['accuracy']:.3f}  ({steps} steps)"
        )

    fig, (ax,) = plots.panels(1, width=7.2, height=3.8)
    plots.curves(
        curves,
        None,
        ax=ax,
        title=f"spirals, MLP 2-32-32-3 tanh, lr {LR} for all",
        ylabel="training loss (epoch mean)",
    )
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)  # off the curves
    figure = plots.save(fig, os.path.join(args.out, "optimizers.png"))
    loss = {k: v["loss"] for k, v in final.items()}
    gd = loss["GD (full batch)"]
    better = [k for k in ("momentum 0.9 (32)", "RMSprop (32)", "Adam (32)") if loss[k] < gd]
    print(
        f"claim: at lr {LR} for {epochs} epochs, full-batch GD ends at loss {gd:.3f} and "
        f"mini-batch SGD at {loss['mini-batch SGD (32)']:.3f}; "
        + ", ".join(f"{k} reaches {loss[k]:.3f}" for k in better)
    )
    print(f"figure: {figure}")
    return {
        "loss": loss,
        "accuracy": {k: v["accuracy"] for k, v in final.items()},
        "curves": curves,
        "epochs": epochs,
        "figure": figure,
    }


if __name__ == "__main__":
    main()
