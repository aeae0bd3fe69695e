"""Figures from the JSON the binaries write: few-shot curves, learning curves, comparison bars, speed.

Loading and drawing are separate. `load_results(paths)` reads whatever the binaries wrote
(a compare `results.json`, a train run's `final_metrics.json` or its folder, `metrics.jsonl`
files, benchmark JSON) into one `Results`, and checks every field a figure needs, raising
`ResultsError` with the file and the field. The `*_figure` functions take a `Results` and
return a matplotlib Figure (Agg backend); `save_figure` writes PNG/SVG atomically.
"""

from __future__ import annotations


import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from metarec_jax import writers  # noqa: E402
from metarec_jax.data.tasks import SCENARIOS  # noqa: E402
from metarec_jax.results_io import (  # noqa: E402, F401 (the loading half, re-exported)
  FAMILY_ORDER,
  METRIC_LABELS,
  Results,
  ResultsError,
  families,
  few_shot_data,
  learner_order,
  load_results,
  scenario_stats,
)

# ---------------------------------------------------------------------------------------------
# Figures.


def _title(kind: str, res: Results) -> str:
  return f"{kind}: {res.dataset}" if res.dataset else kind


def default_metrics(res: Results) -> tuple[str, str]:
  """The two metrics the figures show: MAE / nDCG@3 (ratings), AUC / nDCG@5 (binary labels) or
  Recall@20 / nDCG@100 (the ranking protocol), from the first run's metrics."""
  for r in res.runs:
    for scen in r["final"]["results"].values():
      for m in scen.values():
        if "recall@20" in m:
          return "recall@20", "ndcg@100"
        if "mae" in m:
          return "mae", "ndcg@3"
        if "auc" in m:
          return "auc", "ndcg@5"
  return "mae", "ndcg@3"


def few_shot_figure(res: Results, metric: str | None = None):
  metric = metric or default_metrics(res)[0]
  data = few_shot_data(res)
  if not data:
    raise ResultsError("no few-shot results (field 'few_shot'); run compare or train with --few_shot_ks")
  scen = [s for s in SCENARIOS if s in data]
  fig, axes = plt.subplots(1, len(scen), figsize=(6.5 * len(scen), 4.8), squeeze=False)
  order = [n for n in learner_order(res) if any(n in data[s] for s in scen)]
  colours = _colours(order)
  fam = families(res)
  for ax, s in zip(axes[0], scen):
    for n in order:
      if n not in data[s]:
        continue
      ks = sorted(data[s][n])
      vals = [[m.get(metric) for m in data[s][n][k]] for k in ks]
      if any(v is None for vs in vals for v in vs):
        raise ResultsError(f"few-shot results of {n!r} on {s} lack metric {metric!r}")
      mean = np.array([np.mean(v) for v in vals])
      std = np.array([np.std(v) for v in vals])
      style = "--" if fam.get(n) == "baseline" else "-"
      ax.plot(ks, mean, style, marker="o", ms=3, color=colours[n], label=n)
      ax.fill_between(ks, mean - std, mean + std, color=colours[n], alpha=0.15, lw=0)
    ax.set_xscale("log")
    all_k = sorted({k for n in data[s] for k in data[s][n]})
    ax.set_xticks(all_k, [str(k) for k in all_k])
    ax.set_xlabel("support size k (ratings given by the user)")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.set_title(f"{s.replace('_', '-')}")
    ax.grid(alpha=0.3)
  n_seeds = max(len(v) for d in data.values() for by_k in d.values() for v in by_k.values())
  fig.suptitle(_title(f"Few-shot curve, {metric} against support size (mean ± std over {n_seeds} seeds)", res))
  axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
  fig.tight_layout()
  return fig


