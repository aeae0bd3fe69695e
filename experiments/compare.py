"""Learners × scenarios × seeds on one dataset, with baselines, a few-shot curve and timings.

  python -m experiments.compare --dataset=ml-100k --data_dir=../shared/data --out=runs/compare_ml100k
  python -m experiments.compare --learners=maml,neural_process --seeds=0,1 --epochs=5 --inner_lr=0.05 --out=runs/q

Every Config field is a flag and applies to every run (--few_shot_ks, unset: 1,3,5,10,20). Per
seed the baselines run once (with the first learner). Writes <out>/results.json, <out>/table.md, a run folder per (learner,
seed) and (--report) <out>/report.md with the figures (metarec_jax/compare.py).
"""

from __future__ import annotations

import sys

from absl import flags

from experiments import config_flags, runtime_flags
from metarec_jax import learners
from metarec_jax.compare import compare
from metarec_jax.data import DataError

flags.DEFINE_list("learners", list(learners.META_LEARNERS), "Learners to compare (any registered learner).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
flags.DEFINE_bool("report", True, "Also write <out>/report.md with the tables, figures (<out>/figures) and commands.")
flags.DEFINE_string("out", "runs/compare", "Output folder.")
flags.DEFINE_integer(
  "jobs", 1, "Runs at once, each in a worker process pinned to one core (1: one after another, in this process)."
)
FLAGS = flags.FLAGS
# The few-shot curve's support sizes when --few_shot_ks is not given (a plain run draws none).
FEW_SHOT_KS = (1, 3, 5, 10, 20)


def main(argv):
  del argv
  try:
    runtime_flags.apply()
    seeds = config_flags.parse_value("seeds", tuple[int, ...], FLAGS.seeds)
    base = config_flags.config_from_flags(**({} if FLAGS["few_shot_ks"].present else {"few_shot_ks": FEW_SHOT_KS}))
    names = list(FLAGS.learners)
    if base.protocol == "ranking" and not FLAGS["learners"].present:
      names = [base.learner]  # the ranking protocol's learner (the meta-learners rank as maml_rank)
    elif base.base and not FLAGS["learners"].present:  # the default list, less what cannot stack
      names = [n for n in names if learners.get_spec(n).stackable]
    md = compare(
      base,
      names,
      list(seeds),
      FLAGS.out,
      write_report=FLAGS.report,
      command="python -m experiments.compare " + " ".join(sys.argv[1:]),
      jobs=FLAGS.jobs,
    )
    print(md)
  except (DataError, ValueError, FloatingPointError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  runtime_flags.run(main)
