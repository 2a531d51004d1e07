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


def panels(n: int, *, width: float = 4.6, height: float = 3.8):
    """A figure of ``n`` side-by-side panels for the ``ax=`` argument of the functions below.

    Returns:
        ``(fig, axes)`` with ``axes`` a list of ``n`` matplotlib axes; write the figure with
        :func:`save`.

    Example:
        >>> fig, axes = panels(2)
        >>> len(axes)
        2
        >>> _plt().close(fig)
    """
    fig, axes = _plt().subplots(1, n, figsize=(width * n, height))
    return fig, list(np.atleast_1d(axes))


def save(fig, path) -> str:
    """Write a figure from :func:`panels` to ``path`` (folders are created) and close it."""
    return _save(fig, path)


def _axes(ax, figsize):
    """``(fig, ax)``: a new single-panel figure, or the caller's panel (``fig`` None)."""
    if ax is not None:
        return None, ax
    return _plt().subplots(figsize=figsize)


def _done(fig, ax, path):
    # Drawn into a caller's panel: the caller saves the whole figure (see panels/save).
    return ax if fig is None else _save(fig, path)


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
    ax=None,
):
    """Several labelled curves on one axis (loss curves of optimisers, learning rates...).

    With ``ax`` (a panel from :func:`panels`) it draws there and returns ``ax``; otherwise it
    writes ``path`` and returns it. The same holds for :func:`bars`, :func:`lr_sweep` and
    :func:`decision_boundary`.
    """
    fig, ax = _axes(ax, (6, 3.8))
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
    return _done(fig, ax, path)


def bars(
    values: Mapping[str, Sequence[float]],
    path,
    *,
    xlabels: Sequence[str],
    ylabel: str,
    title: str = "",
    logy: bool = True,
    ax=None,
):
    """Grouped bars: one group per x label, one bar per series (e.g. grad norm per layer)."""
    fig, ax = _axes(ax, (7, 3.8))
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
    return _done(fig, ax, path)


def lr_sweep(result, path, *, title: str = "learning-rate range test", ax=None):
    """Loss against learning rate (log axis) for a :func:`fnn.diagnostics.lr_find` result."""
    fig, ax = _axes(ax, (6, 3.8))
    ax.plot(result.lrs, result.losses, alpha=0.3, label="loss")
    ax.plot(result.lrs, result.smoothed, label="smoothed")
    ax.axvline(
        result.suggested_lr, color="k", linestyle="--", label=f"suggested {result.suggested_lr:.2g}"
    )
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    finite = np.asarray(result.smoothed)[np.isfinite(result.smoothed)]
    if finite.size:
        top = float(min(finite.max(), 4 * finite.min() + 1e-12)) * 1.05
        # Both limits: left to autoscale, the bottom would make room for the diverged
        # step's huge raw loss and squash the curve.
        raw = np.asarray(result.losses, np.float64)
        low = float(min(finite.min(), raw[np.isfinite(raw)].min(initial=np.inf)))
        ax.set_ylim(low - 0.05 * (top - low), top)
    ax.legend()
    ax.set_title(title)
    return _done(fig, ax, path)


def decision_boundary(predict, x, y, path, *, title: str = "", resolution: int = 200, ax=None):
    """Class regions of a 2-D classifier with the data on top.

    Args:
        predict: ``predict(points: [n, 2]) -> class ids [n]`` (numpy in, numpy out); for two
            classes it may instead return probabilities ``[n, 2]``: the regions are then
            shaded by ``p(class 1)`` with the 0.5 contour drawn, so an undecided model
            (p = 0.5 everywhere) shows as one pale colour instead of arbitrary regions.
        x: ``[n, 2]`` points; y: ``[n]`` integer labels.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    lo, hi = x.min(axis=0) - 0.5, x.max(axis=0) + 0.5
    gx, gy = np.meshgrid(
        np.linspace(lo[0], hi[0], resolution), np.linspace(lo[1], hi[1], resolution)
    )
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(x.dtype)
    out = np.asarray(predict(grid))
    fig, ax = _axes(ax, (4.2, 4))
    if out.ndim == 2:  # probabilities of two classes
        p1 = out[:, 1].reshape(gx.shape)
        classes = 2
        # 11 bands: 0.5 sits inside the middle one, so round-off around 0.5 draws nothing
        ax.contourf(gx, gy, p1, levels=np.linspace(0, 1, 12), cmap="coolwarm", alpha=0.45)
        # contour() warns when the level is out of range; a nearly flat p (round-off
        # around 0.5) would draw a meaningless, noisy line.
        if p1.min() < 0.5 < p1.max() and np.ptp(p1) > 1e-3:
            ax.contour(gx, gy, p1, levels=[0.5], colors="k", linewidths=1)
    else:
        zz = out.reshape(gx.shape)
        classes = max(int(zz.max()), int(y.max())) + 1  # fixed colours if a class is missing
        ax.contourf(gx, gy, zz, alpha=0.3, levels=np.arange(classes + 1) - 0.5, cmap="coolwarm")
    ax.scatter(
        x[:, 0],
        x[:, 1],
        c=y,
        s=12 if len(x) > 50 else 90,
        cmap="coolwarm",
        vmin=0,
        vmax=classes - 1,
        edgecolors="k",
        linewidths=0.3 if len(x) > 50 else 1,
    )
    if title:
        ax.set_title(title)
    return _done(fig, ax, path)
