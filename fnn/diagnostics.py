"""Diagnostics that make the textbook claims visible: gradient flow, dead and saturated units,
update sizes, and the learning-rate range test.

Every function is pure over the same pytrees the rest of fnn uses, so each can be called
inside ``jax.jit`` or from a ``fit`` callback.

* :func:`grad_norms`: the L2 norm of each dense layer's weight gradient. Vanishing gradients
  show up as norms that shrink layer by layer towards the input.
* :func:`unit_stats`: per activation layer, the fraction of *dead* units (ReLU family: the
  pre-activation is <= 0 on every example, so the unit outputs a constant and, for relu,
  passes no gradient) and of *saturated* units (sigmoid/tanh: the derivative is below
  ``threshold`` times its peak on average over the data).
* :func:`update_ratios`: ``||delta w|| / ||w||`` per dense layer for one optimiser step;
  around 1e-3 is the usual healthy value (Karpathy, CS231n notes), much larger means the
  learning rate is too high, much smaller that it crawls.
* :func:`lr_find`: the learning-rate range test (Smith, 2017, "Cyclical Learning Rates").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnn import activations as _act
from fnn import layers
from fnn import losses as _losses
from fnn.models import Model, check_input, sublayers, taps

Array = jax.Array


def _weights(tree) -> dict[str, Array]:
    """Every weight matrix (a ``"w"`` entry) of a params-shaped tree, keyed by its layer path.

    A single layer's dict (not a list) is keyed ``"[0]"``, as a one-layer model's would be.
    """
    if isinstance(tree, dict):
        tree = [tree]
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(path[-1], jax.tree_util.DictKey) and path[-1].key == "w":
            out[jax.tree_util.keystr(path[:-1])] = leaf
    return out


def grad_norms(grads, model: Model | None = None) -> dict[str, Array]:
    """L2 norm of the weight gradient of every dense layer, keyed by its params path.

    Args:
        grads: gradients in the structure of a model's params; layers nested in residual or
            parallel blocks are found too (``"[1][0]"``).
        model: unused except for symmetry with the other diagnostics; may be ``None``.

    Returns:
        ``{"[0]": norm, "[2]": norm, ...}`` in layer order (input first).
    """
    del model
    return {path: jnp.linalg.norm(w) for path, w in _weights(grads).items()}


def update_ratios(params_before, params_after) -> dict[str, Array]:
    """``||w_after - w_before|| / ||w_before||`` for every dense layer's weights, by path."""
    after = _weights(params_after)
    return {
        path: jnp.linalg.norm(after[path] - a)
        / jnp.maximum(jnp.linalg.norm(a), jnp.finfo(a.dtype).tiny)
        for path, a in _weights(params_before).items()
    }


# Peak of each saturating activation's derivative, at 0: saturation is measured relative to it.
_PEAK = {"sigmoid": 0.25, "tanh": 1.0}


class UnitStats(NamedTuple):
    """Per activation layer statistics over a dataset.

    Attributes:
        dead: ``{path: fraction}`` for ReLU-family layers: units whose pre-activation is <= 0
            on every example.
        saturated: ``{path: fraction}`` for sigmoid/tanh layers: units whose mean derivative
            over the data is below ``threshold`` times the derivative's peak.
        mean_derivative: ``{path: mean f'(x)}`` for every elementwise activation layer.
    """

    dead: dict[str, Array]
    saturated: dict[str, Array]
    mean_derivative: dict[str, Array]


def unit_stats(model: Model, params, x: Array, *, threshold: float = 0.05) -> UnitStats:
    """Dead and saturated unit fractions of every activation layer, over the examples ``x``.

    Args:
        model: the model.
        params: its parameters.
        x: ``[examples, *in_shape]``, e.g. the training set.
        threshold: a unit is saturated when its mean derivative is below ``threshold`` times
            the activation's peak derivative (0.25 for sigmoid, 1 for tanh).

    Returns:
        A :class:`UnitStats` keyed by each activation layer's path
        (:func:`fnn.models.sublayers`); fractions are scalars in ``[0, 1]``.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> model = fnn.mlp([2, 4, 1], dtype=jnp.float32)
        >>> p = model.init(jax.random.key(0))
        >>> p[0]["b"] = jnp.full((4,), -100.0, jnp.float32)   # every unit pushed below zero
        >>> float(unit_stats(model, p, jnp.ones((8, 2), jnp.float32)).dead["[1]"])
        1.0
    """
    check_input(model, x)
    t = taps(model, params, x)
    dead, saturated, mean_d = {}, {}, {}
    for path, layer in sublayers(model).items():
        act = layers.info(layer, "activation")
        if act is None or not act.elementwise:
            continue
        xin = t[path]["in"]
        deriv = act.vjp(xin, jnp.ones_like(xin))
        per_unit = jnp.mean(deriv.reshape(deriv.shape[0], -1), axis=0)
        mean_d[path] = jnp.mean(per_unit)
        if act.name in _act.RELU_FAMILY:
            ever_on = jnp.any(xin.reshape(xin.shape[0], -1) > 0, axis=0)
            dead[path] = 1.0 - jnp.mean(ever_on.astype(jnp.float32))
        if act.name in _PEAK:
            sat = per_unit < threshold * _PEAK[act.name]
            saturated[path] = jnp.mean(sat.astype(jnp.float32))
    return UnitStats(dead, saturated, mean_d)


