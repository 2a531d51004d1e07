"""Dying ReLU: too large a learning rate knocks ReLU units into the region where they never
fire, and there they get no gradient to come back; leaky ReLU units keep a small gradient,
so the network keeps learning.

The same MLP (64-128-128-10, He initialisation) trains on the 8x8 digits with Adam at a too
large learning rate, 0.1, cosine-decayed to 0 over the run, once with relu and once with
leaky_relu (slope 0.01). After every epoch :func:`fnn.diagnostics.unit_stats` counts the
hidden units whose pre-activation is <= 0 on *every* training example. For relu such a unit
is dead: it outputs 0 and passes back exactly zero gradient, so its weights freeze. For
leaky_relu the same units still pass 1% of the gradient: they are inactive but alive, they
can move back, and the network still fits the data. At the end the script also counts, from
the full-batch gradient (by the hand-written backward pass), the hidden units whose incoming
weights get exactly zero gradient.

Usage::

    python examples/dead_relu.py [--quick] [--out DIR] [--seed N]

Prints the inactive fraction per epoch, the frozen and recovered units and the test accuracy;
writes ``dead_relu.png`` (inactive fraction and test accuracy per epoch).
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

import fnn
from fnn import backprop, data, diagnostics, optim, plots, train
from fnn.models import taps

FIGURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures")
LOSS = "softmax_cross_entropy"
HIDDEN = (128, 128)
LR = 0.1


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer epochs (for the tests)")
    p.add_argument("--out", default=FIGURES, help="folder for the figure")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def ever_on(model, params, x) -> np.ndarray:
    """bool ``[hidden units]``: the unit's pre-activation is > 0 on at least one example."""
    t = taps(model, params, x)
    # serial(dense, act, dense, act, dense): the activation layers are [1] and [3]; their
    # input is the pre-activation.
    return np.concatenate([np.asarray(jnp.any(t[p]["in"] > 0, axis=0)) for p in ("[1]", "[3]")])


def frozen(model, params, x, y) -> float:
    """Fraction of hidden units whose incoming weights and bias get exactly zero gradient."""
    _, grads = backprop.value_and_grad(model, LOSS)(params, x, y)
    zero = [
        np.all(np.asarray(grads[i]["w"]) == 0, axis=0) & (np.asarray(grads[i]["b"]) == 0)
        for i in (0, 2)
    ]
    return float(np.mean(np.concatenate(zero)))


def run(act: str, ds, *, epochs: int, seed: int) -> dict:
    model = fnn.mlp([64, *HIDDEN, 10], activation=act)
    x = jnp.asarray(ds.x_train)
    steps = epochs * (len(x) // 32)
    opt = optim.get("adam", LR, schedule="cosine", steps=steps)
    inactive, masks = [], []

    def measure(params):
        stats = diagnostics.unit_stats(model, params, x)
        inactive.append({k: float(v) for k, v in stats.dead.items()})
        masks.append(ever_on(model, params, x))

    def callback(epoch, state, history):
        measure(state.params)  # now: the state's buffers are reused by the next epoch
        return False

    params = model.init(jax.random.key(seed))
    measure(params)  # epoch 0: the initialisation
    state, history = train.fit(
        model,
        LOSS,
        opt,
        (ds.x_train, ds.y_train),
        epochs=epochs,
        batch_size=32,
        key=jax.random.key(seed + 1),
        init=params,
        eval_data=(ds.x_test, ds.y_test),
        progress=False,
        callback=callback,
    )
    masks = np.stack(masks)  # [1 + epochs, units]
    was_off = ~masks.all(axis=0)  # off at the end of some epoch
    return {
        "inactive": [float(np.mean(list(d.values()))) for d in inactive],
        "inactive_by_layer": inactive[-1],
        "peak_inactive": float(1 - masks.mean(axis=1).min()),
        "recovered": float(np.mean(was_off & masks[-1])),
        "frozen": frozen(model, state.params, x, jnp.asarray(ds.y_train)),
        "test_accuracy": history["eval_accuracy"],
        "train_loss": history["train_loss"],
    }


def main(argv=None) -> dict:
    args = parse(argv)
    epochs = 6 if args.quick else 20
    ds = data.digits()
    results = {}
    for act in ("relu", "leaky_relu"):
        r = results[act] = run(act, ds, epochs=epochs, seed=args.seed)
        layers = ", ".join(f"layer {k} {v:.2f}" for k, v in r["inactive_by_layer"].items())
        per_epoch = " ".join(f"{v:.2f}" for v in r["inactive"])
        print(f"{act:10s} inactive at init, then per epoch {per_epoch}")
        print(
            f"{'':10s} at the end: inactive {r['inactive'][-1]:.2f} ({layers}); zero "
            f"gradient {r['frozen']:.2f}; recovered {r['recovered']:.2f}; test accuracy "
            f"{r['test_accuracy'][-1]:.3f}"
        )

    relu, leaky = results["relu"], results["leaky_relu"]
    fig, axes = plots.panels(2, width=4.6, height=3.6)
    plots.curves(
        {a: r["inactive"] for a, r in results.items()},
        None,
        ax=axes[0],
        logy=False,
        x={a: range(epochs + 1) for a in results},
        ylabel="fraction of hidden units",
        title="never active on the training set",
    )
    plots.curves(
        {a: r["test_accuracy"] for a, r in results.items()},
        None,
        ax=axes[1],
        logy=False,
        ylabel="test accuracy",
        title=f"Adam, lr {LR} (cosine decay)",
    )
    axes[0].set_ylim(0, 1)
    axes[1].set_ylim(0, 1)
    figure = plots.save(fig, os.path.join(args.out, "dead_relu.png"))
    print(
        f"claim: at lr {LR}, {relu['inactive'][-1]:.0%} of relu's hidden units are dead "
        f"({relu['frozen']:.0%} get exactly zero gradient) and test accuracy stalls at "
        f"{relu['test_accuracy'][-1]:.2f}; leaky_relu's inactive units ("
        f"{leaky['inactive'][-1]:.0%}) keep a gradient ({leaky['frozen']:.0%} frozen) and it "
        f"reaches {leaky['test_accuracy'][-1]:.2f}"
    )
    print(f"figure: {figure}")
    return {"relu": relu, "leaky_relu": leaky, "epochs": epochs, "figure": figure}


if __name__ == "__main__":
    main()
