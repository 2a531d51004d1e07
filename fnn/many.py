"""Many runs in one program: :func:`fit_many` trains K runs at once with ``jax.vmap``.

This module is the K-run namespace: :func:`fit_many` (the one training loop of
:mod:`fnn.train` over a vmapped epoch), :func:`max_runs` and :func:`available_memory` (memory
planning, :mod:`fnn.train.memory`), :func:`stack` and :func:`take` (:mod:`fnn.train.runs`,
which holds the vmap/chunk/shard programs).

A sweep over seeds or optimizer hyper-parameters is K independent trainings of the same
model on the same data shapes. Because the model, loss, optimizer and training state are pure
functions over pytrees, fnn stacks the K states along a leading axis and maps the compiled
epoch of :func:`fnn.train.make_epoch` over it: **one** ``lax.scan``-fused program per epoch
trains every run, and the host is touched once per epoch for all of them.

Run ``k`` is :func:`fnn.train.fit` with ``key=keys[k]``: it starts from the state ``fit``
builds (``model.init(keys[k])``, state key ``fnn.train.run_key(keys[k])``), its epoch order
is :func:`fnn.train.epoch_indices` of that state key, and its optimizer is
``optax.inject_hyperparams(factory)(**{name: hparams[name][k]})``. The injected values live
in the optimizer state, so one update function serves every run and a learning rate (or
``b1``, ``weight_decay``, ...) is just another stacked array.

Batches: ``shuffle="per_run"`` (default) gives each run its own order, the one ``fit`` would
use, so seeds differ in initialisation *and* data order, and each run is the run trained
alone. ``shuffle="shared"`` feeds every run the batches of run 0's key: a controlled
comparison where only the hyper-parameters (or the init) differ, and one gathered copy of
the epoch instead of K. Runs that share a key (a learning-rate sweep with one seed) get the
same order either way.

Equivalence with ``fit``, measured on CPU (XLA, jax 0.10): run ``k`` agrees with ``fit`` to
round-off (float64: relative difference ~1e-12 after an epoch). It is **bitwise** identical
wherever vmap leaves the arithmetic unchanged: the vmapped matmuls of per-run batches are
batched dots over the same per-run operands, and elementwise ops and reductions are computed
the same, so SGD, momentum and RMSprop sweeps with ``shuffle="per_run"`` reproduce ``fit``'s
float32 parameters bit for bit. Two things break bit-equality: (1) XLA's algebraic
simplifier rewrites a division by a broadcast scalar differently from a division by a
broadcast per-run vector (Adam's bias correction ``m / (1 - b1**t) / (sqrt(...) + eps)``
becomes ``m / ((1 - b1**t) * (...))`` alone and ``m * (1 / (1 - b1**t)) / (...)`` vmapped),
so Adam/AdamW sweeps differ in the last bit of some elements, then drift at round-off
level; (2) an input shared by all runs (``shuffle="shared"``) lets vmap fold the K weight
matrices into one wider matmul, whose sums are blocked differently. (A vmap over a single
run also compiled differently; fnn calls the unbatched epoch for a group of one instead.)

Speed (CPU, small MLP 64-128-128-10, batch 32; ``benchmarks/many_ratio.py``): XLA already
runs one small run's step near one core's matmul rate, so vmap saves the per-run host work
and some cache traffic, not arithmetic: 32 runs take ~0.5x the time of 32 ``fit`` calls on
one device and ~0.33x split over two (``devices=2``). Large sweeps are trained in groups
that fit the cache (``chunk``). On an accelerator, where a small run leaves the device idle,
one wide vmap is the point.

Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import fnn
    >>> from fnn import many
    >>> model = fnn.mlp([2, 8, 2], activation="tanh")
    >>> x = jax.random.normal(jax.random.key(1), (64, 2), jnp.float32)
    >>> y = (x[:, 0] * x[:, 1] > 0).astype(jnp.int32)
    >>> states, histories = many.fit_many(
    ...     model, "softmax_cross_entropy", optax.sgd, (x, y), epochs=2, batch_size=16,
    ...     seeds=[0, 1, 2], hparams={"learning_rate": [0.01, 0.1, 0.3]}, progress=False)
    >>> states.params[0]["w"].shape, len(histories), len(histories[2]["train_loss"])
    ((3, 2, 8), 3, 2)
"""

from fnn.train.memory import CHUNK_BYTES, MEMORY_FRACTION, available_memory, max_runs
from fnn.train.runs import EAGER_INIT_RUNS, RUNS_AXIS, SHUFFLES, stack, take
from fnn.train.trainer import fit_many

__all__ = [
    "fit_many",
    "max_runs",
    "available_memory",
    "stack",
    "take",
    "SHUFFLES",
    "MEMORY_FRACTION",
    "RUNS_AXIS",
    "EAGER_INIT_RUNS",
    "CHUNK_BYTES",
]