def learning_curve_figure(res: Results, val_metric: str = "val/mae"):
  if not res.curves:
    raise ResultsError("no learning curves (metrics.jsonl) in the results")
  fig, (ax_l, ax_v) = plt.subplots(1, 2, figsize=(13, 4.8))
  lines, seen = [], set()
  for c in res.curves:
    by_learner: dict[str, list[dict]] = {}
    for rec in c["records"]:
      by_learner.setdefault(rec.get("learner", ""), []).append(rec)
    for learner, recs in by_learner.items():
      # The pooled network is trained once per seed and logged by every run of that seed: draw it once.
      key = (learner, tuple((r["epoch"], r.get("train/loss"), r.get(val_metric)) for r in recs))
      if key not in seen:
        seen.add(key)
        lines.append((learner or c["label"], recs, c["source"]))
  colours = _colours(list(dict.fromkeys(l for l, _, _ in lines)))
  labelled = set()
  for learner, recs, source in lines:
    ep = [r["epoch"] for r in recs]
    if any(not isinstance(e, (int, float)) for e in ep):
      raise ResultsError(f"{source}: field 'epoch' is not a number in every record")
    loss = [r.get("train/loss") for r in recs]
    val = [r.get(val_metric) for r in recs]
    if all(v is None for v in loss) and all(v is None for v in val):
      raise ResultsError(f"{source}: no 'train/loss' or {val_metric!r} field in any record")
    label = None if learner in labelled else learner
    labelled.add(learner)
    ax_l.plot(ep, [np.nan if v is None else v for v in loss], color=colours[learner], label=label, lw=1)
    ax_v.plot(ep, [np.nan if v is None else v for v in val], color=colours[learner], label=label, lw=1)
  drawn = len(lines)
  ax_l.set_xlabel("epoch")
  ax_l.set_ylabel("meta-training loss (MSE on query ratings, stars²)")
  ax_v.set_xlabel("epoch")
  ax_v.set_ylabel(f"validation {METRIC_LABELS.get(val_metric.split('/')[-1], val_metric)}")
  for ax in (ax_l, ax_v):
    ax.grid(alpha=0.3)
  ax_v.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
  fig.suptitle(_title(f"Learning curves ({drawn} runs, one colour per learner)", res))
  fig.tight_layout()
  return fig


def comparison_figure(res: Results, metrics=None):
  if not res.runs:
    raise ResultsError("no learner results (compare results.json or final_metrics.json) to compare")
  metrics = metrics or default_metrics(res)
  order = learner_order(res)
  colours = _colours(order)
  fig, axes = plt.subplots(
    len(metrics), 1, figsize=(max(10, 0.22 * len(order) * len(SCENARIOS) + 3), 4.2 * len(metrics)), squeeze=False
  )
  n_seeds = max(len([r for r in res.runs if n in r["final"]["results"]]) for n in order)
  for ax, metric in zip(axes[:, 0], metrics):
    stats = scenario_stats(res, metric)
    if not any(stats[n] for n in order):
      raise ResultsError(f"no run has metric {metric!r}")
    width = 0.8 / len(order)
    lo = []
    for j, n in enumerate(order):
      xs = [i + (j - (len(order) - 1) / 2) * width for i, s in enumerate(SCENARIOS) if s in stats[n]]
      ms = [stats[n][s][0] for s in SCENARIOS if s in stats[n]]
      ss = [stats[n][s][1] for s in SCENARIOS if s in stats[n]]
      lo += [m - s for m, s in zip(ms, ss)]
      ax.bar(xs, ms, width, yerr=ss, color=colours[n], label=n, capsize=1.5, error_kw={"lw": 0.6})
    hi = max(stats[n][s][0] + stats[n][s][1] for n in order for s in stats[n])
    ax.set_ylim(min(lo) - 0.05 * (hi - min(lo)) - 0.02, hi + 0.05 * (hi - min(lo)) + 0.01)
    ax.set_xticks(range(len(SCENARIOS)), [s.replace("_", "-") for s in SCENARIOS])
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.set_xlabel("scenario")
    ax.grid(axis="y", alpha=0.3)
  axes[0, 0].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
  fig.suptitle(_title(f"Learners × scenarios (mean ± std over {n_seeds} seeds)", res))
  fig.tight_layout()
  return fig


