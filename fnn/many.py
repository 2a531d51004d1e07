"""Many runs in one program: :func:`fit_many` trains K runs at once with ``jax.vmap``.

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

from __future__ import annotations

import collections
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fnn import losses as _losses
from fnn import optim as _optim
from fnn import parallel as _parallel
from fnn import train as _train

SHUFFLES = ("per_run", "shared")
#: The name of the mesh axis that ``devices=`` splits the runs over.
RUNS_AXIS = "runs"
#: Share of the available memory a sweep may plan to use: XLA's buffers, fragmentation and
#: the rest of the process need room beyond the estimate.
MEMORY_FRACTION = 0.8
#: On CPU, runs are trained in groups whose estimated footprint (:func:`max_runs`' per-run
#: bytes, ~1.6x the real figure) stays within this; measured best for a 32 MiB L3 cache.
CHUNK_BYTES = 24 * 2**20


# ------------------------------------------------------------------------------ stacking


def stack(trees):
    """Stack K pytrees of equal structure along a new leading axis (run axis)."""
    return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def take(tree, k: int):
    """Run ``k`` of a stacked pytree, e.g. its ``TrainState`` from :func:`fit_many`."""
    return jax.tree.map(lambda a: a[k], tree)


# ------------------------------------------------------------------------------ the runs


def _as_keys(keys, seeds):
    if keys is not None and seeds is not None:
        raise ValueError("keys, seeds: pass one of them, not both")
    if seeds is not None:
        seeds = [seeds] if isinstance(seeds, (int, np.integer)) else list(seeds)
        for i, s in enumerate(seeds):
            if not isinstance(s, (int, np.integer)) or isinstance(s, bool):
                raise TypeError(f"seeds[{i}]: expected an int, got {s!r}")
        return [jax.random.key(int(s)) for s in seeds]
    if keys is None:
        raise ValueError(
            "keys, seeds: pass K PRNG keys (keys=jax.random.split(key, K)) or K "
            "integer seeds (seeds=range(K))"
        )
    if isinstance(keys, jax.Array):
        typed = jnp.issubdtype(keys.dtype, jax.dtypes.prng_key)
        if (typed and keys.ndim == 1) or (not typed and keys.ndim == 2):
            keys = [keys[i] for i in range(keys.shape[0])]
        else:
            keys = [keys]
    keys = list(keys)
    for i, k in enumerate(keys):
        try:
            _train._check_key(k)
        except TypeError as err:
            raise TypeError(f"keys[{i}]: {str(err).split(': ', 1)[1]}") from None
    return keys


def _as_hparams(hparams) -> dict[str, list]:
    if hparams is None:
        return {}
    if not isinstance(hparams, dict) or not all(isinstance(k, str) for k in hparams):
        raise TypeError(
            f"hparams: expected a dict name -> K values, e.g. "
            f"{{'learning_rate': [1e-3, 1e-2]}}, got {type(hparams).__name__}"
        )
    out = {}
    for name, values in hparams.items():
        seq = list(values) if isinstance(values, (list, tuple, np.ndarray)) else [values]
        for i, v in enumerate(seq):
            if (
                callable(v)
                or isinstance(v, bool)
                or not isinstance(v, (int, float, np.integer, np.floating))
            ):
                raise TypeError(
                    f"hparams[{name!r}][{i}]: expected a number, got {type(v).__name__}; a "
                    f"schedule cannot differ between runs: build it inside the factory, e.g. "
                    f"lambda learning_rate: optax.adam(optax.cosine_decay_schedule("
                    f"learning_rate, steps))"
                )
        # Python numbers: inject_hyperparams keeps ints and floats in the state but would take
        # a NumPy scalar for a static setting, baked into run 0's update for every run.
        out[name] = [float(v) if isinstance(v, (float, np.floating)) else int(v) for v in seq]
    return out


def _runs(lists: dict) -> int:
    sizes = {name: len(v) for name, v in lists.items()}
    k = max(sizes.values())
    wrong = {n: s for n, s in sizes.items() if s not in (1, k)}
    if k < 1 or wrong:
        raise ValueError(
            f"runs: every list must hold K values or one (used by all runs); got lengths {sizes}"
        )
    return k


def _widen(seq, k):
    return seq * k if len(seq) == 1 else seq


# Representative optimizers for a factory: inject_hyperparams keeps numeric hyper-parameters
# in the state and its update reads them from there, so one object (cached, hence one
# compiled epoch) updates every run whatever its values.
_REPS: collections.OrderedDict = collections.OrderedDict()


def _optimizers(optimizer, hp: dict, k_runs: int):
    """(the optimizer the epoch program runs, the K optimizers the runs start from)."""
    if isinstance(optimizer, optax.GradientTransformation):
        if hp:
            raise TypeError(
                f"optimizer: hparams={sorted(hp)} need an optax factory such as optax.adam "
                f"(fnn calls optax.inject_hyperparams(factory)(**values) per run), got a "
                f"GradientTransformation"
            )
        return optimizer, [optimizer] * k_runs
    if not callable(optimizer):
        raise TypeError(
            f"optimizer: expected an optax GradientTransformation or a factory "
            f"such as optax.adam, got {type(optimizer).__name__}"
        )
    if not hp:
        raise TypeError(
            "optimizer: a factory needs hparams={name: K values}; pass a "
            "GradientTransformation (e.g. optax.adam(1e-3)) to use one for all runs"
        )
    wrapped = optax.inject_hyperparams(optimizer)
    try:
        runs = [wrapped(**{n: v[k] for n, v in hp.items()}) for k in range(k_runs)]
    except TypeError as err:
        raise TypeError(f"hparams: {sorted(hp)} do not fit the factory: {err}") from None
    # Floats and ints are stored with different dtypes; a list mixing them would stack badly.
    kinds = tuple(
        sorted((n, any(isinstance(x, (float, np.floating)) for x in v)) for n, v in hp.items())
    )
    key = (id(optimizer), kinds)
    if key not in _REPS:
        _REPS[key] = (optimizer, runs[0])
        while len(_REPS) > 32:
            _REPS.popitem(last=False)
    _REPS.move_to_end(key)
    return _REPS[key][1], runs


#: Up to this many runs start eagerly, one by one; more start from one compiled program.
EAGER_INIT_RUNS = 16


def _init_one(model, opt, key):
    # fit's start: parameters model.init(key), state key train.run_key(key).
    return _train.init_state(model.init(key), opt, _train.run_key(key))


def _leaves_equal(a, b) -> bool:
    def raw(x):
        return jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x

    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        u.dtype == v.dtype and bool(jnp.all(raw(u) == raw(v))) for u, v in zip(la, lb, strict=True)
    )


def _init_states(model, factory, rep, hp, optimizers, keys):
    """The K start states, each the one ``fit`` builds for a lone run, stacked.

    Few runs start exactly as ``fit`` starts one (eager, ~2 ms each once its ops are
    compiled, which ``fit`` shares). Beyond :data:`EAGER_INIT_RUNS` the eager starts would
    cost more than the epoch, so one compiled ``vmap`` of the same code starts them all;
    its run 0 is checked bit for bit against the eager start (else every run starts
    eagerly), so the compiled start never silently departs from ``fit``'s.
    """
    if len(keys) > EAGER_INIT_RUNS:
        states = _init_program(model, factory, rep, hp)(jnp.stack(keys))
        if _leaves_equal(take(states, 0), _init_one(model, optimizers[0], keys[0])):
            return states
    states = [_init_one(model, opt, key) for key, opt in zip(keys, optimizers, strict=True)]
    for i, st in enumerate(states):  # an int hparam next to a float one: say so, not a crash
        if jax.tree.structure(st) != jax.tree.structure(states[0]) or any(
            a.dtype != b.dtype
            for a, b in zip(jax.tree.leaves(st), jax.tree.leaves(states[0]), strict=True)
        ):
            raise TypeError(
                f"hparams: run {i}'s optimizer state differs in structure or dtype "
                f"from run 0's; give every run values of the same type (all floats "
                f"or all ints)"
            )
    return stack(states)


def _init_program(model, factory, rep, hp):
    """``keys [K] -> stacked start states`` as one compiled program (cached)."""
    dtype = jnp.result_type(*jax.tree.leaves(model.params_spec))
    # The values inject_hyperparams would store: floats in the parameters' dtype, ints int32.
    arrays = {
        n: jnp.asarray(v, dtype if any(isinstance(x, float) for x in v) else jnp.int32)
        for n, v in hp.items()
    }

    def build():
        def one(key, values):
            opt = optax.inject_hyperparams(factory)(**values) if values else rep
            return _init_one(model, opt, key)

        return jax.jit(jax.vmap(one))

    program = _train._cached(
        "many-init",
        (model, rep, factory),
        tuple(sorted((n, str(a.dtype)) for n, a in arrays.items())),
        build,
    )
    return lambda keys: program(keys, arrays)


# ------------------------------------------------------------------------------ programs


def _current_lr(opt_state):
    """The applied learning rate (innermost of nested inject_hyperparams states), or None."""
    return _optim.learning_rate(opt_state)


def _runs_sharding(mesh, axis):
    """Runs split over the mesh (leading axis) when ``axis == 0``; else replicated."""
    return NamedSharding(mesh, PartitionSpec(RUNS_AXIS) if axis == 0 else PartitionSpec())


def _vmap(fn, axes):
    """``jax.vmap(fn, in_axes=axes)``, except that a single run calls ``fn`` itself: XLA
    compiles a size-1 batch differently (measured: last-bit differences from ``fit``, which
    a vmap over 2+ runs does not show), while the unbatched call *is* ``fit``'s program."""
    vm = jax.vmap(fn, in_axes=axes)

    def run(*args):
        if jax.tree.leaves(args[0])[0].shape[0] != 1:
            return vm(*args)
        one = [
            jax.tree.map(lambda a: a[0], a) if ax == 0 else a
            for a, ax in zip(args, axes, strict=True)
        ]
        return jax.tree.map(lambda a: a[None], fn(*one))

    return run


