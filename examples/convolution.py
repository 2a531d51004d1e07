"""Convolution on the 8x8 digits: what the first layer's kernels learn, and what the weight
sharing buys against an MLP with the same number of parameters.

:func:`fnn.recipes.cnn` reshapes each flat 64-pixel row to an 8x8x1 image, applies 3x3
convolutions (the same few weights at every position), ReLU and 2x2 max pooling, then a dense
head. The MLP compared with it gets one hidden layer, as wide as it takes to have the same
number of parameters, so the two models differ in structure only. Both train with the
hand-written backward (``fit(grad="manual")``), Adam with a cosine decay, on the same split.

Usage::

    python examples/convolution.py [--quick] [--out DIR] [--seed N]

Measured (seed 0, 30 epochs, 2-core CPU): CNN 17,258 parameters, test accuracy 0.969; MLP
17,260 parameters, 0.978. At this size the MLP wins: most of the CNN's parameters sit in its
dense head (the convolution has 160), and an 8x8 image leaves little room for translation
invariance to pay. The default :func:`fnn.recipes.cnn` (134k parameters, dropout 0.5) reaches
0.991 on average over seeds 0-4, against 0.978-0.986 for the default 51k-parameter MLP.

Prints both models' parameter counts and test accuracies; writes ``convolution.png``: the
first layer's 3x3 kernels (red positive, blue negative) and the two test-accuracy curves.
"""

from __future__ import annotations

import argparse
import math
import os

import jax
import numpy as np

import fnn
from fnn import data, optim, recipes, train

FIGURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures")
LOSS = "softmax_cross_entropy"
CHANNELS, HIDDEN = (16,), 64


def count(params) -> int:
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))


def matched_mlp(n_params: int, n_in: int = 64, classes: int = 10):
    """A one-hidden-layer relu MLP with about ``n_params`` parameters."""
    width = max(1, round((n_params - classes) / (n_in + 1 + classes)))
    return fnn.mlp([n_in, width, classes], activation="relu")


def fit(model, ds, epochs: int, seed: int):
    steps = epochs * (len(ds.x_train) // 32)
    opt = optim.get("adam", 2e-3, schedule="cosine", steps=steps)
    state, hist = train.fit(
        model,
        LOSS,
        opt,
        (ds.x_train, ds.y_train),
        epochs=epochs,
        batch_size=32,
        key=jax.random.key(seed),
        eval_data=(ds.x_test, ds.y_test),
        grad="manual",
        progress=False,
    )
    return state.params, [float(a) for a in hist["eval_accuracy"]]


def figure(kernels, curves: dict, path: str) -> str:
    """First-layer kernels as a grid of small images, and the accuracy curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = kernels.shape[-1]
    cols = min(8, n)
    rows = math.ceil(n / cols)
    fig = plt.figure(figsize=(9.5, 3.8))
    grid = fig.add_gridspec(rows, cols + 6)
    scale = float(np.max(np.abs(kernels))) or 1.0
    for i in range(n):
        ax = fig.add_subplot(grid[i // cols, i % cols])
        ax.imshow(kernels[:, :, 0, i], cmap="RdBu_r", vmin=-scale, vmax=scale)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.text(0.02, 0.95, "first-layer 3x3 kernels", fontsize=9)
    ax = fig.add_subplot(grid[:, cols + 1 :])
    for name, acc in curves.items():
        ax.plot(np.arange(1, len(acc) + 1), acc, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0.85, 1.0)
    ax.legend(loc="lower right", fontsize=8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer epochs (for the tests)")
    p.add_argument("--out", default=FIGURES, help="folder for the figure")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    epochs = 4 if args.quick else 30
    ds = data.load("digits", seed=args.seed)

    # no dropout: the MLP has none, so the two differ in structure only
    cnn = recipes.cnn((8, 8, 1), ds.classes, channels=CHANNELS, hidden=HIDDEN, dropout=0.0)
    n_cnn = count(cnn.init(jax.random.key(0)))
    mlp = matched_mlp(n_cnn)
    n_mlp = count(mlp.init(jax.random.key(0)))
    cnn_params, cnn_acc = fit(cnn, ds, epochs, args.seed)
    _, mlp_acc = fit(mlp, ds, epochs, args.seed)
    kernels = np.asarray(cnn_params[1]["w"])  # [3, 3, 1, channels]: after reshape, layer 1
    print(f"CNN  {cnn.name}\n     {n_cnn} parameters, test accuracy {cnn_acc[-1]:.4f}")
    print(f"MLP  {mlp.name}\n     {n_mlp} parameters, test accuracy {mlp_acc[-1]:.4f}")
    path = figure(
        kernels,
        {f"CNN ({n_cnn} params)": cnn_acc, f"MLP ({n_mlp} params)": mlp_acc},
        os.path.join(args.out, "convolution.png"),
    )
    print(f"figure: {path}")
    return {
        "cnn_params": n_cnn,
        "mlp_params": n_mlp,
        "cnn_accuracy": cnn_acc,
        "mlp_accuracy": mlp_acc,
        "kernels": kernels,
        "epochs": epochs,
        "figure": path,
    }


if __name__ == "__main__":
    main()
