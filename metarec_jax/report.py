"""A self-contained report.md next to a compare run's results: commands, tables and figures."""

from __future__ import annotations

import os
import platform

import jax

from metarec_jax import plots, writers
from metarec_jax.data.tasks import SCENARIOS


def write_report(out_dir: str, table_md: str, command: str, total_s: float | None = None,
                 formats=("png", "svg")) -> str:
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
  lines = [f"# Comparison report: {res.dataset or 'dataset'}", "",
           f"Learners × scenarios × seeds {', '.join(map(str, seeds))}, each learner chosen by early stopping on "
           "validation users; test users are only scored.", "",
           "## Commands", "", "Produced by:", "", "```bash", command, "```", "",
           "Figures again from the JSON:", "", "```bash",
           f"python -m experiments.plot --results={out_dir} --out={fig_dir}", "```", "",
           "## Set-up", "",
           f"- machine: {platform.platform()}, {os.cpu_count()} CPU cores, jax {jax.__version__} on "
           f"{jax.default_backend()}" + (f"; total wall time {total_s:.0f} s" if total_s is not None else ""),
           f"- dataset: {ds.get('name', '?')}: {ds.get('n_users', '?')} users, {ds.get('n_items', '?')} items, "
           f"{ds.get('n_ratings', '?')} ratings; {ds.get('n_train_tasks', '?')} meta-training and "
           f"{ds.get('n_val_tasks', '?')} validation tasks",
           "- test tasks per scenario: " + ", ".join(f"{s} {ds.get('n_test_tasks', {}).get(s, '?')}" for s in SCENARIOS),
           "", "| learner | family |", "|---|---|"]
  lines += [f"| {n} | {fam.get(n, '?')} |" for n in learners]
  lines += [""]
  captions = {"comparison": "Learners × scenarios: MAE and nDCG@3, mean ± std over seeds.",
              "few_shot": "Few-shot curve: metric against the support size k, ±std band over seeds.",
              "learning_curves": "Learning curves: meta-training loss and validation MAE per epoch, one line per run."}
  if figures:
    lines += ["## Figures", ""]
    for name, paths in figures.items():
      png = next((p for p in paths if p.endswith(".png")), paths[0])
      lines += [f"![{name}]({os.path.relpath(png, out_dir)})", "", captions[name], ""]
  lines += ["## Tables", "", table_md]
  path = os.path.join(out_dir, "report.md")
  writers.write_text_atomic(path, "\n".join(lines))
  return path
