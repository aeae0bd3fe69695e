"""Entry point shared by the binaries: a bad flag value is one `error:` line and exit code 2."""

from __future__ import annotations

import logging
import sys

from absl import app, flags


class _NoTpuProbeNoise(logging.Filter):
  """JAX probes for a TPU at start-up and logs "Unable to initialize backend 'tpu' ... libtpu.so"
  on every machine without one; that line reads like an error and says nothing about the run.
  Other backends' messages (a GPU that fails to start) still show."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Unable to initialize backend 'tpu'")


logging.getLogger("jax._src.xla_bridge").addFilter(_NoTpuProbeNoise())


def parse_flags(argv):
  """absl's flag parsing, with a bad flag value as one error line and exit code 2 (absl exits 1)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def run(main) -> None:
  """app.run(main) with `parse_flags`: every input error of a binary exits 2."""
  app.run(main, flags_parser=parse_flags)
