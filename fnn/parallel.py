"""Device meshes and batch sharding for data-parallel training.

fnn scales with ``jax.sharding`` rather than beside it: a one-axis :class:`jax.sharding.Mesh`
whose axis is named ``"batch"``, the examples of every minibatch split over it, and the
parameters (and optimizer state) replicated. XLA's partitioner inserts the cross-device sum
of the gradients; fnn writes no collectives.

The same holds over several processes (hosts): :func:`initialize` starts JAX's multi-process
runtime (``jax.distributed``), ``jax.devices()`` then lists every process's devices, and the
mesh spans them all. Each process holds the whole dataset and builds the same shuffled index
table (it comes from the shared key); :func:`put_sharded` hands JAX only this process's
columns of it (``jax.make_array_from_process_local_data``), so each process gathers just its
share of every global minibatch. Only process 0 writes files (:func:`is_main`,
:func:`main_only`).

Example:
    >>> from fnn import parallel
    >>> mesh = parallel.make_mesh(1)
    >>> mesh.axis_names, mesh.size
    (('batch',), 1)
    >>> tuple(parallel.batch_sharding(mesh).spec)
    ('batch',)
"""

from __future__ import annotations

import functools
import ipaddress
import os
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

#: The name of the one mesh axis; minibatches are split along it.
BATCH_AXIS = "batch"


def resolve_devices(devices=None) -> list:
    """The device list named by ``devices``.

    Args:
        devices: ``None`` or ``1`` (the default device), an int ``N`` (the first ``N`` devices
            of ``jax.devices()``), ``"all"`` (every device), or a sequence of
            :class:`jax.Device`.

    Raises:
        ValueError: for a count below 1 or above the number of devices, or an unknown string.
        TypeError: for anything else.
    """
    available = jax.devices()
    if devices is None:
        return available[:1]
    if isinstance(devices, str):
        if devices != "all":
            raise ValueError(
                f"devices: expected an int, 'all' or a list of devices, got {devices!r}"
            )
        return list(available)
    if isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        if not 1 <= int(devices) <= len(available):
            raise ValueError(
                f"devices: expected 1..{len(available)} (the devices JAX sees: "
                f"{available[0].platform} x {len(available)}), got {devices}; on CPU set "
                f"XLA_FLAGS=--xla_force_host_platform_device_count=N before importing jax"
            )
        return available[: int(devices)]
    if (
        isinstance(devices, Sequence)
        and devices
        and all(isinstance(d, jax.Device) for d in devices)
    ):
        return list(devices)
    raise TypeError(
        f"devices: expected None, an int, 'all' or a list of jax.Device, got "
        f"{type(devices).__name__}"
    )


def make_mesh(devices=None, axis: str = BATCH_AXIS) -> Mesh:
    """A one-axis mesh named ``axis`` over ``devices`` (see :func:`resolve_devices`).

    fnn's two meshes are both built here: ``"batch"`` (:data:`BATCH_AXIS`, data-parallel
    training) and ``"runs"`` (:func:`fnn.train.fit_many` splitting a sweep's runs).

    In a multi-process job the devices are global (``jax.devices()`` lists every process's)
    and every process must own at least one of them: a process without a device in the mesh
    could not feed its share of the batch.
    """
    devs = resolve_devices(devices)
    if jax.process_count() > 1:
        owners = {d.process_index for d in devs}
        absent = sorted(set(range(jax.process_count())) - owners)
        if absent:
            raise ValueError(
                f"devices: the mesh's {len(devs)} devices leave out process(es) {absent} of "
                f"this {jax.process_count()}-process job; use devices='all' (or a count of at "
                f"least {len(jax.devices()) - len(jax.local_devices()) + 1}) so that every "
                f"process trains"
            )
    return Mesh(np.asarray(devs, dtype=object), (axis,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimizer state, the dataset)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, axis: int = 0) -> NamedSharding:
    """Split dimension ``axis`` of an array over the mesh's ``"batch"`` axis.

    ``axis=0`` shards a minibatch ``[batch, ...]``; ``axis=1`` shards a stack of minibatches
    ``[steps, batch]`` (an epoch's index table) along each minibatch.
    """
    return NamedSharding(mesh, PartitionSpec(*([None] * axis), BATCH_AXIS))