def _bench_key(c: dict) -> str:
  parts = [c["learner"]]
  if c.get("inner_steps") is not None:  # the benchmark writes None for learners without an inner loop
    parts.append(f"{c['inner_steps']} step{'s' if c['inner_steps'] != 1 else ''}")
    if c.get("adapt") and c["adapt"] != "head":
      parts.append(f"adapt={c['adapt']}")
  if c.get("task_chunk"):
    parts.append(f"chunk {c['task_chunk']}")
  return ", ".join(parts)


def speed_figure(res: Results):
  if not res.benches:
    raise ResultsError("no benchmark results (a JSON with field 'configs') to draw")
  fig, ax = plt.subplots(figsize=(9, 5.5))
  lines: dict[str, dict[int, float]] = {}
  loops: dict[str, dict[int, float]] = {}
  machines = []
  for b in res.benches:
    machines.append(b["machine"].get("device_kind") or b["machine"].get("platform") or "?")
    for c in b["configs"]:
      B = int(c["meta_batch_size"])
      lines.setdefault(_bench_key(c), {})[B] = float(c["tasks_per_s"])
      for base, name in (("torch_loop", "PyTorch per-task loop"), ("jax_loop", "JAX per-task loop")):
        if isinstance(c.get(base), dict) and c[base].get("step", {}).get("median_s"):
          # the loop runs one task at a time: task chunking does not apply to it
          key = _bench_key({**c, "task_chunk": 0})
          loops.setdefault(f"{name} ({key})", {})[B] = B / c[base]["step"]["median_s"]
  sweeps = {k: v for k, v in lines.items() if len(v) > 1}
  omitted = len(lines) - len(sweeps) if sweeps else 0
  lines = sweeps or lines  # single-batch-size configurations only when nothing was swept
  colours = _colours(list(lines))
  for key, pts in lines.items():
    bs = sorted(pts)
    ax.plot(bs, [pts[b] for b in bs], marker="o", ms=3, color=colours[key], label=key)
  styles = {"PyTorch": ":", "JAX": "-."}
  loop_colours = _colours(list(loops), cmap="Greys", lo=0.45)
  for key, pts in loops.items():
    # A per-task loop's throughput does not depend on the meta-batch: draw it across the x range.
    rate = float(np.median(list(pts.values())))
    ax.axhline(rate, ls=styles[key.split()[0]], color=loop_colours[key], lw=1.2, label=f"{key}: {rate:.0f} tasks/s")
  notes = []
  if omitted:
    notes.append(f"{omitted} configuration{'s' if omitted != 1 else ''} measured at one meta-batch size only not drawn")
  if not loops:
    notes.append("no per-task-loop baseline in these benchmark files (run the targets suite)")
  if notes:
    ax.text(0.01, 0.01, "; ".join(notes), transform=ax.transAxes, fontsize=7, color="grey")
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xlabel("meta-batch size (tasks per step)")
  ax.set_ylabel("meta-training throughput (tasks/s)")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
  fig.suptitle(f"Meta-training speed on {', '.join(sorted(set(machines)))}")
  fig.tight_layout()
  return fig


def _colours(keys, cmap="tab20", lo=0.0):
  cm = plt.get_cmap(cmap)
  n = max(len(keys), 1)
  if cmap == "tab20":
    return {k: cm(i % 20) for i, k in enumerate(keys)}
  return {k: cm(lo + (1 - lo) * i / n) for i, k in enumerate(keys)}


def save_figure(fig, path_stem: str, formats=("png", "svg"), dpi: int = 110) -> list[str]:
  """Writes <path_stem>.<fmt> for each format atomically; closes the figure; returns the paths."""
  out = []
  for fmt in formats:
    with writers.atomic_path(f"{path_stem}.{fmt}") as tmp:
      fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
    out.append(f"{path_stem}.{fmt}")
  plt.close(fig)
  return out


FIGURES = {
  "few_shot": few_shot_figure,
  "learning_curves": learning_curve_figure,
  "comparison": comparison_figure,
  "speed": speed_figure,
}


def available(res: Results) -> list[str]:
  """The figures these results can make."""
  out = []
  if res.runs and few_shot_data(res):
    out.append("few_shot")
  if res.curves:
    out.append("learning_curves")
  if res.runs:
    out.append("comparison")
  if res.benches:
    out.append("speed")
  return out
