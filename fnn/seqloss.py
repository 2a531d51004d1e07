"""Sequence losses: softmax cross-entropy per token, with a mask, and token accuracy.

Logits are ``[batch, seq, classes]`` and targets integer ``[batch, seq]``. The loss is the mean
over the *counted* tokens: those where ``mask`` is true, or, in the :data:`sequence_cross_entropy`
record that :func:`fnn.train.fit` and :func:`fnn.backprop.value_and_grad` take, those whose
target is not negative (``-1`` marks padding, as ``ignore_index`` does elsewhere), since a
:class:`fnn.losses.Loss` gets only ``(pred, target)``.

Example:
    >>> import jax.numpy as jnp
    >>> from fnn import seqloss
    >>> logits = jnp.array([[[2.0, 0.0], [0.0, 2.0], [5.0, 0.0]]])
    >>> targets = jnp.array([[0, 1, -1]])             # the last token is padding
    >>> round(float(seqloss.sequence_cross_entropy.fn(logits, targets)), 4)
    0.1269
    >>> float(seqloss.sequence_cross_entropy.accuracy(logits, jnp.array([[0, 0, -1]])))
    0.5
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fnn.activations import log_softmax, softmax
from fnn.losses import Loss

Array = jax.Array


def _validate(logits: Array, targets: Array, mask: Array | None = None) -> None:
    kind = jnp.result_type(logits)
    if not jnp.issubdtype(kind, jnp.floating):
        raise TypeError(
            f"sequence_cross_entropy: logits must have a floating dtype, got {kind}; convert "
            f"them with .astype(jnp.float32)"
        )
    if jnp.ndim(logits) != 3:
        raise ValueError(
            f"sequence_cross_entropy: logits must be [batch, seq, classes], got shape "
            f"{jnp.shape(logits)}"
        )
    if not jnp.issubdtype(jnp.result_type(targets), jnp.integer):
        raise TypeError(
            f"sequence_cross_entropy: targets must be integer classes [batch, seq], got dtype "
            f"{jnp.result_type(targets)}; convert them with .astype(jnp.int32)"
        )
    if jnp.shape(targets) != jnp.shape(logits)[:2]:
        raise ValueError(
            f"sequence_cross_entropy: targets must have shape {jnp.shape(logits)[:2]} (one "
            f"class per token of logits {jnp.shape(logits)}), got {jnp.shape(targets)}"
        )
    if mask is not None and jnp.shape(mask) != jnp.shape(targets):
        raise ValueError(
            f"sequence_cross_entropy: mask must have the shape of targets "
            f"{jnp.shape(targets)}, got {jnp.shape(mask)}"
        )


def _counted(logits, targets, mask):
    """``(one_hot targets, 0/1 weights, number of counted tokens >= 1)``."""
    _validate(logits, targets, mask)
    keep = targets >= 0 if mask is None else jnp.asarray(mask, bool) & (targets >= 0)
    w = keep.astype(logits.dtype)
    t = jax.nn.one_hot(jnp.where(keep, targets, 0), logits.shape[-1], dtype=logits.dtype)
    return t, w, jnp.maximum(jnp.sum(w), 1.0)


# ---------------------------------------------------------------------------------------------
# L = sum_{b,t} w_bt * (-log softmax(z_bt)[y_bt]) / n,  n = sum w (counted tokens)
#   dL/dz_bt = w_bt * (softmax(z_bt) - onehot(y_bt)) / n


def cross_entropy(logits: Array, targets: Array, mask: Array | None = None) -> Array:
    """Mean softmax cross-entropy over the counted tokens.

    Args:
        logits: ``[batch, seq, classes]``.
        targets: integer ``[batch, seq]``; negative entries are not counted.
        mask: optional booleans ``[batch, seq]``, true where a token counts.

    Returns:
        A scalar: the sum of ``-log softmax(logits)[target]`` over counted tokens divided by
        their number (1 when none counts, giving 0). ``log_softmax`` subtracts the row maximum,
        so logits of +-1000 stay finite.
    """
    t, w, n = _counted(logits, targets, mask)
    return -jnp.sum(w * jnp.sum(t * log_softmax(logits, axis=-1), axis=-1)) / n


def cross_entropy_grad(logits: Array, targets: Array, mask: Array | None = None) -> Array:
    """``d cross_entropy / d logits = w * (softmax(logits) - onehot(targets)) / n``."""
    t, w, n = _counted(logits, targets, mask)
    return (softmax(logits, axis=-1) - t) * (w / n)[..., None]


def token_accuracy(logits: Array, targets: Array, mask: Array | None = None) -> Array:
    """Fraction of counted tokens whose arg-max logit is the target (first index on ties)."""
    _, w, n = _counted(logits, targets, mask)
    hit = jnp.argmax(logits, axis=-1) == targets
    return jnp.sum(w * hit.astype(logits.dtype)) / n


#: Softmax cross-entropy per token as a :class:`fnn.losses.Loss` for ``fit`` and
#: ``value_and_grad``: logits ``[batch, seq, classes]``, integer targets ``[batch, seq]``,
#: negative targets masked out. :func:`fnn.train.evaluate` averages it per example (each
#: example's mean over its counted tokens), which equals the token mean when every example
#: counts equally many tokens.
sequence_cross_entropy = Loss(
    "sequence_cross_entropy",
    cross_entropy,
    cross_entropy_grad,
    True,
    token_accuracy,
    _validate,
)