def check_divisible(batch_size: int, mesh: Mesh | None, name: str = "batch_size") -> None:
    """Raise ``ValueError`` unless ``batch_size`` splits evenly over the mesh's devices."""
    if mesh is None or batch_size % mesh.size == 0:
        return
    k = mesh.size
    lower, upper = (batch_size // k) * k, (batch_size // k + 1) * k
    hint = f"{lower} or {upper}" if lower else f"{upper}"
    raise ValueError(
        f"{name}: {batch_size} is not divisible by the {k} devices of the mesh; every device "
        f"takes an equal share of each minibatch, so use a multiple of {k}, e.g. {hint}"
    )


def constrain(x, sharding: NamedSharding | None):
    """``jax.lax.with_sharding_constraint`` inside a jitted function; identity without a mesh."""
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


# ---------------------------------------------------------------------------------------------
# Several processes (jax.distributed).


def initialize(
    coordinator: str | None = None,
    num_processes: int = 1,
    process_id: int = 0,
    *,
    heartbeat_timeout: int | None = None,
    init_timeout: int | None = None,
) -> None:
    """Join a multi-process JAX job (``jax.distributed.initialize``); a no-op for one process.

    Call it before anything touches a device. Every process runs the same program with its own
    ``process_id``; process 0 hosts the coordinator service at ``coordinator``. A loopback
    coordinator (``127.0.0.1:PORT``, ``localhost:PORT``) is also bound on loopback only, so a
    single-machine job never listens on the network; otherwise JAX binds every interface.

    On the CPU the processes exchange data through JAX's CPU collectives: this selects the
    gloo implementation (``jax_cpu_collectives_implementation="gloo"``, already the default
    in jax 0.10). GPUs and TPUs use their own (NCCL, ICI) and ignore it.

    Args:
        coordinator: ``"HOST:PORT"`` of process 0; required when ``num_processes > 1``.
        num_processes: the number of processes of the job (>= 1).
        process_id: this process's index, ``0 <= process_id < num_processes``.
        heartbeat_timeout: seconds without a heartbeat after which a peer counts as dead and
            the job aborts (JAX's default: 100); ``None`` reads ``FNN_HEARTBEAT_TIMEOUT`` from
            the environment, if set.
        init_timeout: seconds to wait for every process to join (JAX's default: 300);
            ``None`` reads ``FNN_INIT_TIMEOUT``, if set.

    Raises:
        ValueError: for a bad count, id or address, before anything starts.
    """
    if (
        isinstance(num_processes, bool)
        or not isinstance(num_processes, (int, np.integer))
        or num_processes < 1
    ):
        raise ValueError(f"num_processes: expected an int >= 1, got {num_processes!r}")
    if (
        isinstance(process_id, bool)
        or not isinstance(process_id, (int, np.integer))
        or not 0 <= process_id < num_processes
    ):
        raise ValueError(
            f"process_id: expected an int in 0..{num_processes - 1} (one per "
            f"process of the job), got {process_id!r}"
        )
    if num_processes == 1:
        return
    host, port = _split_address(coordinator)
    if jax.distributed.is_initialized():
        if jax.process_count() != num_processes or jax.process_index() != process_id:
            raise ValueError(
                f"initialize: this process already joined a job as process "
                f"{jax.process_index()} of {jax.process_count()}, not {process_id} of "
                f"{num_processes}"
            )
        return
    if "jax_cpu_collectives_implementation" in jax.config.values:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    settings = {}
    heartbeat = heartbeat_timeout or os.environ.get("FNN_HEARTBEAT_TIMEOUT")
    if heartbeat:
        settings["heartbeat_timeout_seconds"] = int(heartbeat)
    init = init_timeout or os.environ.get("FNN_INIT_TIMEOUT")
    if init:
        settings["initialization_timeout"] = int(init)
    if _is_loopback(host):
        settings["coordinator_bind_address"] = coordinator
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        **settings,
    )


