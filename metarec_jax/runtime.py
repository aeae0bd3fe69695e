"""Process-level runtime: the persistent compilation cache, multi-host start-up, and the
device mesh the task axis is sharded over.

Sharding model: one mesh axis, `tasks`. The meta-parameters, the optimiser state and the
device-resident data are replicated; each step's meta-batch is split over the axis, so
every device adapts `meta_batch_size / n_devices` tasks and XLA all-reduces the
meta-gradient. The mesh uses `Auto` axis types (jax >= 0.7 `make_mesh` defaults to
explicit axes, under which unsharded inputs are rejected).
"""

from __future__ import annotations

import functools
import os
import sys

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

TASK_AXIS = "tasks"
DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "metarec_jax", "xla")


def cpu_device_count(requested: int = -1) -> int | None:
  """How many CPU devices the process makes: `requested`, or with -1 one per usable core, at
  most 2 (the learner trains on one and the baselines run on the other: `baseline_device`);
  None leaves XLA's own count (when XLA_FLAGS forces one, as the tests do)."""
  if requested > 0:
    return requested
  if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
    return None
  return min(2, len(os.sched_getaffinity(0)))


def baseline_device(overlap: bool, devices: int):
  """The device a run's baselines use while its learner trains: the second CPU device, when
  the learner trains on the first (one device, one process); None runs them afterwards, in
  the learner's thread. A CPU device's computations wait for one another's; two devices'
  run side by side, on the two cores."""
  if not overlap or devices != 1:
    return None
  return helper_device()


