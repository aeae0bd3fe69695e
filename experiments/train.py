"""Meta-train a learner and evaluate it, with baselines, on the four cold-start scenarios.

  python -m experiments.train --workdir=runs/synthetic
  python -m experiments.train --dataset=ml-100k --data_dir=../shared/data --workdir=runs/ml100k
  python -m experiments.train --preset=ml1m-melu --data_dir=../shared/data --workdir=runs/ml1m

Every Config field is a flag (--helpfull lists them). Writes <workdir>/config.json,
metrics.jsonl, final_metrics.json, timing.json and orbax checkpoints (--resume continues).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from experiments import config_flags, runtime_flags
from metarec_jax.data import DataError
from metarec_jax.protocol import train_and_evaluate
from metarec_jax.summary import summary_table

flags.DEFINE_string("workdir", "runs/default", "Output folder.")
flags.DEFINE_bool("resume", False, "Continue from the latest checkpoints in --workdir (same flags required).")
FLAGS = flags.FLAGS
# Testing aid, not a flag: end the process right after this meta-training step of the learner,
# as a kill would (tests/test_checkpoints.py).
EXIT_AT_STEP_ENV = "METAREC_EXIT_AT_STEP"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  try:
    runtime_flags.apply()
    config = config_flags.config_from_flags()
    exit_at = os.environ.get(EXIT_AT_STEP_ENV)
    final = train_and_evaluate(
      config, FLAGS.workdir, resume=FLAGS.resume, exit_at_step=int(exit_at) if exit_at else None
    )
  except (DataError, ValueError, FloatingPointError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  files = ("final_metrics.json", "timing.json", "metrics.jsonl", "config.json", "checkpoints/")
  print(summary_table(final, FLAGS.workdir, tuple(f for f in files if os.path.exists(os.path.join(FLAGS.workdir, f)))))


if __name__ == "__main__":
  runtime_flags.run(main)