def layer_grad_norms(model: Model, loss, params, x: Array, y: Array) -> dict[str, Array]:
    """Weight-gradient norm per dense layer for ``loss`` on ``(x, y)``, by the manual sweep."""
    loss = _losses.get(loss)
    out, res = model.forward(params, x)
    grads, _ = model.backward(params, res, loss.grad(out, y))
    return grad_norms(grads)


# ---------------------------------------------------------------------------------------------
# Learning-rate range test


class LRFindResult(NamedTuple):
    """The outcome of :func:`lr_find`.

    Attributes:
        lrs: learning rate at each step, ``[steps_run]``.
        losses: raw training loss at each step.
        smoothed: exponentially smoothed, bias-corrected loss.
        suggested_lr: the suggested rate (see :func:`lr_find` for the rule).
        min_loss_lr: the rate at the minimum of the smoothed loss.
        diverged_at: step index where the run was judged to diverge, or ``None``.
    """

    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    suggested_lr: float
    min_loss_lr: float
    diverged_at: int | None


def lr_find(
    model: Model,
    loss,
    data: tuple[Array, Array],
    *,
    optimizer: Callable[..., optax.GradientTransformation] = optax.adam,
    min_lr: float = 1e-6,
    max_lr: float = 10.0,
    steps: int = 200,
    batch_size: int = 32,
    key: Array | None = None,
    smoothing: float = 0.98,
    diverge_factor: float = 4.0,
    params=None,
) -> LRFindResult:
    """Learning-rate range test: train while raising the rate exponentially, watch the loss.

    The rate goes from ``min_lr`` to ``max_lr`` geometrically over ``steps`` minibatch steps
    of ``optimizer`` (any optax optimizer factory taking ``learning_rate``; the schedule is
    injected with ``optax.inject_hyperparams``). All steps run in one compiled ``lax.scan``.
    The loss is smoothed with an exponential moving average (``smoothing``) with bias
    correction; the sweep is cut where the smoothed loss first exceeds ``diverge_factor``
    times its running minimum (or becomes non-finite).

    Suggested rate: the rate at the minimum of the smoothed loss divided by 10. At the
    minimum the rate is already on the edge of instability; a tenth of it still descends
    quickly and is stable (the rule of Smith, 2017, as popularised by fastai).

    Args:
        model, loss: the model and loss (name or record).
        data: ``(x, y)`` training arrays.
        optimizer: optax factory, e.g. ``optax.adam`` or ``optax.sgd``.
        min_lr, max_lr: the sweep's range (``0 < min_lr < max_lr``).
        steps: number of steps in the sweep.
        batch_size: minibatch size; batches cycle through a shuffled copy of the data.
        key: PRNG key for init and shuffling (default ``jax.random.key(0)``).
        params: starting parameters (default ``model.init(key)``).

    Returns:
        An :class:`LRFindResult`.

    Raises:
        ValueError: for a non-positive or inverted range, ``steps < 10`` or a batch size
            outside ``[1, len(x)]``.
    """
    loss = _losses.get(loss)
    x, y = data
    if not (min_lr > 0 and max_lr > min_lr):
        raise ValueError(f"min_lr, max_lr: expected 0 < min_lr < max_lr, got {min_lr}, {max_lr}")
    if steps < 10:
        raise ValueError(f"steps: expected at least 10, got {steps}")
    n = int(x.shape[0])
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size: expected 1..{n} (the dataset size), got {batch_size}")
    key = jax.random.key(0) if key is None else key
    k_init, k_perm = jax.random.split(key)
    params = model.init(k_init) if params is None else params
    schedule = optax.exponential_decay(min_lr, steps, max_lr / min_lr)
    opt = optax.inject_hyperparams(optimizer)(learning_rate=schedule)
    x, y = jnp.asarray(x), jnp.asarray(y)
    per_epoch = n // batch_size
    reps = -(-steps // per_epoch)
    order = jnp.concatenate(
        [jax.random.permutation(jax.random.fold_in(k_perm, r), n) for r in range(reps)]
    )[: steps * batch_size]
    idx = order.reshape(steps, batch_size)

    def objective(p, xb, yb):
        return loss.fn(model.apply(p, xb), yb)

    @jax.jit
    def sweep(params, idx):
        def body(carry, ib):
            p, s = carry
            value, g = jax.value_and_grad(objective)(p, x[ib], y[ib])
            updates, s = opt.update(g, s, p)
            lr = s.hyperparams["learning_rate"]  # the rate this update used
            return (optax.apply_updates(p, updates), s), (value, lr)

        _, (vals, lrs) = jax.lax.scan(body, (params, opt.init(params)), idx)
        return vals, lrs

    vals, lrs = (np.asarray(a, np.float64) for a in sweep(params, idx))
    smoothed = np.empty_like(vals)
    avg, best, cut = 0.0, np.inf, None
    for i, v in enumerate(vals):
        avg = smoothing * avg + (1 - smoothing) * (v if np.isfinite(v) else np.inf)
        smoothed[i] = avg / (1 - smoothing ** (i + 1))
        if not np.isfinite(smoothed[i]) or (i > 5 and smoothed[i] > diverge_factor * best):
            cut = i
            break
        best = min(best, smoothed[i])
    end = len(vals) if cut is None else cut + 1
    lrs, vals, smoothed = lrs[:end], vals[:end], smoothed[:end]
    finite = np.where(np.isfinite(smoothed), smoothed, np.inf)
    i_min = int(np.argmin(finite))
    return LRFindResult(lrs, vals, smoothed, float(lrs[i_min] / 10.0), float(lrs[i_min]), cut)
