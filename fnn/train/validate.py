"""Input checks of the trainer, all run before anything is compiled.

Every error names the argument, what was expected, what was given, and the fix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fnn import losses as _losses
from fnn.models import Model

#: How a step's gradient is computed: ``jax.value_and_grad`` or fnn's hand-written sweep.
GRADS = ("autodiff", "manual")
#: What :func:`fnn.train.fit` does with a non-finite loss or gradient.
ON_NONFINITE = ("raise", "skip")


def check_choice(name: str, value, choices: tuple) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")


def check_epochs(epochs) -> int:
    """``epochs`` as an int >= 0, or ``ValueError``."""
    if not isinstance(epochs, (int, np.integer)) or isinstance(epochs, bool) or epochs < 0:
        raise ValueError(f"epochs: expected an int >= 0, got {epochs!r}")
    return int(epochs)


def check_key(key, name: str = "key") -> None:
    """Raise ``TypeError`` unless ``key`` is a typed PRNG key or a raw uint32 ``[2]`` key."""
    ok = isinstance(key, jax.Array) and (
        jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
        or (key.dtype == jnp.uint32 and key.shape == (2,))
    )
    if not ok:
        raise TypeError(
            f"{name}: expected a JAX PRNG key such as jax.random.key(0), got "
            f"{type(key).__name__} {getattr(key, 'dtype', '')}".rstrip()
        )


def check_batch_size(value, n: int, name: str = "batch_size") -> int:
    """The examples per step: an int in ``[1, n]``; ``None`` or ``"full"`` mean ``n``."""
    if value is None or value == "full":
        return n
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{name}: expected an int, None or 'full', got {value!r}")
    if value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value}")
    if value > n:
        raise ValueError(
            f"{name}: {value} is larger than the dataset ({n} rows); use a batch size "
            f"<= {n}, or batch_size=None for full-batch gradient descent"
        )
    return int(value)


def nonfinite_rows(a) -> tuple[int, int]:
    """(number of rows holding NaN or inf, index of the first), on the host or the device."""
    xp = jnp if isinstance(a, jax.Array) else np
    bad = ~xp.all(xp.isfinite(a.reshape(a.shape[0], -1)), axis=1)
    count = int(bad.sum())
    return count, (int(xp.argmax(bad)) if count else -1)


def _unit_interval(y, name: str, what: str) -> None:
    xp = jnp if isinstance(y, jax.Array) else np
    lo, hi = float(xp.min(y)), float(xp.max(y))
    if not (0.0 <= lo and hi <= 1.0):  # NaN fails too
        raise ValueError(f"{name} y: {what} must lie in [0, 1], got values from {lo} to {hi}")


def _softmax_labels(model: Model, y, n: int, name: str):
    out = tuple(model.out_shape)
    classes = out[-1] if out else 1
    kind = y.dtype
    if jnp.issubdtype(kind, jnp.integer) and y.ndim == 1:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= classes:
            raise ValueError(
                f"{name} y: class labels must lie in 0..{classes - 1} (the model has "
                f"{classes} outputs), got values from {lo} to {hi}"
            )
        return y.astype(jnp.int32)
    if jnp.issubdtype(kind, jnp.floating) and y.shape == (n, classes):
        _unit_interval(y, name, "one-hot / probability targets")
        return y.astype(model.dtype)
    if jnp.issubdtype(kind, jnp.floating) and y.ndim == 1:
        raise TypeError(
            f"{name} y: softmax_cross_entropy takes integer class labels [n] or float "
            f"one-hot rows [n, {classes}], got float labels of shape {y.shape}; convert "
            f"them with y.astype(np.int32)"
        )
    raise TypeError(
        f"{name} y: softmax_cross_entropy takes integer class labels [{n}] or float one-hot "
        f"rows [{n}, {classes}], got {kind} of shape {y.shape}"
    )


def _binary_labels(model: Model, y, n: int, name: str):
    out = tuple(model.out_shape)
    if y.shape != (n, *out):
        hint = " (add the output axis: y[:, None])" if y.shape == (n,) and out == (1,) else ""
        raise ValueError(
            f"{name} y: binary_cross_entropy needs targets shaped like the model output "
            f"{(n, *out)}, got {y.shape}{hint}"
        )
    if not (jnp.issubdtype(y.dtype, jnp.number) or y.dtype == jnp.bool_):
        raise TypeError(f"{name} y: expected 0/1 targets, got dtype {y.dtype}")
    _unit_interval(y, name, "binary targets")
    return y.astype(model.dtype)


def _mse_targets(model: Model, y, n: int, name: str):
    out = tuple(model.out_shape)
    if not jnp.issubdtype(y.dtype, jnp.floating):
        raise TypeError(
            f"{name} y: mse needs float targets, got {y.dtype}; convert them with "
            f"y.astype(np.float32)"
        )
    if y.shape != (n, *out):
        raise ValueError(
            f"{name} y: mse needs targets shaped like the model output {(n, *out)}, got {y.shape}"
        )
    return y.astype(model.dtype)


# The built-in losses' target checks. TODO(issue 13): the loss record will carry its own
# check; until it does, this is the one table, keyed by the records' names.
_TARGET_CHECKS = {
    "softmax_cross_entropy": _softmax_labels,
    "binary_cross_entropy": _binary_labels,
    "mse": _mse_targets,
}


def check_labels(model: Model, loss, y, n: int, name: str):
    """Validate targets for ``loss``; returns them cast for the program.

    A loss record with a ``check_targets(model, y, n, name)`` field (issue 13) is asked
    first; the built-in losses are checked here otherwise; a custom loss validates its own
    targets when traced.
    """
    check = getattr(loss, "check_targets", None) or _TARGET_CHECKS.get(loss.name)
    return y if check is None else check(model, y, n, name)


def check_data(model: Model, loss, data, name: str):
    """Check ``(x, y)`` against the model and loss; return them cast (x to the model dtype)."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"{name}: expected a pair (x, y), got {type(data).__name__}")
    x, y = (a if isinstance(a, jax.Array) else np.asarray(a) for a in data)
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError(
            f"{name}: x and y need a leading example axis, got shapes {x.shape} and {y.shape}"
        )
    n = x.shape[0]
    if n == 0:
        raise ValueError(
            f"{name}: the dataset is empty (x has shape {x.shape}); pass at least one example"
        )
    if y.shape[0] != n:
        raise ValueError(
            f"{name}: x and y must have the same number of rows, got x {x.shape} "
            f"({n} rows) and y {y.shape} ({y.shape[0]} rows)"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{name} x: expected a floating dtype, got {x.dtype}; convert it with "
            f"x.astype(np.float32)"
        )
    if tuple(x.shape[1:]) != tuple(model.in_shape):
        raise ValueError(
            f"{name} x: expected shape [n, {', '.join(map(str, model.in_shape))}] "
            f"for this model, got {x.shape}"
        )
    for label, a in (("x", x), ("y", y)):
        if jnp.issubdtype(a.dtype, jnp.inexact):
            count, first = nonfinite_rows(a)
            if count:
                raise ValueError(
                    f"{name} {label}: {count} of {n} rows hold NaN or inf (the first is row "
                    f"{first}); remove or impute them before training"
                )
    return x.astype(model.dtype), check_labels(model, _losses.get(loss), y, n, name)
