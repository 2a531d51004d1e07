"""The K-run case: stacked states, K-run settings, and the vmap/chunk/shard programs.

K independent runs of one model are K states stacked along a leading run axis; the one-run
epoch of :mod:`fnn.train.epoch` is mapped over it with ``jax.vmap``, in groups
(``lax.map`` over chunks) that keep a large sweep in cache, and split over a ``"runs"`` mesh
with ``jax.shard_map``. Run ``k`` starts from the state :func:`fnn.train.fit` builds for
``key=keys[k]``; its optimizer is ``optax.inject_hyperparams(factory)(**hparams[k])``, whose
values live in the state, so one update function (an :class:`Injected`) serves every run.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from fnn import parallel as _parallel
from fnn.train.epoch import EpochSpec, Static, epoch_program, eval_program, run_key
from fnn.train.step import init_state
from fnn.train.validate import check_key

SHUFFLES = ("per_run", "shared")
#: The name of the mesh axis that ``devices=`` splits the runs over.
RUNS_AXIS = "runs"
#: Up to this many runs start eagerly, one by one; more start from one compiled program.
EAGER_INIT_RUNS = 16


def stack(trees):
    """Stack K pytrees of equal structure along a new leading axis (run axis)."""
    return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def take(tree, k: int):
    """Run ``k`` of a stacked pytree, e.g. its ``TrainState`` from :func:`fnn.train.fit_many`."""
    return jax.tree.map(lambda a: a[k], tree)


# ------------------------------------------------------------------------------ settings


def as_keys(keys, seeds) -> list:
    """The runs' PRNG keys from ``keys`` (K keys) or ``seeds`` (K ints), checked."""
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
        check_key(k, f"keys[{i}]")
    return keys


def as_hparams(hparams) -> dict[str, list]:
    """``{name: [values]}`` of numeric hyper-parameters, as Python ints and floats."""
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


def count_runs(lists: dict) -> int:
    """K, the length every list shares (a list of one is used by all runs)."""
    sizes = {name: len(v) for name, v in lists.items()}
    k = max(sizes.values())
    wrong = {n: s for n, s in sizes.items() if s not in (1, k)}
    if k < 1 or wrong:
        raise ValueError(
            f"runs: every list must hold K values or one (used by all runs); got lengths {sizes}"
        )
    return k


def widen(seq, k: int) -> list:
    """``seq`` of K values, or its one value repeated K times."""
    return seq * k if len(seq) == 1 else seq


class Injected(NamedTuple):
    """The update every run of a hyper-parameter sweep shares, as a hashable value.

    ``optax.inject_hyperparams(factory)`` keeps numeric hyper-parameters in the optimizer
    state and its update reads them from there, so the update does not depend on the
    values: two sweeps over the same factory and value types compile one epoch.

    Attributes:
        factory: ``f(**hparams) -> GradientTransformation``, e.g. ``optax.adam``.
        kinds: ``((name, is_float), ...)`` sorted by name.
    """

    factory: Any
    kinds: tuple

    def transform(self, values: dict | None = None) -> optax.GradientTransformation:
        values = values or {n: 1.0 if f else 1 for n, f in self.kinds}  # read from the state
        return optax.inject_hyperparams(self.factory)(**values)

    def init(self, params):
        return self.transform().init(params)

    def update(self, updates, state, params=None):
        return self.transform().update(updates, state, params)


def optimizers(optimizer, hp: dict, k_runs: int):
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
    # Floats and ints are stored with different dtypes; a list mixing them would stack badly.
    kinds = tuple(
        sorted((n, any(isinstance(x, (float, np.floating)) for x in v)) for n, v in hp.items())
    )
    rep = Injected(optimizer, kinds)
    try:
        runs = [rep.transform({n: v[k] for n, v in hp.items()}) for k in range(k_runs)]
    except TypeError as err:
        raise TypeError(f"hparams: {sorted(hp)} do not fit the factory: {err}") from None
    return rep, runs


def runs_mesh(devices, k_runs: int):
    """A one-axis ``"runs"`` mesh over ``devices`` (``None`` for one device)."""
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
    return _parallel.make_mesh(devs, axis=RUNS_AXIS)


def runs_sharding(mesh, axis):
    """Runs split over the mesh (leading axis) when ``axis == 0``; else replicated."""
    return NamedSharding(mesh, PartitionSpec(RUNS_AXIS) if axis == 0 else PartitionSpec())


def placer(mesh):
    """``place(a, axis)``: onto the device, or split over the runs mesh (axis 0: per run,
    ``None``: replicated)."""
    if mesh is None:
        return lambda a, axis: jax.device_put(a)
    return lambda a, axis: jax.device_put(a, runs_sharding(mesh, axis))


# ------------------------------------------------------------------------------ start states


