"""Mean ± std tables over several runs of experiments.train.

  python -m experiments.aggregate --runs='runs/ml100k_head_s*' --runs='runs/ml100k_all_s*' \
      --labels=head,all --out=runs/ml100k_table.md

Each --runs glob is one group of seeds (one final_metrics.json per folder). Rows are
(group, learner); columns are the four scenarios × --metrics. The markdown goes to --out
(atomically) and to stdout; a JSON with the same numbers goes next to it.
"""

from __future__ import annotations

import glob
import json
import os
import sys

from absl import flags

from experiments import cli

from metarec_jax.data.tasks import SCENARIOS
from metarec_jax.writers import mean_std, write_json_atomic, write_text_atomic

flags.DEFINE_multi_string("runs", [], "Glob of run folders forming one group (repeatable).")
flags.DEFINE_list("labels", [], "One label per --runs group (default: the glob).")
flags.DEFINE_list("metrics", ["mae", "rmse", "ndcg@3"], "Metrics to tabulate.")
flags.DEFINE_string("out", None, "Markdown output path (a .json with the same stem is written too).")
FLAGS = flags.FLAGS


def load_group(pattern: str) -> list[dict]:
  folders = sorted(f for f in glob.glob(pattern) if os.path.isdir(f))
  runs = []
  for folder in folders:
    path = os.path.join(folder, "final_metrics.json")
    if not os.path.isfile(path):
      raise ValueError(f"{path}: not found (is {folder} a finished run?)")
    with open(path) as f:
      runs.append(json.load(f))
  if not runs:
    raise ValueError(f"--runs={pattern!r} matches no run folder")
  return runs


def summarize(groups: dict[str, list[dict]], metrics: list[str]) -> dict:
  """{group: {learner: {scenario: {metric: [mean, std, n]}, "val": [mean, std, n]}}} over the runs
  of each group; "val" is the validation criterion the learner was selected on (the best
  epoch's validation MAE, or log loss for binary labels; a baseline's grid choice), None if
  there was no selection."""
  out = {}
  for label, runs in groups.items():
    learners = sorted({name for r in runs for name in r["results"]})
    out[label] = {}
    for name in learners:
      out[label][name] = {}
      for s in SCENARIOS:
        out[label][name][s] = {}
        for m in metrics:
          out[label][name][s][m] = mean_std(r["results"][name][s].get(m) for r in runs if name in r["results"])
      out[label][name]["val"] = mean_std(_val(r.get("training", {}).get(name, {})) for r in runs)
  return out


def _val(training: dict):
  return training.get("best_val_mae", training.get("val_mae"))


def to_markdown(summary: dict, metrics: list[str]) -> str:
  head = "| run | learner | val | " + " | ".join(f"{s} {m}" for s in SCENARIOS for m in metrics) + " |"
  lines = [head, "|" + "---|" * (3 + len(SCENARIOS) * len(metrics))]
  for label, learners in summary.items():
    for name, res in learners.items():
      v = res.get("val")
      cells = ["–" if v is None else f"{v[0]:.4f} ± {v[1]:.4f}"]
      for s in SCENARIOS:
        for m in metrics:
          v = res[s][m]
          cells.append("–" if v is None else f"{v[0]:.4f} ± {v[1]:.4f}")
      lines.append(f"| {label} | {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


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
  print(md)
  if FLAGS.out:
    write_text_atomic(FLAGS.out, md)
    write_json_atomic(os.path.splitext(FLAGS.out)[0] + ".json", summary)


if __name__ == "__main__":
  cli.run(main)
