"""Vanishing gradients: in a deep sigmoid network the first layers get almost no gradient;
ReLU keeps it alive.

The same MLP, 10 hidden layers of 32 units on the 8x8 digits, is built with sigmoid, tanh,
relu and leaky_relu (fnn's default initialisers: Glorot for sigmoid and tanh, He for the
ReLU family). At initialisation the weight-gradient norm of every dense layer is measured
(:func:`fnn.diagnostics.layer_grad_norms`, by the hand-written backward pass). The chain rule
multiplies one activation derivative per layer, and sigmoid's is at most 1/4, so its gradient
shrinks by orders of magnitude on the way back to the input; relu's derivative is 1 where the
unit is on, and He initialisation keeps the signal's scale. Then each network trains with
plain SGD for the same budget: the sigmoid network barely moves. (tanh, whose derivative
peaks at 1, with Glorot initialisation does not vanish at this depth.)

Usage::

    python examples/activations.py [--quick] [--out DIR] [--seed N]

Prints first- and last-layer gradient norms and the loss after training; writes
``activations.png`` (gradient norm per layer, and the training loss).
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import optax

import fnn
from fnn import data, diagnostics, plots, train

FIGURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures")
LOSS = "softmax_cross_entropy"
ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu")
DEPTH, WIDTH = 10, 32


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer epochs (for the tests)")
    p.add_argument("--out", default=FIGURES, help="folder for the figure")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _index(path: str) -> int:
    return int(path.strip("[]"))


def main(argv=None) -> dict:
    args = parse(argv)
    epochs = 4 if args.quick else 30
    lr = 0.05
    ds = data.digits()
    x, y = ds.x_train, ds.y_train
    probe = (jnp.asarray(x[:512]), jnp.asarray(y[:512]))  # the batch the norms are taken on

    norms, losses, curves = {}, {}, {}
    for act in ACTIVATIONS:
        model = fnn.mlp([64] + [WIDTH] * DEPTH + [10], activation=act)
        params = model.init(jax.random.key(args.seed))
        per_layer = diagnostics.layer_grad_norms(model, LOSS, params, *probe)
        # keyed "[0]", "[2]", ...: order by the layer index, input side first
        norms[act] = [float(per_layer[k]) for k in sorted(per_layer, key=_index)]
        _, history = train.fit(
            model,
            LOSS,
            optax.sgd(lr),
            (x, y),
            epochs=epochs,
            batch_size=32,
            key=jax.random.key(args.seed),
            init=params,
            progress=False,
        )
        curves[act] = history["train_loss"]
        losses[act] = history["train_loss"][-1]
        first, last = norms[act][0], norms[act][-1]
        print(
            f"{act:10s} grad norm: first layer {first:.2e}  last layer {last:.2e}  "
            f"first/last {first / last:.1e}   train loss after {epochs} epochs "
            f"{losses[act]:.3f} (start {history['train_loss'][0]:.3f})"
        )

    layers = len(norms["relu"])
    fig, axes = plots.panels(2, width=5.2, height=3.8)
    plots.bars(
        norms,
        None,
        xlabels=[str(i + 1) for i in range(layers)],
        ylabel="weight-gradient norm at init",
        ax=axes[0],
        title=f"{DEPTH} hidden layers: gradient per layer (1 = input side)",
    )
    axes[0].set_ylim(top=50)  # room for the legend above the bars
    axes[0].legend(ncol=4, loc="upper center", fontsize=8)
    plots.curves(curves, None, ax=axes[1], title=f"SGD, lr {lr}: training loss")
    figure = plots.save(fig, os.path.join(args.out, "activations.png"))
    ratio = norms["relu"][0] / norms["sigmoid"][0]
    print(
        f"claim: sigmoid's first-layer gradient is {ratio:.1e} times smaller than relu's "
        f"(first/last: sigmoid {norms['sigmoid'][0] / norms['sigmoid'][-1]:.1e}, relu "
        f"{norms['relu'][0] / norms['relu'][-1]:.1e}); after {epochs} epochs the loss is "
        f"sigmoid {losses['sigmoid']:.3f} vs relu {losses['relu']:.3f}"
    )
    print(f"figure: {figure}")
    return {
        "norms": norms,
        "first": {a: v[0] for a, v in norms.items()},
        "last": {a: v[-1] for a, v in norms.items()},
        "losses": losses,
        "curves": curves,
        "epochs": epochs,
        "relu_over_sigmoid_first": ratio,
        "figure": figure,
    }


if __name__ == "__main__":
    main()
