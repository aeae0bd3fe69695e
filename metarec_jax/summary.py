"""The texts a person reads: the table a run prints at its end (the learner and every baseline ×
the test scenarios, the main metrics, the best value of each scenario marked, the files
written), and `experiments.recommend`'s list and batch summary (`format_table`, `format_batch`).

  maml and 7 baselines on synthetic, test tasks; MAE (lower is better) / nDCG@3
  learner        warm             user_cold        item_cold        user_item_cold
  maml           0.735 / 0.722    0.737 / 0.728    0.842 / 0.600    0.825 / 0.612
  als_foldin     0.529*/ 0.876*   0.574*/ 0.871*   ...
"""

from __future__ import annotations

import math
import os

from metarec_jax.data.tasks import SCENARIOS

# (metric, lower is better) pairs shown for rating and binary runs.
RATING_COLUMNS = (("mae", True), ("ndcg@3", False))
BINARY_COLUMNS = (("auc", False), ("ndcg@3", False))
RANKING_COLUMNS = (("recall@20", False), ("ndcg@100", False))
LABELS = {"mae": "MAE", "auc": "AUC", "ndcg@3": "nDCG@3", "recall@20": "Recall@20", "ndcg@100": "nDCG@100"}


def _columns(results: dict) -> tuple[tuple[str, bool], ...]:
  first = next((m for res in results.values() for m in res.values() if _count(m)), {})
  cols = RATING_COLUMNS if "mae" in first else RANKING_COLUMNS if "recall@20" in first else BINARY_COLUMNS
  return tuple((k, low) for k, low in cols if k in first)


def summary_table(final: dict, workdir: str, files: tuple[str, ...] = ()) -> str:
  """The end-of-run table of a final_metrics.json dict (`*`: the best of each scenario's metric)."""
  results = final["results"]
  cols = _columns(results)
  scenarios = [s for s in SCENARIOS if any(_count(res.get(s, {})) for res in results.values())]
  best = {}
  for s in scenarios:
    for k, low in cols:
      vals = [res[s][k] for res in results.values() if _count(res.get(s, {})) and _finite(res[s].get(k))]
      if vals:
        best[s, k] = min(vals) if low else max(vals)
  n_base = len(results) - 1
  names = " / ".join(f"{LABELS.get(k, k)}{' (lower is better)' if low else ''}" for k, low in cols)
  lines = [
    f"{final['learner']} and {n_base} baseline{'s' if n_base != 1 else ''} on {final['dataset']['name']}, "
    f"test {'tasks' if 'n_test_tasks' in final['dataset'] else 'users'}; {names}; * the best of each scenario",
  ]
  width = max(len(n) for n in results) + 2
  cell = 7 * len(cols) + 3 * (len(cols) - 1) + 2
  lines.append(("learner".ljust(width) + "".join(s.ljust(cell) for s in scenarios)).rstrip())
  counts = final["dataset"].get("n_test_tasks") or {
    s: max(_count(r.get(s, {})) for r in results.values()) for s in scenarios
  }
  unit = "tasks" if "n_test_tasks" in final["dataset"] else "users"
  tasks = "".join(f"({counts[s]} {unit})".ljust(cell) for s in scenarios)
  lines.append(("".ljust(width) + tasks).rstrip())
  for name, res in results.items():
    row = name.ljust(width)
    for s in scenarios:
      m = res.get(s, {})
      parts = []
      for k, _ in cols:
        v = m.get(k) if _count(m) else None
        mark = "*" if _finite(v) and math.isclose(v, best.get((s, k), math.nan), rel_tol=0, abs_tol=5e-5) else " "
        parts.append(f"{v:.4f}{mark}" if _finite(v) else "   -   ")
      row += " / ".join(parts).ljust(cell)
    lines.append(row.rstrip())
  oracle = final["dataset"].get("oracle")
  if oracle:  # synthetic data: what the generator's true model scores
    row = "(true model)".ljust(width)
    for s in scenarios:
      row += " / ".join(f"{oracle[s][k]:.4f} " if _finite(oracle[s].get(k)) else "   -   " for k, _ in cols).ljust(cell)
    lines.append(row.rstrip() + "   <- the generator's noiseless ratings: the floor of any model")
  lines.append("")
  lines.append("wrote " + ", ".join(os.path.join(workdir, f) for f in files))
  return "\n".join(lines)


def _count(m: dict) -> int:
  """Test tasks (rating protocol) or test users (ranking protocol) behind a metrics dict."""
  return int(m.get("n_tasks", m.get("n_users", 0)) or 0)


def _finite(v) -> bool:
  return isinstance(v, (int, float)) and math.isfinite(v)


def format_table(res: dict) -> str:
  """The text a person reads for `recommend_for_new_user`'s result."""
  lines = []
  lines.append(
    f"{res['dataset']}, learner {res['learner']} (checkpoint step {res['checkpoint_step']}); "
    f"adapted to {len(res['ratings'])} ratings:"
  )
  for r in res["ratings"]:
    lines.append(f"  {r['rating']:g}  {r['item_id']}  {r['title'] or ''}")
  lines.append(f"top {len(res['top_k'])} of {res['n_candidates']} unrated items:")
  lines.append(f"  {'rank':>4}  {'item':>6}  {'score':>5}  title")
  for row in res["top_k"]:
    flag = "  (new item)" if row["new_item"] else ""
    lines.append(f"  {row['rank']:>4}  {row['item_id']!s:>6}  {row['score']:5.2f}  {row['title'] or ''}{flag}")
  return "\n".join(lines)


def format_batch(res: dict, out: str) -> str:
  """The text a person reads for `batch_recommend`'s result, written to `out`."""
  m, k = res["metrics"], res["k"]
  lines = [
    f"{res['dataset']} {res['scenario']}: {res['n_test_users']} test users, {res['n_candidates']} "
    f"candidates; P@{k} {m[f'precision@{k}']:.4f}  R@{k} {m[f'recall@{k}']:.4f}  HR@{k} "
    f"{m[f'hr@{k}']:.4f}  nDCG@{k} {m[f'ndcg@{k}']:.4f} over {int(m['n_users'])} users with a liked "
    f"held-out item; lists in {out}"
  ]
  p = res["popularity_metrics"]
  if p is None:
    lines.append("  popularity ranking: not defined here (no candidate has training ratings)")
  else:
    lines.append(
      f"  popularity ranking on the same candidates: P@{k} {p[f'precision@{k}']:.4f}  R@{k} "
      f"{p[f'recall@{k}']:.4f}  HR@{k} {p[f'hr@{k}']:.4f}  nDCG@{k} {p[f'ndcg@{k}']:.4f}"
    )
  return "\n".join(lines)
