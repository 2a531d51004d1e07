"""Figures. matplotlib is imported here only, and only when a figure is asked for.

Each function draws one figure, writes it to ``path`` (PNG by extension) and returns the path.
The non-interactive Agg backend is used so figures render on machines with no display.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> str:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    _plt().close(fig)
    return path


def training_curves(history: Mapping[str, Sequence[float]], path, *, title: str = "") -> str:
    """Loss (left) and accuracy (right) per epoch, train and test where present."""
    plt = _plt()
    has_acc = any(k.endswith("accuracy") and history.get(k) for k in history)
    fig, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(9 if has_acc else 5, 3.6))
    axes = np.atleast_1d(axes)
    for key in ("train_loss", "test_loss", "loss", "eval_loss"):
        if history.get(key):
            axes[0].plot(np.arange(1, len(history[key]) + 1), history[key], label=key)
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("loss")
    axes[0].set_yscale("log")
    axes[0].legend()
    if has_acc:
        for key in ("train_accuracy", "test_accuracy", "accuracy", "eval_accuracy"):
            if history.get(key):
                axes[1].plot(np.arange(1, len(history[key]) + 1), history[key], label=key)
        axes[1].set_xlabel("epoch")
        axes[1].set_ylabel("accuracy")
        axes[1].legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def curves(
    series: Mapping[str, Sequence[float]],
    path,
    *,
    xlabel: str = "epoch",
    ylabel: str = "loss",
    title: str = "",
    logy: bool = True,
    x: Mapping[str, Sequence[float]] | None = None,
) -> str:
    """Several labelled curves on one axis (loss curves of optimisers, learning rates...)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for label, ys in series.items():
        xs = x[label] if x is not None else np.arange(1, len(ys) + 1)
        ax.plot(xs, ys, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.legend()
    if title:
        ax.set_title(title)
    return _save(fig, path)


def bars(values: Mapping[str, Sequence[float]], path, *, xlabels: Sequence[str],
         ylabel: str, title: str = "", logy: bool = True) -> str:
    """Grouped bars: one group per x label, one bar per series (e.g. grad norm per layer)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    n = len(values)
    width = 0.8 / max(n, 1)
    pos = np.arange(len(xlabels))
    for i, (label, ys) in enumerate(values.items()):
        ax.bar(pos + i * width - 0.4 + width / 2, ys, width, label=label)
    ax.set_xticks(pos, list(xlabels))
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.legend()
    if title:
        ax.set_title(title)
    return _save(fig, path)


def lr_sweep(result, path, *, title: str = "learning-rate range test") -> str:
    """Loss against learning rate (log axis) for a :func:`fnn.diagnostics.lr_find` result."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(result.lrs, result.losses, alpha=0.3, label="loss")
    ax.plot(result.lrs, result.smoothed, label="smoothed")
    ax.axvline(result.suggested_lr, color="k", linestyle="--",
               label=f"suggested {result.suggested_lr:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    finite = np.asarray(result.smoothed)[np.isfinite(result.smoothed)]
    if finite.size:
        ax.set_ylim(top=float(min(finite.max(), 4 * finite.min() + 1e-12)) * 1.05)
    ax.legend()
    ax.set_title(title)
    return _save(fig, path)


def decision_boundary(predict, x, y, path, *, title: str = "", resolution: int = 200) -> str:
    """Class regions of a 2-D classifier with the data on top.

    Args:
        predict: ``predict(points: [n, 2]) -> class ids [n]`` (numpy in, numpy out).
        x: ``[n, 2]`` points; y: ``[n]`` integer labels.
    """
    plt = _plt()
    x = np.asarray(x)
    y = np.asarray(y)
    lo, hi = x.min(axis=0) - 0.5, x.max(axis=0) + 0.5
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], resolution),
                         np.linspace(lo[1], hi[1], resolution))
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(x.dtype)
    zz = np.asarray(predict(grid)).reshape(gx.shape)
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.contourf(gx, gy, zz, alpha=0.3, levels=np.arange(zz.max() + 2) - 0.5, cmap="coolwarm")
    ax.scatter(x[:, 0], x[:, 1], c=y, s=12, cmap="coolwarm", edgecolors="k", linewidths=0.3)
    if title:
        ax.set_title(title)
    return _save(fig, path)
