"""Compares two runs' final_metrics.json leaf by leaf (e.g. before and after a refactor).

  python -m experiments.diff_runs --old=runs/a/final_metrics.json --new=runs/b/final_metrics.json --rtol=1e-5 \
      --rename=val_mae:val/mae

Prints the counts of equal and close (within --rtol) numbers, every difference, and the keys
only one side has; exits 1 when a number differs.
"""

from __future__ import annotations

import json
import sys

from absl import flags

from experiments import cli
from metarec_jax.aggregate import diff_runs

flags.DEFINE_string("old", None, "The first final_metrics.json.")
flags.DEFINE_string("new", None, "The second final_metrics.json.")
flags.DEFINE_float("rtol", 1e-5, "Relative tolerance of 'close'.")
flags.DEFINE_list("rename", [], "old:new key renames applied to --old (e.g. val_mae:val/mae).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  trees = []
  for path in (FLAGS.old, FLAGS.new):
    try:
      with open(path) as f:
        trees.append(json.load(f))
    except (OSError, TypeError, json.JSONDecodeError) as e:
      print(f"error: --old/--new {path!r}: {e}", file=sys.stderr)
      sys.exit(2)
  if any(r.count(":") != 1 for r in FLAGS.rename):
    print(f"error: --rename entries are old:new, got {','.join(FLAGS.rename)!r}", file=sys.stderr)
    sys.exit(2)
  d = diff_runs(*trees, rtol=FLAGS.rtol, rename=dict(r.split(":") for r in FLAGS.rename))
  print(f"equal {d['equal']}, close {len(d['close'])}, differ {len(d['differ'])}")
  for kind in ("close", "differ"):
    for p, x, y in d[kind]:
      print(f"  {kind}: {p}: {x!r} -> {y!r}")
  for side in ("only_old", "only_new"):
    for p in d[side]:
      print(f"  {side}: {p}")
  sys.exit(1 if d["differ"] else 0)


if __name__ == "__main__":
  cli.run(main)