def _split_address(coordinator) -> tuple[str, int]:
    fix = "pass the address of process 0 as HOST:PORT, e.g. 127.0.0.1:12355"
    if not isinstance(coordinator, str) or ":" not in coordinator:
        raise ValueError(f"coordinator: expected 'HOST:PORT', got {coordinator!r}; {fix}")
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"coordinator: expected 'HOST:PORT' with a port in 1..65535, got {coordinator!r}; {fix}"
        )
    return host, int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_main() -> bool:
    """True on process 0 (the only process that writes logs, figures and checkpoints)."""
    return jax.process_index() == 0


def main_only(fn):
    """Decorate ``fn`` to run on process 0 only; elsewhere it returns ``None``.

    ``fn`` must not run a computation over global arrays (the other processes would not join
    it); pass it host data, e.g. :func:`host_local` of a state.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs) if is_main() else None

    return wrapper


def _is_key(a) -> bool:
    return isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)


def put_replicated(tree, mesh: Mesh):
    """Place every leaf of ``tree`` whole on every device of ``mesh`` (parameters, data).

    One process: ``jax.device_put(tree, replicated(mesh))``. Several: each process passes its
    own copy, which must be the same everywhere (the same data, the same initial state), to
    ``jax.make_array_from_process_local_data``; PRNG keys travel as their key data.
    """
    sharding = replicated(mesh)
    if not mesh.is_multi_process:
        return jax.device_put(tree, sharding)

    def put(a):
        if _is_key(a):
            impl = jax.random.key_impl(a)
            data = put(np.asarray(jax.random.key_data(a)))
            return jax.random.wrap_key_data(data, impl=impl)
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return a if a.sharding == sharding else jax.device_put(a, sharding)
        local = np.asarray(a)
        return jax.make_array_from_process_local_data(sharding, local, local.shape)

    return jax.tree.map(put, tree)


def put_sharded(array, sharding: NamedSharding):
    """Place a host array that every process holds whole, each process feeding its part.

    One process: ``jax.device_put``. Several: this process passes only the block its own
    devices hold (e.g. its columns of an epoch's ``[steps, batch]`` index table) to
    ``jax.make_array_from_process_local_data``.

    Args:
        array: the global array (NumPy), identical on every process.
        sharding: where it goes, e.g. :func:`batch_sharding` ``(mesh, axis=1)``.
    """
    if sharding.is_fully_addressable:
        return jax.device_put(array, sharding)
    array = np.asarray(array)
    return jax.make_array_from_process_local_data(
        sharding, array[local_block(sharding, array.shape)], array.shape
    )


def local_block(sharding: NamedSharding, shape: tuple) -> tuple[slice, ...]:
    """The index of the block of a ``shape`` array that this process's devices hold.

    With a one-axis mesh whose devices are ordered by process (as ``jax.devices()`` is), each
    process holds one contiguous block; e.g. process 1 of 2 holds columns ``b/2 .. b`` of a
    ``[steps, b]`` table sharded along axis 1.
    """
    blocks = sharding.addressable_devices_indices_map(tuple(shape)).values()
    index = []
    for axis, size in enumerate(shape):
        starts, stops = zip(*(blk[axis].indices(size)[:2] for blk in blocks), strict=True)
        index.append(slice(min(starts), max(stops)))
    return tuple(index)


def host_local(tree):
    """A copy of a replicated tree on this process's first device (to save, print or hash).

    Arrays of one process pass through. A replicated global array (every process holds it
    whole) gives its local shard, with no communication: so that process 0 alone can save a
    checkpoint without the others joining a computation.
    """

    def local(a):
        if not isinstance(a, jax.Array) or a.is_fully_addressable:
            return a
        if not a.sharding.is_fully_replicated:
            raise ValueError(
                f"host_local: expected a replicated array, got one sharded as "
                f"{a.sharding}; only replicated state can be read on one process"
            )
        return a.addressable_data(0)

    return jax.tree.map(local, tree)
