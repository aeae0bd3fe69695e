"""Mean ± std tables over several runs of experiments.train (experiments/aggregate.py)."""

from __future__ import annotations

import glob
import json
import os

from metarec_jax.data.tasks import SCENARIOS
from metarec_jax.writers import mean_std


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
          out[label][name][s][m] = mean_std(r["results"][name].get(s, {}).get(m) for r in runs if name in r["results"])
      out[label][name]["val"] = mean_std(_val(r.get("training", {}).get(name, {})) for r in runs)
  return out


def _val(training: dict):
  """The validation criterion a learner was chosen on (best_val/<criterion> or val/<criterion>)."""
  return next((v for k, v in training.items() if k.startswith(("best_val/", "val/"))), None)


def to_markdown(summary: dict, metrics: list[str]) -> str:
  """The table of `summarize`, with a column per scenario (those some run has) and metric."""
  scenarios = [
    s
    for s in SCENARIOS
    if any(res[s][m] is not None for ls in summary.values() for res in ls.values() for m in metrics)
  ]
  head = "| run | learner | val | " + " | ".join(f"{s} {m}" for s in scenarios for m in metrics) + " |"
  lines = [head, "|" + "---|" * (3 + len(scenarios) * len(metrics))]
  for label, learners in summary.items():
    for name, res in learners.items():
      v = res.get("val")
      cells = ["–" if v is None else f"{v[0]:.4f} ± {v[1]:.4f}"]
      for s in scenarios:
        for m in metrics:
          v = res[s][m]
          cells.append("–" if v is None else f"{v[0]:.4f} ± {v[1]:.4f}")
      lines.append(f"| {label} | {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def few_shot_markdown(groups: dict[str, list[dict]], metric: str, scenario: str = "user_cold") -> str:
  """Mean ± std of `metric` at each few-shot support size k (final_metrics.json's `few_shot`),
  a row per group and learner."""
  ks = sorted(
    {
      int(k)
      for runs in groups.values()
      for r in runs
      for ls in r.get("few_shot", {}).get(scenario, {}).values()
      for k in ls
    }
  )
  lines = ["| run | learner | " + " | ".join(f"k={k}" for k in ks) + " |", "|" + "---|" * (2 + len(ks))]
  for label, runs in groups.items():
    names = sorted({n for r in runs for n in r.get("few_shot", {}).get(scenario, {})})
    for name in names:
      cells = []
      for k in ks:
        v = mean_std(
          r["few_shot"][scenario].get(name, {}).get(str(k), {}).get(metric)
          for r in runs
          if r.get("few_shot", {}).get(scenario)
        )
        cells.append("–" if v is None else f"{v[0]:.4f} ± {v[1]:.4f}")
      lines.append(f"| {label} | {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _leaves(tree, prefix=()):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _leaves(v, prefix + (str(k),))
  elif isinstance(tree, list):
    for i, v in enumerate(tree):
      yield from _leaves(v, prefix + (str(i),))
  else:
    yield "/".join(prefix), tree


def diff_runs(old: dict, new: dict, *, rtol: float = 1e-5, ignore=("timing",), rename: dict | None = None) -> dict:
  """Leaf-by-leaf comparison of two final_metrics.json trees: {"equal" (a count), "close"
  (within rtol) and "differ": [(path, old, new)], "only_old": [paths], "only_new": [paths]}; top-level keys in
  `ignore` are skipped, and `rename` maps old key names to new ones (a renamed field)."""
  rename = rename or {}

  def renamed(path):
    return "/".join(rename.get(k, k) for k in path.split("/"))

  a = {renamed(p): v for p, v in _leaves({k: v for k, v in old.items() if k not in ignore})}
  b = {p: v for p, v in _leaves({k: v for k, v in new.items() if k not in ignore})}
  out = {
    "equal": 0,
    "close": [],
    "differ": [],
    "only_old": sorted(set(a) - set(b)),
    "only_new": sorted(set(b) - set(a)),
  }
  for p in sorted(set(a) & set(b)):
    x, y = a[p], b[p]
    if x == y:
      out["equal"] += 1
    elif isinstance(x, (int, float)) and isinstance(y, (int, float)) and abs(x - y) <= rtol * max(abs(x), abs(y)):
      out["close"].append((p, x, y))
    else:
      out["differ"].append((p, x, y))
  return out
