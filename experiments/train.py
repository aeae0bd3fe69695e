"""Meta-train a learner and evaluate it, with baselines, on the four cold-start scenarios.

  python -m experiments.train --workdir=runs/synthetic
  python -m experiments.train --dataset=ml-100k --data_dir=../shared/data --workdir=runs/ml100k
  python -m experiments.train --preset=ml1m-melu --data_dir=../shared/data --workdir=runs/ml1m

Every Config field is a flag (--helpfull lists them). Writes <workdir>/config.json,
metrics.jsonl, final_metrics.json, timing.json and orbax checkpoints (--resume continues).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from experiments import config_flags, runtime_flags
from metarec_jax.data import DataError
from metarec_jax.protocol import train_and_evaluate

flags.DEFINE_string("workdir", "runs/default", "Output folder.")
flags.DEFINE_bool("resume", False, "Continue from the latest checkpoints in --workdir (same flags required).")
flags.DEFINE_integer(
  "exit_at_step",
  None,
  "Testing aid: end the process right after this meta-training step of the learner, as a kill would.",
)
FLAGS = flags.FLAGS


def _headline(m: dict) -> str:
  if "mae" in m:
    return f"MAE {m['mae']:.4f} nDCG@3 {m.get('ndcg@3', float('nan')):.4f}"
  return f"AUC {m['auc']:.4f} logloss {m['logloss']:.4f}"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  try:
    runtime_flags.apply()
    config = config_flags.config_from_flags()
    final = train_and_evaluate(config, FLAGS.workdir, resume=FLAGS.resume, exit_at_step=FLAGS.exit_at_step)
  except (DataError, ValueError, FloatingPointError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  for name, res in final["results"].items():
    logging.info("%-13s %s", name, "  ".join(f"{s}: {_headline(m)}" for s, m in res.items() if m.get("n_tasks")))
  print(f"wrote {FLAGS.workdir}/final_metrics.json and timing.json")


if __name__ == "__main__":
  runtime_flags.run(main)
