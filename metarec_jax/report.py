"""A self-contained report.md next to a compare run's results: commands, tables and figures."""

from __future__ import annotations

import os
import platform

import jax

from metarec_jax import plots, writers
from metarec_jax.writers import mean_std
from metarec_jax.data.tasks import SCENARIOS


def write_report(
  out_dir: str, table_md: str, command: str, total_s: float | None = None, formats=("png", "svg")
) -> str:
  """Draws the figures of <out_dir>/results.json into <out_dir>/figures and writes <out_dir>/report.md."""
  res = plots.load_results([out_dir])
  fig_dir = os.path.join(out_dir, "figures")
  figures = {}
  for name in ("comparison", "few_shot", "learning_curves"):
    if name in plots.available(res):
      fig = plots.FIGURES[name](res)
      figures[name] = plots.save_figure(fig, os.path.join(fig_dir, name), formats)
  fam = plots.families(res)
  learners = plots.learner_order(res)
  seeds = sorted({r["seed"] for r in res.runs}, key=str)
  ds = res.runs[0]["final"].get("dataset", {})
  lines = [
    f"# Comparison report: {res.dataset or 'dataset'}",
    "",
    f"Learners × scenarios × seeds {', '.join(map(str, seeds))}, each learner chosen by early stopping on "
    "validation users; test users are only scored.",
    "",
    "## Commands",
    "",
    "Produced by:",
    "",
    "```bash",
    command,
    "```",
    "",
    "Figures again from the JSON:",
    "",
    "```bash",
    f"python -m experiments.plot --results={out_dir} --out={fig_dir}",
    "```",
    "",
    "## Set-up",
    "",
    f"- machine: {platform.platform()}, {os.cpu_count()} CPU cores, jax {jax.__version__} on "
    f"{jax.default_backend()}" + (f"; total wall time {total_s:.0f} s" if total_s is not None else ""),
    f"- dataset: {ds.get('name', '?')}: {ds.get('n_users', '?')} users, {ds.get('n_items', '?')} items, "
    f"{ds.get('n_ratings', '?')} ratings; {ds.get('n_train_tasks', '?')} meta-training and "
    f"{ds.get('n_val_tasks', '?')} validation tasks",
    "- test tasks per scenario: " + ", ".join(f"{s} {ds.get('n_test_tasks', {}).get(s, '?')}" for s in SCENARIOS),
    "",
    "| learner | family |",
    "|---|---|",
  ]
  lines += [f"| {n} | {fam.get(n, '?')} |" for n in learners]
  lines += [""]
  captions = {
    "comparison": "Learners × scenarios: MAE and nDCG@3, mean ± std over seeds.",
    "few_shot": "Few-shot curve: metric against the support size k, ±std band over seeds.",
    "learning_curves": "Learning curves: meta-training loss and validation MAE per epoch, one line per run.",
  }
  if figures:
    lines += ["## Figures", ""]
    for name, paths in figures.items():
      png = next((p for p in paths if p.endswith(".png")), paths[0])
      lines += [f"![{name}]({os.path.relpath(png, out_dir)})", "", captions[name], ""]
  lines += ["## Tables", "", table_md]
  path = os.path.join(out_dir, "report.md")
  writers.write_text_atomic(path, "\n".join(lines))
  return path


# The compare binary's tables (experiments/compare.py).
METRICS = ("mae", "rmse", "ndcg@3", "ndcg@5")
BINARY_METRICS = ("auc", "logloss", "precision@5", "recall@5", "ndcg@5")  # binary labels (implicit data)
RANKING_METRICS = ("recall@20", "recall@50", "ndcg@100", "precision@10", "hr@10")  # --protocol=ranking


def table_metrics(runs: list[dict]) -> tuple[tuple[str, ...], str]:
  """The table's metrics and the few-shot curve's metric: rating metrics, or the binary ones
  when the runs have binary labels (no MAE)."""
  for r in runs:
    for res in r["final"]["results"].values():
      for m in res.values():
        if "recall@20" in m:
          return RANKING_METRICS, "recall@20"
        if m.get("n_tasks"):
          return (METRICS, "mae") if "mae" in m else (BINARY_METRICS, "auc")
  return METRICS, "mae"


def fmt(ms, digits=3):
  return "–" if ms is None else f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"


def build_table(runs: list[dict], learners: list[str], ks: list[int]) -> tuple[str, dict]:
  """runs: [{"learner", "seed", "final", "timing", "wall_s"}] -> (markdown, summary)."""
  names, families = [], {}
  for r in runs:
    families.update(r["final"]["families"])
    for n in r["final"]["results"]:
      if n not in names:
        names.append(n)
  metrics, curve_metric = table_metrics(runs)
  scenarios = [s for s in SCENARIOS if any(s in res for r in runs for res in r["final"]["results"].values())]
  summary = {"results": {}, "few_shot": {}, "timing": {}}
  for n in names:
    summary["results"][n] = {
      s: {
        m: mean_std([r["final"]["results"][n].get(s, {}).get(m) for r in runs if n in r["final"]["results"]])
        for m in metrics
      }
      for s in scenarios
    }
    cold = [r["final"]["few_shot"].get("user_cold", {}) for r in runs]
    summary["few_shot"][n] = {
      str(k): mean_std([c[n].get(str(k), {}).get(curve_metric) for c in cold if n in c]) for k in ks
    }
  for n in learners:
    mine = [r for r in runs if r["learner"] == n]
    tr = [r["timing"].get("training", {}).get(n, {}) for r in mine]
    summary["timing"][n] = {
      "wall_s": mean_std([r["wall_s"] for r in mine]),
      "tasks_per_s": mean_std([t.get("tasks_per_s") for t in tr]),
    }
  lines = []
  for m in metrics:
    lines += [
      f"### {m} (mean ± std over seeds)",
      "",
      "| learner | family | " + " | ".join(scenarios) + " |",
      "|---|---|" + "---|" * len(scenarios),
    ]
    for n in names:
      lines.append(f"| {n} | {families[n]} | " + " | ".join(fmt(summary["results"][n][s][m]) for s in scenarios) + " |")
    lines.append("")
  if ks:
    lines += [
      f"### user-cold {curve_metric.upper()} against support size k (few-shot curve)",
      "",
      "| learner | " + " | ".join(f"k={k}" for k in ks) + " |",
      "|---|" + "---|" * len(ks),
    ]
    for n in names:
      lines.append(f"| {n} | " + " | ".join(fmt(summary["few_shot"][n][str(k)]) for k in ks) + " |")
  lines += [
    "",
    "### time per run (training, evaluation and, for the first learner, the baselines)",
    "",
    "| learner | wall time (s) | meta-train tasks/s |",
    "|---|---|---|",
  ]
  for n in learners:
    t = summary["timing"][n]
    lines.append(f"| {n} | {fmt(t['wall_s'], 1)} | {fmt(t['tasks_per_s'], 0)} |")
  return "\n".join(lines) + "\n", summary
