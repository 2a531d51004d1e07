"""Training: a jit-compiled step, scan-fused epochs on the device, one host loop for one run
and for K vmapped runs, batched evaluation.

* :func:`make_step` compiles one optimizer step ``step(state, x, y) -> (state, metrics)``
  that donates the state's buffers (:mod:`fnn.train.step`).
* :func:`fit` trains for whole epochs. An epoch is **one** compiled program
  (:mod:`fnn.train.epoch`): the shuffled minibatches are gathered from the dataset held on
  the device and a ``lax.scan`` runs the step over them; the host is touched once per epoch
  to read the epoch's metrics (:mod:`fnn.train.loop`). Compiled epochs are ``jax.jit``'s:
  keyed by the records' values, so later epochs and later calls of :func:`fit` with equal
  records and shapes do not recompile.
* :func:`fit_many` trains K runs at once with the same loop over a vmapped epoch
  (:mod:`fnn.train.runs`), planning memory first (:mod:`fnn.train.memory`).
* :func:`evaluate` computes the mean loss and accuracy in batches, exactly (a padded last
  batch is masked).

Randomness is derived from ``TrainState.key``: dropout at step ``s`` uses
``jax.random.fold_in(key, s)``; the order of epoch ``e`` is a NumPy permutation seeded by the
key's data and ``e`` (:func:`epoch_indices`). Same key, same device count: bitwise the same
parameters, and a run resumed from an end-of-epoch state continues exactly.

Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import fnn
    >>> from fnn import train
    >>> model = fnn.mlp([2, 8, 2], activation="tanh")
    >>> x = jax.random.normal(jax.random.key(1), (64, 2), jnp.float32)
    >>> y = (x[:, 0] * x[:, 1] > 0).astype(jnp.int32)
    >>> state, history = train.fit(model, "softmax_cross_entropy", optax.adam(0.05), (x, y),
    ...                            epochs=3, batch_size=16, key=jax.random.key(0),
    ...                            progress=False)
    >>> int(state.step), len(history["train_loss"])
    (12, 3)
"""

from fnn.train.epoch import epoch_indices, guard_kind, make_epoch, make_eval, run_key
from fnn.train.step import METRICS, NonFiniteError, TrainState, init_state, make_step
from fnn.train.trainer import evaluate, fit, fit_many
from fnn.train.validate import GRADS, ON_NONFINITE

__all__ = [
    "GRADS",
    "METRICS",
    "ON_NONFINITE",
    "NonFiniteError",
    "TrainState",
    "epoch_indices",
    "evaluate",
    "fit",
    "fit_many",
    "guard_kind",
    "init_state",
    "make_epoch",
    "make_eval",
    "make_step",
    "run_key",
]
