"""Losses and their hand-written gradients with respect to the predictions.

A loss is a :class:`Loss` record: ``fn(pred, target)`` returns a scalar (the mean over the
batch) and ``grad(pred, target)`` returns ``d fn / d pred`` written by hand, with the ``1/N``
of the mean included. The classification losses take *logits* and fuse the final sigmoid or
softmax into the loss, which is both numerically stable and gives the famously simple gradient
``(probabilities - targets) / N``. The record also carries what training and the command line
need: ``check_target`` (validation, with the value range where the targets are concrete),
``targets`` (from class labels) and ``outputs`` (the model's output width).

Numerics and edge cases (``s`` = sigmoid, ``z`` = logits, ``t`` = targets, ``xmul(a, b)`` =
``a * b`` with ``0 * inf = 0``, the ``0 log 0 = 0`` convention of cross-entropy):

=====================  =========================================  ==========================
loss                   fn per element / row, as computed          grad, as computed
=====================  =========================================  ==========================
mse                    ``(p - t)**2``                             ``2 (p - t) / size``
binary_cross_entropy   ``where(z > 0, xmul(1 - t, z),             ``where(z > 0, (1 - t) -
                       xmul(t, -z)) + log1p(exp(-|z|))``          s(-z), s(z) - t) / size``
softmax_cross_entropy  ``-sum_k xmul(t_k, logp_k)``, ``logp =     ``g = softmax(z) sum(t) -
                       z - m - log1p(r)``, ``r`` = sum of         t``, minus ``sum(g)`` at
                       ``exp(z - m)`` but one maximum ``m``       the argmax; ``/ batch``
=====================  =========================================  ==========================

* Every forward is written so that ``jax.grad`` of it is the derivative everywhere: BCE's
  ``-|z|`` is ``where(z > 0, -z, z)``, because ``max(z, 0)`` and ``|z|`` hand autodiff
  subgradients at ``z = 0`` that do not add up (``jax.grad`` gave ``-t/N`` there instead of
  ``(0.5 - t)/N``). A ``custom_jvp`` would also fix it but would make ``jax.grad`` repeat the
  hand-written rule, and ``jax.grad`` is the independent witness :mod:`fnn.check` relies on.
* BCE's gradient is ``(1 - t) - s(-z)`` for ``z > 0``: the same number as ``s(z) - t``
  without the cancellation that makes it 0 for ``t = 1`` (float32 from ``z`` about 17 up).
  Softmax-CE keeps the same digits (``p_max - 1 = -sum`` of the other ``p``): ``log1p`` of
  the sum without the maximum in the forward, and ``sum(g)``, 0 in exact arithmetic, taken
  off the argmax in the gradient (autodiff does the same through the unstopped maximum).
* An infinite logit is the limit ``z -> +-inf``. BCE: the loss is 0 where the logit is right
  by an infinite margin and ``+inf`` where it is wrong; the gradient is ``1 - t`` at ``+inf``
  and ``-t`` at ``-inf``. Softmax-CE with one ``+inf`` logit ``i`` in a row: ``softmax ->
  e_i``, the loss is 0 if all the target mass is on ``i`` and ``+inf`` otherwise, the
  gradient ``(e_i sum(t) - t) / batch``. Two or more ``+inf`` logits in a row have no limit
  (the ratio of two infinities): that row's loss and gradient are NaN. ``-inf`` logits (masks)
  get probability 0. ``fn``, ``grad`` and ``jax.grad(fn)`` agree on all of these.
* Softmax-CE with an integer label outside ``0..classes-1`` (a one-hot of zeros, which would
  score a plausible finite loss) gives NaN for that row's loss and gradient, traced or not;
  :attr:`Loss.check_target` rejects such labels with a message where they are concrete.

Worst error against a 50-digit mpmath truth on a grid spanning +-1000 (the same battery and
measure as in :mod:`fnn.activations`), in ulp, float32/float64; in brackets optax's where it is
over 8 and over twice fnn's:

====================  ==================  =================  =================
loss                  fn                  grad               jax.grad(fn)
====================  ==================  =================  =================
mse                   0.2/1.0             0.1/0.4            0.1/0.4
binary_cross_entropy  0.5/0.5             0.6/0.8            0.6/0.8
softmax_ce(labels)    1.1[8e6]/8.3[4e15]  1.3[8e6]/28[4e15]  1.3[8e6]/28[4e15]
softmax_ce(one-hot)   1.1[8e6]/8.3[4e15]  1.3[8e6]/28[4e15]  1.3[8e6]/28[4e15]
====================  ==================  =================  =================

Example:
    >>> import jax.numpy as jnp
    >>> from fnn import losses
    >>> ce = losses.get("softmax_cross_entropy")
    >>> logits = jnp.array([[2.0, 0.0], [0.0, 2.0]])
    >>> labels = jnp.array([0, 1])
    >>> round(float(ce.fn(logits, labels)), 4)
    0.1269
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fnn.activations import sigmoid, softmax

Array = jax.Array


class Loss(NamedTuple):
    """A loss, its hand-written gradient, and what its consumers need to know.

    Attributes:
        name: registry name.
        fn: ``fn(pred, target) -> scalar``, the mean over the batch.
        grad: ``grad(pred, target) -> dpred``, the gradient of ``fn`` with respect to
            ``pred`` (same shape as ``pred``).
        classification: whether targets are class labels (then ``accuracy`` is defined).
        accuracy: ``accuracy(pred, target) -> scalar`` fraction correct, or ``None``.
        validate: ``validate(pred, target)`` raises a clear ``ValueError``/``TypeError`` on
            mismatched shapes or dtypes; called at trace time by ``fn`` and ``grad``.
        check_target: ``check_target(pred, target) -> target``: ``validate``, plus the value
            range where ``target`` is concrete (labels in ``0..classes-1``, probabilities in
            ``[0, 1]``); returns the target cast to what ``fn`` takes (int32 labels, or
            ``pred``'s float dtype). ``pred`` may be a ``jax.ShapeDtypeStruct`` such as
            ``[n, *model.out_shape]``.
        targets: ``targets(labels, classes, dtype=np.float32) -> target``: the target array
            for integer class labels ``[n]`` (int labels for softmax-CE; ``[n, 1]`` 0/1 floats
            for two classes and one-hot ``[n, classes]`` floats otherwise for BCE and mse).
        outputs: ``outputs(classes) -> int``: the model's output width for ``classes``
            classes (1 for two classes under BCE and mse).
    """

    name: str
    fn: Callable[[Array, Array], Array]
    grad: Callable[[Array, Array], Array]
    classification: bool
    accuracy: Callable[[Array, Array], Array] | None
    validate: Callable[[Array, Array], None]
    check_target: Callable[[Array, Array], Array] | None = None
    targets: Callable[..., np.ndarray] | None = None
    outputs: Callable[[int], int] | None = None


def _check_float(name: str, a: Array) -> None:
    if not jnp.issubdtype(jnp.result_type(a), jnp.floating):
        raise TypeError(
            f"{name} must have a floating dtype, got {jnp.result_type(a)}; "
            f"convert it with .astype(jnp.float32)"
        )


def _xmul(a: Array, b: Array) -> Array:
    """``a * b`` with ``0 * (+-inf) = 0``; its derivative in ``b`` is ``a``, never NaN."""
    return jnp.where(a == 0, jnp.zeros_like(b), a * b)


def _concrete(a) -> np.ndarray | None:
    """``a`` as a NumPy array, or ``None`` while it is being traced."""
    return None if isinstance(a, jax.core.Tracer) else np.asarray(a)


def _check_range(target, lo: float, hi: float, what: str) -> None:
    t = _concrete(target)
    if t is None or t.size == 0:
        return
    tmin, tmax = float(np.min(t)), float(np.max(t))
    if not (lo <= tmin and tmax <= hi):  # NaN fails too
        raise ValueError(f"target: {what}, got values from {tmin:g} to {tmax:g}")


def _valid_labels(labels, classes: int) -> np.ndarray:
    y = np.asarray(labels)
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
        raise TypeError(f"labels: expected integer class labels [n], got {y.dtype} {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= classes):
        raise ValueError(
            f"labels: expected values in 0..{classes - 1} ({classes} classes), got values from "
            f"{y.min()} to {y.max()}"
        )
    return y


def _label_targets(labels, classes: int, dtype=np.float32) -> np.ndarray:
    """``[n]`` integer labels to ``[n, 1]`` 0/1 floats (two classes) or one-hot rows."""
    y = _valid_labels(labels, classes)
    if classes == 2:
        return y.astype(dtype)[:, None]
    return np.eye(classes, dtype=dtype)[y]


def _one_or_classes(classes: int) -> int:
    return 1 if classes == 2 else classes


def _classes(classes: int) -> int:
    return classes


# ---------------------------------------------------------------------------------------------
# mse: L = mean((p - t)^2) over every element; dL/dp = 2 (p - t) / size.


def _mse_validate(pred: Array, target: Array) -> None:
    _check_float("pred", pred)
    _check_float("target", target)
    if jnp.shape(pred) != jnp.shape(target):
        raise ValueError(
            f"mse: target must have the shape of pred {jnp.shape(pred)}, got {jnp.shape(target)}"
        )


def mse(pred: Array, target: Array) -> Array:
    """Mean squared error ``mean((pred - target)**2)`` over every element.

    Args:
        pred: ``[batch, outputs]`` (or any shape).
        target: same shape as ``pred``.

    Gradient: ``2 * (pred - target) / pred.size``.
    """
    _mse_validate(pred, target)
    d = pred - target
    return jnp.mean(d * d)


def _mse_grad(pred: Array, target: Array) -> Array:
    _mse_validate(pred, target)
    return 2.0 * (pred - target) / pred.size


def _mse_check_target(pred, target):
    _mse_validate(pred, target)
    return jnp.asarray(target).astype(pred.dtype)


# ---------------------------------------------------------------------------------------------
# binary cross-entropy from logits z, targets t in [0, 1]:
#   l(z, t) = softplus(z) - z t = -t log s(z) - (1 - t) log(1 - s(z))
#           = z (1 - t) + log1p(exp(-z))  for z > 0,   -z t + log1p(exp(z))  for z <= 0
#   dl/dz   = s(z) - t = (1 - t) - s(-z)


def _bce_validate(pred: Array, target: Array) -> None:
    _check_float("pred", pred)
    if jnp.shape(pred) != jnp.shape(target):
        raise ValueError(
            f"binary_cross_entropy: target must have the shape of pred (logits) "
            f"{jnp.shape(pred)}, got {jnp.shape(target)}"
        )


def binary_cross_entropy(pred: Array, target: Array) -> Array:
    """Binary cross-entropy from logits, averaged over every element.

    Args:
        pred: logits ``z``, ``[batch]`` or ``[batch, outputs]``.
        target: 0/1 labels (or probabilities), same shape; integer or boolean labels are
            accepted.

    Per element ``where(z > 0, (1 - t) z, -t z) + log1p(exp(-|z|))`` (the products with
    ``0 * inf = 0``): it never exponentiates a positive number, so logits of +-1000 give
    finite values, an infinite logit gives the limit, and ``jax.grad`` of it is the
    derivative ``s(z) - t`` at every ``z``, 0 included.

    Gradient: ``(sigmoid(z) - t) / size``.
    """
    _bce_validate(pred, target)
    t = target.astype(pred.dtype)
    pos = pred > 0
    lin = jnp.where(pos, _xmul(1.0 - t, pred), _xmul(t, -pred))
    return jnp.mean(lin + jnp.log1p(jnp.exp(jnp.where(pos, -pred, pred))))


def _bce_grad(pred: Array, target: Array) -> Array:
    _bce_validate(pred, target)
    t = target.astype(pred.dtype)
    g = jnp.where(pred > 0, (1.0 - t) - sigmoid(-pred), sigmoid(pred) - t)
    return g / pred.size


def _bce_accuracy(pred: Array, target: Array) -> Array:
    return jnp.mean(((pred > 0) == (target > 0.5)).astype(pred.dtype))


def _bce_check_target(pred, target):
    _bce_validate(pred, target)
    kind = jnp.result_type(target)
    if not (jnp.issubdtype(kind, jnp.number) or kind == jnp.bool_):
        raise TypeError(f"target: expected 0/1 labels or probabilities, got dtype {kind}")
    _check_range(target, 0.0, 1.0, "binary targets must lie in [0, 1]")
    return jnp.asarray(target).astype(pred.dtype)


# ---------------------------------------------------------------------------------------------
# softmax cross-entropy from logits z and one-hot (or probability) targets t:
#   L = mean_batch( -sum_k t_k log softmax(z)_k ),  dL/dz = (softmax(z) sum(t) - t) / batch


def _one_hot_target(pred: Array, target: Array) -> Array:
    """Labels ``[batch]`` to one-hot ``[batch, classes]`` (NaN rows where out of range)."""
    _check_float("pred", pred)
    if pred.ndim != 2:
        raise ValueError(
            f"softmax_cross_entropy: pred (logits) must be [batch, classes], "
            f"got shape {jnp.shape(pred)}"
        )
    if jnp.issubdtype(jnp.result_type(target), jnp.integer):
        if jnp.shape(target) != pred.shape[:1]:
            raise ValueError(
                f"softmax_cross_entropy: integer labels must have shape {pred.shape[:1]} "
                f"(one label per row of pred), got {jnp.shape(target)}"
            )
        k = pred.shape[1]
        bad = (target < 0) | (target >= k)
        nan_row = jnp.where(bad, jnp.nan, 0.0).astype(pred.dtype)[:, None]
        return jax.nn.one_hot(target, k, dtype=pred.dtype) + nan_row
    if jnp.issubdtype(jnp.result_type(target), jnp.floating):
        if jnp.shape(target) != pred.shape:
            raise ValueError(
                f"softmax_cross_entropy: one-hot targets must have the shape of pred "
                f"{pred.shape}, got {jnp.shape(target)} (integer labels are [batch])"
            )
        return target.astype(pred.dtype)
    raise TypeError(
        f"softmax_cross_entropy: target must be integer labels or float one-hot, "
        f"got dtype {jnp.result_type(target)}"
    )


class _Rows(NamedTuple):
    """The pieces of a row-wise softmax extended to +inf logits by continuity."""

    top: Array  # [batch, classes] bool: where the logit is +inf
    one: Array  # [batch, 1] bool: the row has exactly one +inf logit (then the limit exists)
    x: Array  # the logits, NaN in rows with two or more +inf (no limit there)
    safe: Array  # x with a single +inf replaced by 0: the regular branch's input


def _rows(pred: Array) -> _Rows:
    top = pred == jnp.inf
    count = jnp.sum(top, axis=-1, keepdims=True)
    # An added NaN (not a where) so that the rows are NaN under autodiff as well.
    x = pred + jnp.where(count > 1, jnp.nan, 0.0).astype(pred.dtype)
    # The branch not taken must stay finite: where() passes NaN cotangents through otherwise.
    safe = jnp.where(top & (count == 1), jnp.zeros_like(x), x)
    return _Rows(top, count == 1, x, safe)


def _log_softmax_rows(r: _Rows) -> Array:
    # One +inf logit x_i: log_softmax -> 0 at i and x_j - x_i = -inf elsewhere, written so
    # that autodiff sees the limit's derivative e_j - e_i.
    x_i = jnp.sum(jnp.where(r.top, r.x, jnp.zeros_like(r.x)), axis=-1, keepdims=True)
    limit = jnp.where(r.top, jnp.zeros_like(r.x), r.x - x_i)
    # The regular rows: log_softmax with log1p as in fnn.activations.log_softmax, but with
    # the maximum seen by autodiff: for the loss's dz = p sum(t) - t its argmax path removes
    # the rounding residue of p_max - 1 (1.3 ulp instead of optax's 8e6 in float32).
    z = r.safe - jnp.max(r.safe, axis=-1, keepdims=True)
    top = z == 0
    rest = jnp.sum(jnp.where(top, jnp.expm1(z), jnp.exp(z)), axis=-1, keepdims=True)
    ties = (jnp.sum(top, axis=-1, keepdims=True) - 1).astype(z.dtype)
    return jnp.where(r.one, limit, z - jnp.log1p(rest + ties))


def _softmax_rows(r: _Rows) -> Array:
    return jnp.where(r.one, r.top.astype(r.x.dtype), softmax(r.safe, axis=-1))


def softmax_cross_entropy(pred: Array, target: Array) -> Array:
    """Softmax cross-entropy from logits, averaged over the batch.

    Args:
        pred: logits ``[batch, classes]``.
        target: integer labels ``[batch]`` or one-hot / probability rows ``[batch, classes]``.

    Uses ``log_softmax`` (log-sum-exp with the row maximum subtracted), so logits of +-1000
    stay finite; terms with ``t_k = 0`` contribute 0 even where the log-probability is
    ``-inf``. A label outside ``0..classes-1`` makes its row NaN; a ``+inf`` logit gives the
    limit (see the module docstring). Gradient: ``(softmax(pred) - onehot(target)) / batch``.
    """
    t = _one_hot_target(pred, target)
    logp = _log_softmax_rows(_rows(pred))
    return -jnp.sum(_xmul(t, logp)) / pred.shape[0]


def _sce_grad(pred: Array, target: Array) -> Array:
    t = _one_hot_target(pred, target)
    r = _rows(pred)
    # sum_k t_k = 1 per row for one-hot or probability targets; for unnormalised rows the
    # exact gradient is softmax * sum(t) - t, which this form also covers.
    g = _softmax_rows(r) * jnp.sum(t, axis=-1, keepdims=True) - t
    # sum(g) is 0 in exact arithmetic; taking its rounding residue off the argmax (split among
    # ties) keeps the digits of p_max - 1 = -(sum of the other p), which cancel otherwise.
    top = (r.safe == jnp.max(r.safe, axis=-1, keepdims=True)).astype(g.dtype)
    share = top / jnp.sum(top, axis=-1, keepdims=True)
    return (g - share * jnp.sum(g, axis=-1, keepdims=True)) / pred.shape[0]


def _first_argmax(a: Array) -> Array:
    """``argmax(a, axis=-1)`` (first index on ties) as a max, a compare and a min.

    XLA's CPU argmax is a variadic reduce that does not fuse; this form fuses with the rest of
    a training step (measured: a 256-wide step went from 1.14-1.22x a raw step to 1.035x).
    """
    iota = jax.lax.broadcasted_iota(jnp.int32, a.shape, a.ndim - 1)
    top = a == jnp.max(a, axis=-1, keepdims=True)
    return jnp.min(jnp.where(top, iota, a.shape[-1]), axis=-1)


def _sce_accuracy(pred: Array, target: Array) -> Array:
    if jnp.issubdtype(jnp.result_type(target), jnp.integer):
        labels = jnp.asarray(target).astype(jnp.int32)  # int64 labels under x64: no promotion
    else:
        labels = _first_argmax(target)
    return jnp.mean((_first_argmax(pred) == labels).astype(pred.dtype))


def _sce_validate(pred: Array, target: Array) -> None:
    _one_hot_target(pred, target)


def _sce_check_target(pred, target):
    _one_hot_target(pred, target)
    k = pred.shape[1]
    if jnp.issubdtype(jnp.result_type(target), jnp.integer):
        _check_range(
            target, 0, k - 1, f"class labels must lie in 0..{k - 1} (pred has {k} columns)"
        )
        return jnp.asarray(target).astype(jnp.int32)
    _check_range(target, 0.0, 1.0, "one-hot / probability targets must lie in [0, 1]")
    return jnp.asarray(target).astype(pred.dtype)


def _sce_targets(labels, classes: int, dtype=np.float32) -> np.ndarray:
    del dtype  # integer labels are what softmax_cross_entropy takes
    return _valid_labels(labels, classes).astype(np.int32)


# ---------------------------------------------------------------------------------------------

_REGISTRY: dict[str, Loss] = {
    "mse": Loss(
        "mse", mse, _mse_grad, False, None, _mse_validate,
        _mse_check_target, _label_targets, _one_or_classes,
    ),
    "binary_cross_entropy": Loss(
        "binary_cross_entropy", binary_cross_entropy, _bce_grad, True, _bce_accuracy,
        _bce_validate, _bce_check_target, _label_targets, _one_or_classes,
    ),
    "softmax_cross_entropy": Loss(
        "softmax_cross_entropy", softmax_cross_entropy, _sce_grad, True, _sce_accuracy,
        _sce_validate, _sce_check_target, _sce_targets, _classes,
    ),
}  # fmt: skip

#: Every registered loss name.
NAMES: tuple[str, ...] = tuple(_REGISTRY)


def get(name: str | Loss) -> Loss:
    """Look a loss up by name (or return a :class:`Loss` record unchanged).

    Raises:
        ValueError: for an unknown name; the message lists the valid ones.
    """
    if isinstance(name, Loss):
        return name
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown loss {name!r}; expected one of: {', '.join(NAMES)}")
    return _REGISTRY[name]