def init_one(model, opt, key):
    """Run ``key``'s start, :func:`fnn.train.fit`'s: ``model.init(key)``, key ``run_key(key)``."""
    return init_state(model.init(key), opt, run_key(key), model.init_state())


def leaves_equal(a, b) -> bool:
    """Equal structure, dtypes and bits (PRNG keys by their data)."""

    def raw(x):
        return jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x

    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        u.dtype == v.dtype and bool(jnp.all(raw(u) == raw(v))) for u, v in zip(la, lb, strict=True)
    )


def init_states(model, rep, hp, optimizers, keys):
    """The K start states, each the one ``fit`` builds for a lone run, stacked.

    Few runs start exactly as ``fit`` starts one (eager, ~2 ms each once its ops are
    compiled, which ``fit`` shares). Beyond :data:`EAGER_INIT_RUNS` the eager starts would
    cost more than the epoch, so one compiled ``vmap`` of the same code starts them all; its
    run 0 is
    checked bit for bit against the eager start (else every run starts eagerly), so the
    compiled start never silently departs from ``fit``'s.
    """
    if len(keys) > EAGER_INIT_RUNS:
        states = init_program(model, rep, hp)(jnp.stack(keys))
        if leaves_equal(take(states, 0), init_one(model, optimizers[0], keys[0])):
            return states
    states = [init_one(model, opt, key) for key, opt in zip(keys, optimizers, strict=True)]
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


@functools.partial(jax.jit, static_argnums=0)
def _init_many(records: Static, keys, values):
    model, rep = records.fields

    def one(key, vals):
        opt = rep.transform(vals) if isinstance(rep, Injected) else rep
        return init_one(model, opt, key)

    return jax.vmap(one)(keys, values)


def init_program(model, rep, hp):
    """``keys [K] -> stacked start states`` as one compiled program."""
    dtype = jnp.result_type(*jax.tree.leaves(model.params_spec))
    # The values inject_hyperparams would store: floats in the parameters' dtype, ints int32.
    arrays = {
        n: jnp.asarray(v, dtype if any(isinstance(x, float) for x in v) else jnp.int32)
        for n, v in hp.items()
    }
    return functools.partial(_init_many, Static((model, rep)), values=arrays)


# ------------------------------------------------------------------------------ programs


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


def _sharded(program, mesh, axes):
    if mesh is None:
        return program

    # Runs are independent: each device trains its share of them (and groups its own
    # share), with no communication; every output has the run axis first.
    def spec(axis):
        return PartitionSpec(RUNS_AXIS) if axis == 0 else PartitionSpec()

    # check_vma=False: the epoch's scan starts its sums from constants, which the
    # varying-axes check would want cast per device; nothing here crosses devices.
    return jax.shard_map(
        program,
        mesh=mesh,
        in_specs=tuple(spec(a) for a in axes),
        out_specs=spec(0),
        check_vma=False,
    )


class RunsSpec(NamedTuple):
    """How K runs are laid out: data axis (None shared, 0 per run), index-table axis,
    ``"runs"`` mesh or None, runs per group (None: one vmap)."""

    data_axis: Any
    idx_axis: Any
    mesh: Any
    chunk: Any


def _many_epoch(spec: EpochSpec, layout: RunsSpec, states, x, y, idx):
    axes = (0, layout.data_axis, layout.data_axis, layout.idx_axis)
    program = _chunked(_vmap(epoch_program(spec), axes), layout.chunk, axes)
    return _sharded(program, layout.mesh, axes)(states, x, y, idx)


_MANY_KEEP = jax.jit(_many_epoch, static_argnums=(0, 1))
_MANY_DONATE = jax.jit(_many_epoch, static_argnums=(0, 1), donate_argnums=2)


def make_many_epoch(spec: EpochSpec, layout: RunsSpec):
    """``epoch(states, x, y, idx) -> (states, summaries)`` for K stacked runs, compiled
    (``jax.jit``'s cache, keyed by value); each summary entry has a leading run axis."""
    program = _MANY_DONATE if spec.mode == "skip" else _MANY_KEEP
    return functools.partial(program, spec, layout)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _many_eval(records: Static, settings: tuple, params, model_state, x, y):
    model, loss = records.fields
    batch, data_axis, mesh = settings
    run = _vmap(eval_program(model, loss, batch, None), (0, 0, data_axis, data_axis))
    out = run(params, model_state, x, y)
    if mesh is None:
        return out
    return jax.lax.with_sharding_constraint(out, runs_sharding(mesh, 0))


def make_many_eval(model, loss, batch: int, data_axis, mesh):
    """``evaluate(params, model_state, x, y)`` for K stacked runs: each entry ``[K]``."""
    return functools.partial(_many_eval, Static((model, loss)), (batch, data_axis, mesh))