def configure(
  *,
  compilation_cache_dir: str | None = None,
  cpu_devices: int = -1,
  distributed: bool = False,
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> None:
  """Call once at start-up, before any computation.

  compilation_cache_dir: folder of XLA's persistent compilation cache; "" or None disables it.
  distributed: call `jax.distributed.initialize` with the coordinator address, process count and
  process id given (those left None: from the cluster environment JAX detects). On CPU the
  processes' collectives go through gloo.
  cpu_devices: the CPU devices to make (`cpu_device_count`); set only before JAX's backends start.
  """
  limit_malloc_arenas()
  n_cpu = None if distributed else cpu_device_count(cpu_devices)
  if n_cpu is not None:
    try:
      jax.config.update("jax_num_cpu_devices", n_cpu)
    except RuntimeError:  # JAX's backends have started (an in-process caller): their count stays
      pass
  if not distributed and any(v is not None for v in (coordinator_address, num_processes, process_id)):
    raise ValueError("--coordinator_address, --num_processes and --process_id need --distributed")
  if distributed:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  if compilation_cache_dir:
    os.makedirs(compilation_cache_dir, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", compilation_cache_dir)
    # every compile kept: a run's ~150 programs of a few milliseconds each add up to seconds
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


MALLOC_ARENAS = 4  # 2 cost the cold ML-1M run 15 % of its time in the compiler's threads; 4 did not


def limit_malloc_arenas(n: int = MALLOC_ARENAS) -> bool:
  """Caps glibc's malloc arenas at `n` (unless $MALLOC_ARENA_MAX says otherwise). glibc gives
  threads that allocate their own arenas, up to 8 per core; XLA's compiler and thread-pool
  threads then leave freed memory spread over many of them, which the process keeps (the default
  ML-1M run's peak RSS with a cold compilation cache: 2.06 GiB uncapped, 1.85 GiB with 4;
  docs/results.md). Call before JAX starts its threads; True when set. A no-op off glibc."""
  libc = None if "MALLOC_ARENA_MAX" in os.environ else _libc()
  return bool(libc.mallopt(-8, n)) if libc is not None else False  # -8: M_ARENA_MAX


@functools.cache
def _libc():
  """glibc, or None (not Linux, or not glibc)."""
  if not sys.platform.startswith("linux"):
    return None
  import ctypes

  try:
    libc = ctypes.CDLL("libc.so.6")
    return libc if hasattr(libc, "malloc_trim") else None
  except OSError:
    return None


def release_free_memory() -> bool:
  """Gives the heap's free pages back to the system (glibc's `malloc_trim(0)`, every arena);
  True when something was released. XLA's compiles free much of what they allocate, in pieces
  that glibc keeps; trimmed where a run's compiles end (the learner's steps compiled ahead, each
  validation-grid point, each baseline row), the default ML-1M run's cold-cache peak RSS fell from 1.85–1.92 to 1.61–1.69 GiB
  (docs/results.md). A no-op off glibc."""
  libc = _libc()
  return bool(libc.malloc_trim(0)) if libc is not None else False


def task_mesh(n_devices: int) -> Mesh | None:
  """A 1-D mesh over the first `n_devices` devices (0: all); None for a single device."""
  available = jax.devices()
  n = len(available) if n_devices == 0 else n_devices
  if n < 0 or n > len(available):
    raise ValueError(f"devices={n_devices} but only {len(available)} {available[0].platform} device(s) are visible")
  if n == 1:
    return None
  return Mesh(np.asarray(available[:n]), (TASK_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


CPU_TASK_CHUNK = 4  # measured fastest on CPU (docs/results.md, Performance); one vmap elsewhere


def task_chunk(requested: int, meta_batch_size: int, mesh: Mesh | None = None) -> int:
  """--task_chunk, with -1 resolved for the device: CPU_TASK_CHUNK on one CPU device when it
  divides the meta-batch, else 0 (the whole meta-batch, or each device's share, in one vmap)."""
  if requested >= 0:
    return requested
  c = CPU_TASK_CHUNK
  if jax.default_backend() == "cpu" and mesh is None and meta_batch_size % c == 0 and c < meta_batch_size:
    return c
  return 0


CPU_EVAL_CHUNK, ACCELERATOR_EVAL_CHUNK = 16, 128  # measured on ML-1M's validation (docs/results.md)


def eval_chunk(requested: int) -> int:
  """--eval_chunk, with -1 resolved for the device: small calls on CPU (less padding, a vmap that
  stays in cache, both devices busy), large ones on accelerators."""
  if requested > 0:
    return requested
  return CPU_EVAL_CHUNK if jax.default_backend() == "cpu" else ACCELERATOR_EVAL_CHUNK


def step_parts(requested: int, meta_batch_size: int, chunk: int, mesh: Mesh | None = None, *, inner_loop: bool) -> int:
  """--step_parts, with -1 resolved: 2 for a learner with an inner loop whose step runs on one CPU
  device in task chunks that split evenly in two, when the process has a second CPU device for
  the second part (`helper_device`); else 1. (A step without an inner loop, the pooled network's,
  is too cheap to gain from a second device: measured level.)"""
  if requested >= 1:
    return requested
  n = meta_batch_size // chunk if chunk and meta_batch_size % chunk == 0 else 0
  return 2 if inner_loop and mesh is None and n >= 2 and n % 2 == 0 and helper_device() is not None else 1


def helper_device():
  """The second CPU device of a single-process run (where the baselines run, and a step's second
  part: `training.step.PartStep`); None elsewhere."""
  if jax.process_count() > 1 or jax.default_backend() != "cpu":
    return None
  local = jax.local_devices()
  return local[1] if len(local) > 1 else None


# A tree's copy in one compiled call (`jnp.copy` op by op compiles a program per leaf shape). A
# copy, never the input's buffers: the train step donates the state it is given.
copy_tree = jax.jit(lambda tree: jax.tree.map(jax.numpy.copy, tree))


def device_of(tree):
  """The device that holds `tree`'s first array (a one-device tree: where it all is)."""
  return next(iter(jax.tree.leaves(tree)[0].devices()))


def executable_bytes(compiled: jax.stages.Compiled) -> bytes | None:
  """`compiled`'s executable, serialized (`jax.experimental.serialize_executable`), for
  `load_on`; None where it does not serialize. Complete only for a program compiled in this
  process: one that the persistent cache served serializes without its code, which `load_on`'s
  caller must catch (`training.step.PartStep` runs both copies and compares them)."""
  from jax.experimental import serialize_executable

  try:
    return serialize_executable.serialize(compiled)[0]
  except Exception:  # noqa: BLE001 (not serializable: the caller compiles instead)
    return None


def load_on(blob: bytes, like: jax.stages.Compiled, device) -> jax.stages.Compiled | None:
  """The one-device program `blob` (`executable_bytes` of `like` or of the same program) loaded
  on `device` without compiling it again; None where that cannot be done (a program over several
  devices, a jax whose executables do not load this way): the caller compiles for `device` then.
  On the CPU the code does not depend on the device that runs it: deserialized with `device` as
  its one device it runs there (a step's second part: a load instead of a second compile)."""
  import io
  import pickle

  from jax._src.lib import xla_client as xc

  try:
    if len({d for s in jax.tree.leaves(like.input_shardings) for d in s.device_set}) != 1:
      return None
    options = xc.CompileOptions()
    options.device_assignment = xc.DeviceAssignment.create(np.array([[device.id]]))

    class OnDevice(pickle.Unpickler):  # the persistent ids `serialize_executable.serialize` writes
      def persistent_load(self, pid):
        if pid[0] == "exec":
          return device.client.deserialize_executable(
            pid[1], executable_devices=xc.DeviceList((device,)), compile_options=options
          )
        if pid[0] == "device":
          return device
        if pid[0] == "client":
          return device.client
        raise pickle.UnpicklingError(f"unknown persistent id {pid[0]!r}")

    unloaded, args_info, no_kwargs = OnDevice(io.BytesIO(blob)).load()
    args_info = like.in_tree.unflatten(args_info)
    return jax.stages.Compiled(unloaded.load(), [], args_info, like.out_tree, no_kwargs=no_kwargs)
  except Exception as e:  # noqa: BLE001 (any failure here only costs the compile it would save)
    from absl import logging

    logging.info("compiling for %s again: the program did not load there (%s)", device, e)
    return None


def program_path(lowered: jax.stages.Lowered) -> str | None:
  """Where `executable_bytes` of `lowered`'s program is kept beside the persistent compilation
  cache (None without one): keyed by its StableHLO, the jax and jaxlib versions, the backend and
  XLA_FLAGS, so that a run whose cache served the program still finds its complete bytes."""
  import hashlib

  import jaxlib

  cache = jax.config.jax_compilation_cache_dir
  if not cache or not os.path.isdir(cache):
    return None
  backend = jax.devices()[0].client
  key = hashlib.sha256()
  for part in (jax.__version__, jaxlib.__version__, backend.platform, backend.platform_version):
    key.update(f"{part}\0".encode())
  key.update(os.environ.get("XLA_FLAGS", "").encode() + b"\0")
  key.update(lowered.as_text().encode())
  return os.path.join(cache, "metarec-programs", key.hexdigest())


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
  """Places a pytree on every device of the mesh (unchanged without a mesh). A mesh over several
  processes cannot be `device_put` to: each process builds its shards of the global array from
  its own copy of the values (every process holds the same ones)."""
  if mesh is None:
    return tree
  if jax.process_count() == 1:
    return jax.device_put(tree, replicated(mesh))
  return jax.tree.map(lambda x: _global_copy(x, replicated(mesh)), tree)


def _global_copy(x, sharding):
  if jax.dtypes.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key):
    return jax.random.wrap_key_data(_global_copy(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x))
  host = np.asarray(local_value(x))
  return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def local_value(x):
  """A replicated array's value as this process sees it (its first local shard when the array
  spans processes); anything else unchanged."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable and x.is_fully_replicated:
    return x.addressable_data(0)
  return x


def check_same_workdir(workdir: str) -> None:
  """In a multi-process run, every process must name the same --workdir (one folder that all of
  them see: orbax writes each checkpoint collectively, and would wait forever on a process saving
  elsewhere). A ValueError names the mismatch; no-op in a single process."""
  if jax.process_count() == 1:
    return
  import hashlib

  from jax.experimental import multihost_utils

  digest = np.frombuffer(hashlib.sha256(os.path.abspath(workdir).encode()).digest()[:8], np.int32)
  try:
    multihost_utils.assert_equal(digest, "")
  except AssertionError:
    raise ValueError(
      f"--workdir={workdir}: every process of a --distributed run must use the same --workdir, on a "
      "filesystem all of them see (process 0 writes the files; orbax writes each checkpoint from all)"
    ) from None
