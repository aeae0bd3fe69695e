"""Flags every binary shares: the persistent compilation cache, the CPU device count and
multi-host start-up (the devices a meta-batch is sharded over are the Config field --devices).

Multi-host: start the same command on every host with `--distributed`, and either
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I` or a cluster environment JAX
detects (SLURM, Open MPI, Cloud TPU, ...); then `--devices=0` shards the meta-batch over every
device of every host. Only process 0 writes files.
"""

from __future__ import annotations

import os

from absl import flags

from experiments import cli

from metarec_jax import runtime

flags.DEFINE_string(
  "compilation_cache_dir",
  os.environ.get("METAREC_COMPILE_CACHE", runtime.DEFAULT_CACHE_DIR),
  "Persistent XLA compilation cache folder ('' disables it; default $METAREC_COMPILE_CACHE or "
  "~/.cache/metarec_jax/xla). Repeat compiles of the same configuration load from it.",
  module_name="runtime flags",
)
flags.DEFINE_bool(
  "distributed", False, "Call jax.distributed.initialize() first (multi-host runs).", module_name="runtime flags"
)
flags.DEFINE_string(
  "coordinator_address",
  None,
  "--distributed: the coordinator's HOST:PORT (process 0's host).",
  module_name="runtime flags",
)
flags.DEFINE_integer("num_processes", None, "--distributed: how many processes take part.", module_name="runtime flags")
flags.DEFINE_integer("process_id", None, "--distributed: this process's index, 0 .. N-1.", module_name="runtime flags")
flags.DEFINE_integer(
  "cpu_devices",
  -1,
  "CPU devices to make (-1: one per usable core, at most 2, unless XLA_FLAGS sets a count; a "
  "run's baselines then use the second while the learner trains on the first).",
  module_name="runtime flags",
)
FLAGS = flags.FLAGS


def apply() -> None:
  runtime.configure(
    compilation_cache_dir=FLAGS.compilation_cache_dir,
    cpu_devices=FLAGS.cpu_devices,
    distributed=FLAGS.distributed,
    coordinator_address=FLAGS.coordinator_address,
    num_processes=FLAGS.num_processes,
    process_id=FLAGS.process_id,
  )


run = cli.run  # the binaries' entry point (flag errors exit 2)
