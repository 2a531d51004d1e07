"""Device meshes and batch sharding for data-parallel training.

fnn scales with ``jax.sharding`` rather than beside it: a one-axis :class:`jax.sharding.Mesh`
whose axis is named ``"batch"``, the examples of every minibatch split over it, and the
parameters (and optimizer state) replicated. XLA's partitioner inserts the cross-device sum
of the gradients; fnn writes no collectives.

Example:
    >>> from fnn import parallel
    >>> mesh = parallel.make_mesh(1)
    >>> mesh.axis_names, mesh.size
    (('batch',), 1)
    >>> tuple(parallel.batch_sharding(mesh).spec)
    ('batch',)
"""

from __future__ import annotations

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
                f"devices: expected an int, 'all' or a list of devices, got {devices!r}")
        return list(available)
    if isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        if not 1 <= int(devices) <= len(available):
            raise ValueError(
                f"devices: expected 1..{len(available)} (the devices JAX sees: "
                f"{available[0].platform} x {len(available)}), got {devices}; on CPU set "
                f"XLA_FLAGS=--xla_force_host_platform_device_count=N before importing jax"
            )
        return available[: int(devices)]
    if isinstance(devices, Sequence) and devices and all(
        isinstance(d, jax.Device) for d in devices
    ):
        return list(devices)
    raise TypeError(
        f"devices: expected None, an int, 'all' or a list of jax.Device, got "
        f"{type(devices).__name__}"
    )


def make_mesh(devices=None) -> Mesh:
    """A one-axis mesh named ``"batch"`` over ``devices`` (see :func:`resolve_devices`)."""
    return Mesh(np.asarray(resolve_devices(devices), dtype=object), (BATCH_AXIS,))


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