def _chunked(fn, chunk, axes):
    """``fn`` over runs in groups of ``chunk`` (a ``lax.map`` over groups), or ``fn`` itself.

    A group trains its whole epoch before the next starts, so the working set (states,
    gathered batches, activations) is a group's, not all K runs': on CPU, once K runs
    overflow the last-level cache, groups of ~8 small-MLP runs ran 1.3-1.6x faster than one
    vmap over K = 64-128 (and the same at K = 32). Each run's arithmetic is unchanged.
    """
    if not chunk:
        return fn
    batched = [i for i, ax in enumerate(axes) if ax == 0]

    def run(*args):
        k = jax.tree.leaves(args[0])[0].shape[0]
        if chunk >= k or k % chunk:
            return fn(*args)

        def body(parts):
            full = list(args)
            for i, part in zip(batched, parts, strict=True):
                full[i] = part
            return fn(*full)

        groups = tuple(
            jax.tree.map(lambda a: a.reshape(k // chunk, chunk, *a.shape[1:]), args[i])
            for i in batched
        )
        out = jax.lax.map(body, groups)
        return jax.tree.map(lambda a: a.reshape(k, *a.shape[2:]), out)

    return run


def _epoch_program(model, loss, rep, mode, settings):
    grad, data_axis, idx_axis, mesh, chunk = settings
    epoch = _train.make_epoch(model, loss, rep, grad=grad, mode=mode)

    def one(state, x, y, idx):
        state, summary = epoch(state, x, y, idx)
        summary = {k: v for k, v in summary.items() if k != "lr"}
        lr = _current_lr(state.opt_state)
        if lr is not None:
            summary["lr"] = lr
        return state, summary

    axes = (0, data_axis, data_axis, idx_axis)
    program = _chunked(_vmap(one, axes), chunk, axes)
    if mesh is not None:
        # Runs are independent: each device trains its share of them (and groups its own
        # share), with no communication; every output has the run axis first.
        def spec(axis):
            return PartitionSpec(RUNS_AXIS) if axis == 0 else PartitionSpec()

        # check_vma=False: make_epoch's scan starts its sums from constants, which the
        # varying-axes check would want cast per device; nothing here crosses devices.
        program = jax.shard_map(
            program,
            mesh=mesh,
            in_specs=tuple(spec(a) for a in axes),
            out_specs=spec(0),
            check_vma=False,
        )
    return jax.jit(program, donate_argnums=(0,) if mode == "skip" else ())


def _auto_chunk(k_local: int, per_run: int, platform: str):
    """Runs per group on CPU: the largest divisor of the runs on a device whose estimated
    footprint stays within :data:`CHUNK_BYTES`; None (one vmap) when all fit, or off CPU,
    where one wide vmap keeps an accelerator busy."""
    if platform != "cpu" or k_local * per_run <= CHUNK_BYTES:
        return None
    return max(
        c
        for c in range(1, k_local + 1)
        if k_local % c == 0 and c * per_run <= max(CHUNK_BYTES, per_run)
    )


def _eval_program(model, loss, batch, data_axis, mesh):
    run = _train._build_eval(model, loss, batch, None)
    out = {} if mesh is None else {"out_shardings": _runs_sharding(mesh, 0)}
    return jax.jit(_vmap(run, (0, data_axis, data_axis)), **out)


def _mesh(devices, k_runs: int):
    if devices is None:
        return None
    devs = _parallel.resolve_devices(devices)
    if len(devs) == 1:
        return None
    if k_runs % len(devs):
        k = len(devs)
        raise ValueError(
            f"devices: {k_runs} runs do not split evenly over {k} devices; use a multiple of "
            f"{k} runs (e.g. {max(k, k_runs // k * k)} or {(k_runs // k + 1) * k}) or fewer "
            f"devices"
        )
    if jax.process_count() > 1:
        raise ValueError(
            "devices: fit_many splits runs over the devices of one process; "
            "run one sweep per process instead"
        )
    return Mesh(np.asarray(devs, dtype=object), (RUNS_AXIS,))


def _data(model, loss, data, name):
    """``((x, y), axis)``: a shared pair has axis None; a list of K pairs is stacked, axis 0."""
    per_run = (
        isinstance(data, list)
        and len(data) > 0
        and all(isinstance(d, tuple) and len(d) == 2 for d in data)
    )
    if not per_run:
        return _train._check_data(model, loss, data, name), None
    pairs = [_train._check_data(model, loss, d, f"{name}[{i}]") for i, d in enumerate(data)]
    first = (pairs[0][0].shape, pairs[0][1].shape)
    for i, (x, y) in enumerate(pairs):
        if (x.shape, y.shape) != first:
            raise ValueError(
                f"{name}[{i}]: every run's data must have the same shapes, got x "
                f"{x.shape}, y {y.shape} against {first[0]}, {first[1]} for run 0"
            )
    xp = jnp if any(isinstance(a, jax.Array) for p in pairs for a in p) else np
    return (xp.stack([p[0] for p in pairs]), xp.stack([p[1] for p in pairs])), 0


# ------------------------------------------------------------------------------ memory


def _nbytes(tree) -> int:
    total = 0
    for a in jax.tree.leaves(tree):
        size = 8 if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else np.dtype(a.dtype).itemsize
        total += int(np.prod(a.shape, dtype=np.int64)) * size
    return total


def _footprint(model, optimizer, b, n, *, shuffle, per_run_data, eval_n, eval_batch, y_row: int):
    """Cached :func:`_bytes` (it traces shapes: a few ms per call otherwise)."""
    settings = (b, n, shuffle, per_run_data, eval_n, eval_batch, y_row)
    return _train._cached(
        "many-bytes",
        (model, optimizer),
        settings,
        lambda: _bytes(
            model,
            optimizer,
            b,
            n,
            shuffle=shuffle,
            per_run_data=per_run_data,
            eval_n=eval_n,
            eval_batch=eval_batch,
            y_row=y_row,
        ),
    )


def _bytes(model, optimizer, b, n, *, shuffle, per_run_data, eval_n, eval_batch, y_row: int):
    """``(shared, per_run)`` bytes of a sweep, an upper estimate of XLA's buffers.

    Per run: the state three times (the start of the epoch, kept for a replay after a fault;
    the scan carry; the result), gradients and updates, the activations of a step three times
    (forward tape, cotangents, temporaries), and with per-run shuffles the gathered epoch
    twice (the gather and its scan-major copy) plus the index table. Measured against
    ``compiled.memory_analysis()`` on CPU it is 1.3-1.6x the real figure for MLPs of 25k to
    0.7M parameters (2.7x for a tiny 3-16-3 one).
    """
    params = model.params_spec
    p = _nbytes(params)
    state = p + _nbytes(jax.eval_shape(optimizer.init, params)) + 16
    x1 = jax.ShapeDtypeStruct((1, *model.in_shape), model.dtype)
    tape = jax.eval_shape(lambda q, x: model.layer.forward(q, x)[1], params, x1)
    act = _nbytes(tape)
    row = _nbytes(x1) + y_row
    steps = n // b
    epoch_data = 2 * steps * b * row + steps * b * 4
    per_run = 3 * state + 2 * p + 3 * b * act + eval_batch * act
    shared = 0
    data = (n + eval_n) * row
    if per_run_data:
        per_run += data
    else:
        shared += data
    if shuffle == "per_run":
        per_run += epoch_data
    else:
        shared += epoch_data
    return shared, per_run


def available_memory(device=None) -> int:
    """Bytes free for a sweep: the accelerator's free memory, or the host's available memory
    (``MemAvailable`` of ``/proc/meminfo``, else ``sysconf``) for a CPU device."""
    device = device or jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def max_runs(
    model,
    optimizer,
    batch_size: int,
    *,
    n: int,
    hparams=None,
    shuffle: str = "per_run",
    per_run_data: bool = False,
    eval_n: int = 0,
    eval_batch_size: int | None = None,
    y_row: int = 4,
    memory: int | None = None,
    device=None,
) -> int:
    """How many runs of a sweep fit in memory at once (0 if not even one does).

    Args:
        model: the :class:`fnn.models.Model`.
        optimizer: a GradientTransformation, or a factory with ``hparams`` (as for
            :func:`fit_many`; only the first value of each is used).
        batch_size: examples per step; n: training examples; eval_n: evaluation examples.
        shuffle, per_run_data: as for :func:`fit_many` (per-run data and per-run shuffles
            cost memory per run, shared ones once).
        y_row: bytes of one target row (4 for int32 labels).
        memory: the budget in bytes (default: :data:`MEMORY_FRACTION` of
            :func:`available_memory` of ``device``).
    """
    hp = {k: v[:1] for k, v in _as_hparams(hparams).items()}
    rep, _ = _optimizers(optimizer, hp, 1)
    b = int(batch_size)
    eb = min(eval_batch_size or max(b, 256), eval_n) if eval_n else 0
    shared, per_run = _footprint(
        model,
        rep,
        b,
        n,
        shuffle=shuffle,
        per_run_data=per_run_data,
        eval_n=eval_n,
        eval_batch=eb,
        y_row=y_row,
    )
    budget = memory if memory is not None else int(MEMORY_FRACTION * available_memory(device))
    return max(0, (budget - shared) // per_run)


def _check_memory(k, shared, per_run, memory):
    budget = memory if memory is not None else int(MEMORY_FRACTION * available_memory())
    need = shared + k * per_run
    if need <= budget:
        return
    fit = max(0, (budget - shared) // per_run)
    mib = 2.0**20
    advice = (
        f"run at most {fit} at once (fnn.many.max_runs), e.g. split the sweep into chunks of {fit}"
        if fit
        else "not even one run fits: use a smaller batch size or model"
    )
    raise ValueError(
        f"runs: a sweep of K={k} runs needs about {need / mib:.1f} MiB ({per_run / mib:.2f} "
        f"MiB per run + {shared / mib:.2f} MiB shared) but the budget is {budget / mib:.1f} "
        f"MiB; {advice}"
    )


# ------------------------------------------------------------------------------ training


def fit_many(
    model,
    loss,
    optimizer,
    data,
    *,
    epochs: int,
    batch_size,
    keys=None,
    seeds=None,
    hparams=None,
    eval_data=None,
    grad: str = "autodiff",
    shuffle: str = "per_run",
    on_nonfinite: str = "raise",
    devices=None,
    chunk: int | None = None,
    progress: bool = True,
    callback=None,
    eval_batch_size: int | None = None,
    memory: int | None = None,
):
    """Train K runs at once: one vmapped, scan-fused program per epoch for all of them.

    Args:
        model, loss, grad, epochs, batch_size, eval_batch_size: as for
            :func:`fnn.train.fit` (the same for every run).
        optimizer: an optax ``GradientTransformation`` shared by all runs, or a factory
            (``optax.adam``, or any ``f(**hparams) -> GradientTransformation``) that run ``k``
            calls as ``optax.inject_hyperparams(f)(**{name: hparams[name][k]})``.
        data: ``(x, y)`` shared by all runs, or a list of K ``(x, y)`` tuples of equal shapes
            (one dataset per run, e.g. a different split per seed); checked like ``fit``'s.
        keys: K PRNG keys (``jax.random.split(key, K)`` or a list); run ``k`` derives its
            init and run keys from ``keys[k]`` exactly as ``fit(key=keys[k])`` does.
        seeds: instead of ``keys``, K ints: ``keys[k] = jax.random.key(seeds[k])``.
        hparams: ``{name: K values}`` of numeric hyper-parameters of the factory, e.g.
            ``{"learning_rate": [1e-3, 3e-3, 1e-2]}``. Any list (``keys`` too) may hold one
            value, used by every run.
        eval_data: ``(x, y)`` or a list of K pairs, evaluated per run after every epoch.
        shuffle: ``"per_run"``: run ``k`` sees ``fit``'s order for its key; ``"shared"``:
            every run sees run 0's order (one gathered epoch instead of K).
        on_nonfinite: ``"raise"``: a non-finite loss or gradient in any run stops the sweep
            with :class:`fnn.train.NonFiniteError` (``.runs`` lists the faulty runs,
            ``.state`` holds every run's last finite state); ``"skip"``: such steps leave
            that run's state unchanged, as in ``fit``.
        devices: ``None`` (the default device), an int, ``"all"`` or a device list: the
            runs are split evenly over a one-axis mesh (``"runs"``), each device training
            its share with no communication; K must be a multiple of the device count. On a
            CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` makes N devices, one
            core each: the way to use several cores for a sweep of small models.
        chunk: runs trained together per group: ``None`` chooses (on CPU, groups whose
            footprint fits :data:`CHUNK_BYTES`, so that large sweeps stay in cache; one vmap
            over all runs elsewhere), ``0`` forces one vmap, an int sets it (a divisor of the
            runs per device; otherwise one vmap). The parameters do not depend on it.
        progress: a rich progress bar with the runs' mean metrics.
        callback: ``callback(epoch, states, histories)`` after each epoch; ``True`` stops.
            In ``"skip"`` mode ``states`` is donated to the next epoch: copy what you keep.
        memory: bytes the sweep may use (per device); default :data:`MEMORY_FRACTION` of
            :func:`available_memory`. Checked before anything is allocated.

    Returns:
        ``(states, histories)``: ``states`` a :class:`fnn.train.TrainState` whose leaves
        have a leading run axis ``[K, ...]`` (:func:`take` gives run ``k``); ``histories``
        a list of K dicts with ``fit``'s keys (``seconds``: the whole sweep's epoch time).

    Raises:
        ValueError, TypeError: bad data, settings, keys or hparams, or a sweep too large for
            ``memory`` (the message says how many runs fit), before any compilation.
        fnn.train.NonFiniteError: see ``on_nonfinite``.
    """
    loss = _losses.get(loss)
    if not isinstance(epochs, (int, np.integer)) or isinstance(epochs, bool) or epochs < 0:
        raise ValueError(f"epochs: expected an int >= 0, got {epochs!r}")
    if grad not in _train.GRADS:
        raise ValueError(f"grad: expected one of {_train.GRADS}, got {grad!r}")
    if shuffle not in SHUFFLES:
        raise ValueError(f"shuffle: expected one of {SHUFFLES}, got {shuffle!r}")
    if on_nonfinite not in _train.ON_NONFINITE:
        raise ValueError(
            f"on_nonfinite: expected one of {_train.ON_NONFINITE}, got {on_nonfinite!r}"
        )
    keys, hp = _as_keys(keys, seeds), _as_hparams(hparams)
    (x, y), data_axis = _data(model, loss, data, "data")
    lists = {"keys": keys, **{f"hparams[{n!r}]": v for n, v in hp.items()}}
    if data_axis == 0:
        lists["data"] = list(range(x.shape[0]))
    k_runs = _runs(lists)
    keys, hp = _widen(keys, k_runs), {n: _widen(v, k_runs) for n, v in hp.items()}
    if data_axis == 0 and x.shape[0] != k_runs:  # one dataset given as a list: share it
        (x, y), data_axis = (x[0], y[0]), None
    n = x.shape[0 if data_axis is None else 1]
    b = _train._batch_size(batch_size, n, "batch_size")
    ex = ey = None
    eval_axis, eval_n, eb = None, 0, 0
    if eval_data is not None:
        (ex, ey), eval_axis = _data(model, loss, eval_data, "eval_data")
        eval_n = ex.shape[0 if eval_axis is None else 1]
        eb = min(eval_batch_size or max(b, 256), eval_n)
    rep, optimizers = _optimizers(optimizer, hp, k_runs)
    y_row = (
        int(np.prod(y.shape[1 if data_axis is None else 2 :], dtype=np.int64)) * y.dtype.itemsize
    )
    shared, per_run = _footprint(
        model,
        rep,
        b,
        n,
        shuffle=shuffle,
        per_run_data=data_axis == 0 or eval_axis == 0,
        eval_n=eval_n,
        eval_batch=eb,
        y_row=y_row,
    )
    mesh = _mesh(devices, k_runs)
    _check_memory(k_runs // (1 if mesh is None else mesh.size), shared, per_run, memory)

    def place(a, axis):
        return jax.device_put(a) if mesh is None else jax.device_put(a, _runs_sharding(mesh, axis))

    mode = "fast" if on_nonfinite == "raise" else "skip"
    idx_axis = 0 if shuffle == "per_run" else None
    k_local = k_runs // (1 if mesh is None else mesh.size)
    if chunk is None:
        platform = (jax.devices()[0] if mesh is None else mesh.devices.flat[0]).platform
        chunk = _auto_chunk(k_local, per_run, platform)
    elif not isinstance(chunk, (int, np.integer)) or isinstance(chunk, bool) or chunk < 0:
        raise ValueError(
            f"chunk: expected None (automatic), 0 (one vmap) or a positive int, got {chunk!r}"
        )
    settings = (grad, data_axis, idx_axis, mesh, int(chunk or 0) or None)
    epoch_fn = _train._cached(
        "many-epoch",
        (model, loss, rep),
        (mode, *settings),
        lambda: _epoch_program(model, loss, rep, mode, settings),
    )
    if eval_data is not None:
        eval_fn = _train._cached(
            "many-eval",
            (model, loss),
            (eb, eval_axis, mesh),
            lambda: _eval_program(model, loss, eb, eval_axis, mesh),
        )
        ex, ey = place(ex, eval_axis), place(ey, eval_axis)
    states = place(_init_states(model, optimizer, rep, hp, optimizers, keys), 0)
    x, y = place(x, data_axis), place(y, data_axis)
    raw = np.asarray(
        jax.random.key_data(states.key)
        if jnp.issubdtype(states.key.dtype, jax.dtypes.prng_key)
        else states.key
    ).astype(np.uint32)
    words = [[int(w) for w in raw[k].ravel()] for k in range(k_runs)]
    steps = n // b

    def tables(e):
        if shuffle == "shared":
            return place(_train.epoch_indices(words[0], e, n, b), None)
        memo = {}  # runs sharing a key (an lr sweep of one seed) share the permutation
        for w in words:
            if tuple(w) not in memo:
                memo[tuple(w)] = _train.epoch_indices(w, e, n, b)
        return place(np.stack([memo[tuple(w)] for w in words]), 0)

    histories: list[dict] = [{} for _ in range(k_runs)]
    bar = _train._Bar(progress, epochs, 0)
    try:
        idx = tables(0) if epochs else None
        for e in range(epochs):
            t0 = time.perf_counter()
            start, idx_e = states, idx
            states, summary = epoch_fn(start, x, y, idx_e)
            if e + 1 < epochs:  # the host shuffles the next epoch while the device trains
                idx = tables(e + 1)
            evals = eval_fn(states.params, ex, ey) if eval_data is not None else {}
            summary, evals = jax.device_get(jax.block_until_ready((summary, evals)))
            if mode == "fast":
                bad = (np.asarray(summary["first_bad"]) >= 0) | ~np.asarray(summary["finite"])
                if bad.any():
                    _raise_nonfinite(
                        model, loss, rep, settings, start, x, y, idx_e, e, steps, bad, hp, histories
                    )
            seconds = time.perf_counter() - t0
            for k, hist in enumerate(histories):
                row = {"train_loss": summary["loss"][k]}
                if "accuracy" in summary:
                    row["train_accuracy"] = summary["accuracy"][k]
                row.update({f"eval_{m}": v[k] for m, v in evals.items()})
                if "lr" in summary:
                    row["lr"] = summary["lr"][k]
                row["seconds"] = seconds
                if mode == "skip":
                    row["skipped"] = int(summary["skipped"][k])
                for m, v in row.items():
                    hist.setdefault(m, []).append(v if isinstance(v, int) else float(v))
            if progress:
                bar.update(_fmt(histories))
            if callback is not None and callback(e, states, histories):
                break
    finally:
        bar.close()
    return states, histories


def _fmt(histories) -> str:
    def mean(key):  # over the runs whose value is finite (a skipped-out run gives NaN)
        vals = [h[key][-1] for h in histories if np.isfinite(h[key][-1])]
        return float(np.mean(vals)) if vals else float("nan")

    names = {"train_loss": "loss", "train_accuracy": "acc", "eval_accuracy": "eval acc"}
    parts = [f"{len(histories)} runs"] + [
        f"mean {short} {mean(k):.4g}" for k, short in names.items() if k in histories[0]
    ]
    return "  ".join(parts)


def _raise_nonfinite(
    model, loss, rep, settings, start, x, y, idx, epoch, steps, bad, hp, histories
):
    """Replay the faulty epoch with a per-step guard and raise naming the faulty runs."""
    replay = _train._cached(
        "many-epoch",
        (model, loss, rep),
        ("replay", *settings),
        lambda: _epoch_program(model, loss, rep, "replay", settings),
    )
    kept, summary = replay(start, x, y, idx)
    first, code = (np.asarray(v) for v in jax.device_get((summary["first_bad"], summary["what"])))
    runs = [int(k) for k in np.flatnonzero(bad)]
    k0 = min(runs, key=lambda k: first[k] if first[k] >= 0 else steps)
    i = max(int(first[k0]), 0)
    what = {1: "loss", 2: "gradients", 3: "parameters"}.get(int(code[k0]), "parameters")
    names = "; ".join(f"run {k}" + "".join(f", {n}={v[k]}" for n, v in hp.items()) for k in runs)
    err = _train.NonFiniteError(
        f"non-finite {what} in {len(runs)} of {len(bad)} runs ({names}) at epoch {epoch}, "
        f"first at step {i} of {steps} (run {k0}); the sweep stopped. The exception's .state "
        f"holds every run's last finite state and .runs the faulty runs; drop them, lower "
        f"their learning rate, or use on_nonfinite='skip'",
        state=kept,
        history=histories,
        epoch=epoch,
        step=i,
        global_step=epoch * steps + i,
        what=what,
    )
    err.runs = runs
    raise err


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
