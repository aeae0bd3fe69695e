"""Mean ± std tables over several runs of experiments.train.

  python -m experiments.aggregate --runs='runs/ml100k_head_s*' --runs='runs/ml100k_all_s*' \
      --labels=head,all --out=runs/ml100k_table.md

Each --runs glob is one group of seeds (one final_metrics.json per folder). Rows are
(group, learner); columns are the four scenarios × --metrics. The markdown goes to --out
(atomically) and to stdout; a JSON with the same numbers goes next to it.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from experiments import cli

from metarec_jax.aggregate import few_shot_markdown, load_group, summarize, to_markdown
from metarec_jax.writers import write_json_atomic, write_text_atomic

flags.DEFINE_multi_string("runs", [], "Glob of run folders forming one group (repeatable).")
flags.DEFINE_list("labels", [], "One label per --runs group (default: the glob).")
flags.DEFINE_list("metrics", ["mae", "rmse", "ndcg@3"], "Metrics to tabulate.")
flags.DEFINE_string("few_shot", None, "Also tabulate this metric at each few-shot support size (e.g. recall@20).")
flags.DEFINE_string("out", None, "Markdown output path (a .json with the same stem is written too).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if not FLAGS.runs:
    print("error: give at least one --runs glob", file=sys.stderr)
    sys.exit(2)
  labels = FLAGS.labels or FLAGS.runs
  if len(labels) != len(FLAGS.runs):
    print(f"error: {len(labels)} --labels for {len(FLAGS.runs)} --runs groups", file=sys.stderr)
    sys.exit(2)
  try:
    groups = {label: load_group(p) for label, p in zip(labels, FLAGS.runs)}
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  summary = summarize(groups, FLAGS.metrics)
  md = to_markdown(summary, FLAGS.metrics)
  if FLAGS.few_shot:
    md += f"\nFew-shot {FLAGS.few_shot} (user-cold):\n\n" + few_shot_markdown(groups, FLAGS.few_shot)
  print(md)
  if FLAGS.out:
    write_text_atomic(FLAGS.out, md)
    write_json_atomic(os.path.splitext(FLAGS.out)[0] + ".json", summary)


if __name__ == "__main__":
  cli.run(main)
