"""Process-level runtime: the persistent compilation cache, multi-host start-up, and the
device mesh the task axis is sharded over.

Sharding model: one mesh axis, `tasks`. The meta-parameters, the optimiser state and the
device-resident data are replicated; each step's meta-batch is split over the axis, so
every device adapts `meta_batch_size / n_devices` tasks and XLA all-reduces the
meta-gradient. The mesh uses `Auto` axis types (jax >= 0.7 `make_mesh` defaults to
explicit axes, under which unsharded inputs are rejected).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

TASK_AXIS = "tasks"
DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "metarec_jax", "xla")


def configure(*, compilation_cache_dir: str | None = None, distributed: bool = False) -> None:
  """Call once at start-up, before any computation.

  compilation_cache_dir: folder of XLA's persistent compilation cache; "" or None disables it.
  distributed: call `jax.distributed.initialize()` (multi-host: each process must see the
  coordinator address, process count and id, from the environment or the cluster manager).
  """
  if distributed:
    jax.distributed.initialize()
  if compilation_cache_dir:
    os.makedirs(compilation_cache_dir, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", compilation_cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def task_mesh(n_devices: int) -> Mesh | None:
  """A 1-D mesh over the first `n_devices` devices (0: all); None for a single device."""
  available = jax.devices()
  n = len(available) if n_devices == 0 else n_devices
  if n < 0 or n > len(available):
    raise ValueError(f"devices={n_devices} but only {len(available)} {available[0].platform} device(s) are visible")
  if n == 1:
    return None
  return Mesh(np.asarray(available[:n]), (TASK_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def check_divisible(meta_batch_size: int, mesh: Mesh | None) -> None:
  if mesh is not None and meta_batch_size % mesh.size:
    raise ValueError(
      f"meta_batch_size={meta_batch_size} does not divide by the {mesh.size} devices the task "
      f"axis is sharded over; use a multiple of {mesh.size} or --devices=1"
    )


def replicated(mesh: Mesh | None):
  return None if mesh is None else NamedSharding(mesh, PartitionSpec())


def task_sharded(mesh: Mesh | None):
  return None if mesh is None else NamedSharding(mesh, PartitionSpec(TASK_AXIS))


def chunk_sharded(mesh: Mesh | None):
  """[chunk, task, ...] arrays: chunks in sequence, each chunk's tasks over the devices."""
  return None if mesh is None else NamedSharding(mesh, PartitionSpec(None, TASK_AXIS))


def replicate(tree, mesh: Mesh | None):
  """Places a pytree on every device of the mesh (unchanged without a mesh)."""
  return tree if mesh is None else jax.device_put(tree, replicated(mesh))
