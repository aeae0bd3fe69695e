"""Flags every binary shares: the persistent compilation cache and multi-host start-up (the
device count is the Config field --devices).

Multi-host: start the same command on every host with `--distributed`; JAX reads the
coordinator address, process count and process id from the cluster environment (SLURM,
Cloud TPU, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID), then
`--devices=0` shards the meta-batch over every device of every host.
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
FLAGS = flags.FLAGS


def apply() -> None:
  runtime.configure(compilation_cache_dir=FLAGS.compilation_cache_dir, distributed=FLAGS.distributed)


run = cli.run  # the binaries' entry point (flag errors exit 2)
