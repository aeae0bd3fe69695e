"""Learners × seeds on one Config: each run through `train_and_evaluate`, then the tables."""

from __future__ import annotations

import dataclasses
import json
import os
import time

from absl import logging

from metarec_jax import report
from metarec_jax.config import Config
from metarec_jax.progress import Progress, eta
from metarec_jax.protocol import TIMING, train_and_evaluate
from metarec_jax.writers import write_json_atomic, write_text_atomic


def _headline(m: dict) -> str:
  if "mae" in m:
    return f"MAE {m['mae']:.4f}"
  if "recall@20" in m:
    return f"Recall@20 {m['recall@20']:.4f}"
  return f"AUC {m.get('auc', float('nan')):.4f}"


def compare(
  base: Config, learner_names: list[str], seeds: list[int], out: str, *, write_report: bool = True, command: str = ""
) -> str:
  """Runs every (seed, learner) on `base` (the baselines with the first learner of each seed),
  writes <out>/results.json, table.md and (report) report.md; returns the markdown."""
  for n in learner_names:
    dataclasses.replace(base, learner=n).validate()  # an unknown name fails before any run
  t_start = time.perf_counter()
  runs = []
  bar = Progress("compare", len(seeds) * len(learner_names), "run", every_s=float("inf")).__enter__()
  for seed in seeds:
    for j, name in enumerate(learner_names):
      config = dataclasses.replace(base, learner=name, seed=seed, baselines=base.baselines if j == 0 else ())
      t0 = time.perf_counter()
      workdir = os.path.join(out, f"{name}_seed{seed}")
      final = train_and_evaluate(config, workdir)
      with open(os.path.join(workdir, TIMING)) as f:
        timing = json.load(f)
      runs.append({"learner": name, "seed": seed, "final": final, "timing": timing, "wall_s": time.perf_counter() - t0})
      cold = final["results"][name]["user_cold"]
      bar.update(1, note=f"{name} seed {seed}")
      left = eta(bar.done, bar.total, time.perf_counter() - t_start)
      logging.info(
        "compare %d/%d: %s seed %d: user-cold %s (%.0fs%s)",
        bar.done,
        bar.total,
        name,
        seed,
        _headline(cold),
        runs[-1]["wall_s"],
        f"; {left}" if left else "",
      )
  bar.__exit__(None, None, None)
  md, summary = report.build_table(runs, learner_names, list(base.few_shot_ks))
  total = time.perf_counter() - t_start
  stacked = (
    f"Every trained learner, and the pooled and fine-tuned baselines, predicts the residual of "
    f"`{base.base}` (cross-fitted over {base.base_folds} folds of the training users).\n\n"
    if base.base
    else ""
  )
  header = (
    f"# {base.dataset}: learners × scenarios × seeds {seeds}\n\nCommand: `{command}`\n\n"
    f"{stacked}Total wall time: {total:.0f} s\n\n"
  )
  os.makedirs(out, exist_ok=True)
  write_json_atomic(
    os.path.join(out, "results.json"), {"command": command, "total_s": total, "summary": summary, "runs": runs}
  )
  write_text_atomic(os.path.join(out, "table.md"), header + md)
  if write_report:
    report.write_report(out, md, command, total)
  return header + md
