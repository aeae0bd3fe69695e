"""Entry point shared by the binaries: a bad flag value is one `error:` line and exit code 2."""

from __future__ import annotations

import sys

from absl import app, flags


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
