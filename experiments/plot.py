"""Figures from the binaries' JSON: few-shot curves, learning curves, comparison bars, speed chart.

  python -m experiments.plot --results=runs/compare_ml100k --out=runs/compare_ml100k/figures
  python -m experiments.plot --results=experiments/results/scaling_cpu.json,experiments/results/targets_cpu.json \
      --figures=speed --out=docs

--results takes compare folders or results.json, train run folders or final_metrics.json,
metrics.jsonl files (or folders of run folders), and benchmark JSON. Every figure the inputs
allow is drawn (or only --figures), as <out>/<figure>.png and .svg. A missing or malformed
field is one error line naming the file and field, exit code 2.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from experiments import cli

from metarec_jax import plots

flags.DEFINE_list("results", [], "Result folders or JSON files (compare, train, metrics.jsonl, benchmark).")
flags.DEFINE_string("out", None, "Output folder for the figures.")
flags.DEFINE_list(
  "figures", [], f"Figures to draw (default: every one the inputs allow; from {', '.join(plots.FIGURES)})."
)
flags.DEFINE_string(
  "few_shot_metric",
  None,
  f"Metric of the few-shot curve ({', '.join(plots.METRIC_LABELS)}, ...; default: mae, auc or recall@20 by the runs).",
)
flags.DEFINE_list(
  "compare_metrics", None, "Metrics of the comparison chart (default: mae,ndcg@3, auc,ndcg@5 or recall@20,ndcg@100)."
)
flags.DEFINE_string("val_metric", "val/mae", "Validation metric of the learning curves (a metrics.jsonl field).")
flags.DEFINE_list("formats", ["png", "svg"], "Image formats.")
FLAGS = flags.FLAGS


def draw(
  res: plots.Results,
  names: list[str],
  out: str,
  *,
  few_shot_metric=None,
  compare_metrics=None,
  val_metric="val/mae",
  formats=("png", "svg"),
) -> dict[str, list[str]]:
  """Draws the named figures into `out`; returns {figure: [paths]}."""
  written = {}
  for name in names:
    if name == "few_shot":
      fig = plots.few_shot_figure(res, few_shot_metric)
    elif name == "learning_curves":
      fig = plots.learning_curve_figure(res, val_metric)
    elif name == "comparison":
      fig = plots.comparison_figure(res, tuple(compare_metrics) if compare_metrics else None)
    else:
      fig = plots.speed_figure(res)
    written[name] = plots.save_figure(fig, os.path.join(out, name), tuple(formats))
  return written


def main(argv):
  del argv
  try:
    if not FLAGS.out:
      raise plots.ResultsError("--out is required (the folder for the figures)")
    unknown = [f for f in FLAGS.figures if f not in plots.FIGURES]
    if unknown:
      raise plots.ResultsError(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(plots.FIGURES)}")
    bad_fmt = [f for f in FLAGS.formats if f not in ("png", "svg", "pdf")]
    if bad_fmt:
      raise plots.ResultsError(f"unsupported format(s) {', '.join(bad_fmt)}; choose from png, svg, pdf")
    res = plots.load_results(FLAGS.results)
    names = FLAGS.figures or plots.available(res)
    if not names:
      raise plots.ResultsError(f"nothing to draw from {', '.join(FLAGS.results)}")
    written = draw(
      res,
      names,
      FLAGS.out,
      few_shot_metric=FLAGS.few_shot_metric,
      compare_metrics=FLAGS.compare_metrics,
      val_metric=FLAGS.val_metric,
      formats=FLAGS.formats,
    )
  except plots.ResultsError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  for paths in written.values():
    for p in paths:
      print(p)


if __name__ == "__main__":
  cli.run(main)
