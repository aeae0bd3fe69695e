"""Figures from the JSON the binaries write: few-shot curves, learning curves, comparison bars, speed.

Loading and drawing are separate. `load_results(paths)` reads whatever the binaries wrote
(a compare `results.json`, a train run's `final_metrics.json` or its folder, `metrics.jsonl`
files, benchmark JSON) into one `Results`, and checks every field a figure needs, raising
`ResultsError` with the file and the field. The `*_figure` functions take a `Results` and
return a matplotlib Figure (Agg backend); `save_figure` writes PNG/SVG atomically.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from metarec_jax import writers  # noqa: E402
from metarec_jax.data.tasks import SCENARIOS  # noqa: E402

METRIC_LABELS = {
    "mae": "MAE (rating points, lower is better)",
    "rmse": "RMSE (rating points, lower is better)",
    "ndcg@3": "nDCG@3 (higher is better)",
    "ndcg@5": "nDCG@5 (higher is better)",
}
FAMILY_ORDER = ("baseline", "optimisation", "model", "metric")


class ResultsError(ValueError):
  """A results file that is missing, unreadable or lacks a field a figure needs."""


@dataclasses.dataclass
class Results:
  dataset: str = ""
  runs: list = dataclasses.field(default_factory=list)  # [{"learner", "seed", "final", "source"}]
  curves: list = dataclasses.field(default_factory=list)  # [{"label", "records", "source"}]
  benches: list = dataclasses.field(default_factory=list)  # [{"configs", "machine", "source"}]
  commands: list = dataclasses.field(default_factory=list)


def _read_json(path: str):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except FileNotFoundError:
    raise ResultsError(f"{path}: no such file") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ResultsError(f"{path}: not valid JSON ({e})") from None


def _need(obj, keys: tuple, path: str, where: str, expected: str):
  for k in keys:
    if not isinstance(obj, dict) or k not in obj:
      raise ResultsError(f"{path}: field {where}{k!r} is missing; expected {expected}")
    obj, where = obj[k], f"{where}{k!r}."
  return obj


def _check_final(final, path: str, where: str) -> None:
  results = _need(final, ("results",), path, where, "the final metrics of a train run")
  if not isinstance(results, dict) or not results:
    raise ResultsError(f"{path}: field {where}'results' is empty; expected one entry per learner")
  for name, res in results.items():
    if not isinstance(res, dict):
      raise ResultsError(f"{path}: field {where}'results'.{name!r} is not an object of scenarios")
    for s, m in res.items():
      if s not in SCENARIOS:
        raise ResultsError(f"{path}: field {where}'results'.{name!r}.{s!r} is not a scenario; "
                           f"expected one of {', '.join(SCENARIOS)}")
      if not isinstance(m, dict):
        raise ResultsError(f"{path}: field {where}'results'.{name!r}.{s!r} is not an object of metrics")


def _read_jsonl(path: str) -> list[dict]:
  records = []
  try:
    with open(path, encoding="utf-8") as f:
      for i, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          rec = json.loads(line)
        except json.JSONDecodeError as e:
          raise ResultsError(f"{path}, line {i}: not valid JSON ({e})") from None
        if not isinstance(rec, dict) or "epoch" not in rec:
          raise ResultsError(f"{path}, line {i}: field 'epoch' is missing; expected one record per epoch")
        records.append(rec)
  except FileNotFoundError:
    raise ResultsError(f"{path}: no such file") from None
  if not records:
    raise ResultsError(f"{path}: empty; expected one JSON record per epoch")
  return records


def _add_json(res: Results, path: str) -> None:
  obj = _read_json(path)
  if not isinstance(obj, dict):
    raise ResultsError(f"{path}: expected a JSON object, got {type(obj).__name__}")
  if "runs" in obj:  # experiments.compare
    runs = obj["runs"]
    if not isinstance(runs, list) or not runs:
      raise ResultsError(f"{path}: field 'runs' is empty; expected one entry per (learner, seed)")
    for i, r in enumerate(runs):
      for k in ("learner", "seed", "final"):
        _need(r, (k,), path, f"runs[{i}].", "learner, seed and final metrics")
      _check_final(r["final"], path, f"runs[{i}].'final'.")
      res.runs.append({**r, "source": path})
      res.dataset = res.dataset or r["final"].get("dataset", {}).get("name", "")
    if obj.get("command"):
      res.commands.append(obj["command"])
    folder = os.path.dirname(path)
    for r in runs:  # the run folders' learning curves, when they sit next to the results
      jl = os.path.join(folder, f"{r['learner']}_seed{r['seed']}", "metrics.jsonl")
      if os.path.isfile(jl):
        res.curves.append({"label": f"{r['learner']} seed {r['seed']}", "records": _read_jsonl(jl), "source": jl})
  elif "configs" in obj or "machine" in obj:  # experiments.benchmark
    configs = _need(obj, ("configs",), path, "", "the benchmark's list of configurations")
    if not isinstance(configs, list) or not configs:
      raise ResultsError(f"{path}: field 'configs' is empty; expected benchmark configurations")
    for i, c in enumerate(configs):
      for k in ("learner", "meta_batch_size", "tasks_per_s"):
        _need(c, (k,), path, f"configs[{i}].", "learner, meta_batch_size and tasks_per_s")
    res.benches.append({"configs": configs, "machine": obj.get("machine", {}), "source": path})
    if obj.get("command"):
      res.commands.append(obj["command"])
  elif "results" in obj:  # one experiments.train run
    _check_final(obj, path, "")
    res.runs.append({"learner": obj.get("learner", "?"), "seed": _seed_of(path), "final": obj, "source": path})
    res.dataset = res.dataset or obj.get("dataset", {}).get("name", "")
  else:
    raise ResultsError(f"{path}: not a results file; expected a compare results.json (field 'runs'), a "
                       "final_metrics.json (field 'results') or a benchmark JSON (field 'configs')")


def _seed_of(path: str):
  cfg = os.path.join(os.path.dirname(path), "config.json")
  if os.path.isfile(cfg):
    return _read_json(cfg).get("seed")
  return None


def load_results(paths: list[str]) -> Results:
  """Reads result files and folders into one Results; ResultsError names the file and field."""
  res = Results()
  if not paths:
    raise ResultsError("no results given; pass a compare folder, a run folder or a JSON file")
  for p in paths:
    if os.path.isdir(p):
      if os.path.isfile(os.path.join(p, "results.json")):  # a compare folder (its run folders' curves too)
        _add_json(res, os.path.join(p, "results.json"))
        continue
      jls = sorted(glob.glob(os.path.join(p, "metrics.jsonl")) + glob.glob(os.path.join(p, "*", "metrics.jsonl")))
      if os.path.isfile(os.path.join(p, "final_metrics.json")):  # a train run folder
        _add_json(res, os.path.join(p, "final_metrics.json"))
      elif not jls:
        raise ResultsError(f"{p}: no results.json, final_metrics.json or metrics.jsonl in this folder")
      for jl in jls:
        res.curves.append({"label": os.path.basename(os.path.dirname(os.path.abspath(jl))),
                           "records": _read_jsonl(jl), "source": jl})
    elif p.endswith(".jsonl"):
      res.curves.append({"label": os.path.basename(os.path.dirname(p)) or p, "records": _read_jsonl(p), "source": p})
    else:
      _add_json(res, p)
  return res


# ---------------------------------------------------------------------------------------------
# Summaries (pure functions of the loaded results).


def families(res: Results) -> dict[str, str]:
  out = {}
  for r in res.runs:
    out.update(r["final"].get("families", {}))
  return out


def learner_order(res: Results) -> list[str]:
  """Learners in the order first seen, baselines last, grouped by family."""
  fam = families(res)
  names = []
  for r in res.runs:
    for n in r["final"]["results"]:
      if n not in names:
        names.append(n)
  rank = {f: i for i, f in enumerate(FAMILY_ORDER)}
  return sorted(names, key=lambda n: (rank.get(fam.get(n, ""), len(rank)), names.index(n)))


def scenario_stats(res: Results, metric: str) -> dict[str, dict[str, tuple[float, float, int]]]:
  """{learner: {scenario: (mean, std, n)}} over the runs that have the metric."""
  out = {}
  for n in learner_order(res):
    out[n] = {}
    for s in SCENARIOS:
      vals = [r["final"]["results"][n][s].get(metric) for r in res.runs
              if n in r["final"]["results"] and s in r["final"]["results"][n]]
      vals = [float(v) for v in vals if v is not None]
      if vals:
        out[n][s] = (float(np.mean(vals)), float(np.std(vals)), len(vals))
  return out


def few_shot_data(res: Results) -> dict[str, dict[str, dict[int, list[dict]]]]:
  """{scenario: {learner: {k: [metrics per run]}}} from `few_shot` (or the older `few_shot_user_cold`)."""
  out: dict = {}
  for r in res.runs:
    fs = r["final"].get("few_shot")
    if fs is None and "few_shot_user_cold" in r["final"]:
      fs = {"user_cold": r["final"]["few_shot_user_cold"]}
    for s, by_learner in (fs or {}).items():
      if not isinstance(by_learner, dict):
        raise ResultsError(f"{r['source']}: field 'few_shot'.{s!r} is not an object of learners")
      for n, by_k in by_learner.items():
        for k, m in by_k.items():
          try:
            kk = int(k)
          except ValueError:
            raise ResultsError(f"{r['source']}: few-shot support size {k!r} of {n!r} is not an integer") from None
          out.setdefault(s, {}).setdefault(n, {}).setdefault(kk, []).append(m)
  return out


# ---------------------------------------------------------------------------------------------
# Figures.


def _title(kind: str, res: Results) -> str:
  return f"{kind}: {res.dataset}" if res.dataset else kind


def few_shot_figure(res: Results, metric: str = "mae"):
  data = few_shot_data(res)
  if not data:
    raise ResultsError("no few-shot results (field 'few_shot' or 'few_shot_user_cold'); run compare or "
                       "train with --few_shot_ks")
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


def comparison_figure(res: Results, metrics=("mae", "ndcg@3")):
  if not res.runs:
    raise ResultsError("no learner results (compare results.json or final_metrics.json) to compare")
  order = learner_order(res)
  colours = _colours(order)
  fig, axes = plt.subplots(len(metrics), 1, figsize=(max(10, 0.22 * len(order) * len(SCENARIOS) + 3), 4.2 * len(metrics)),
                           squeeze=False)
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
  if c.get("inner_steps") is not None and c["learner"] in ("maml", "fomaml", "metasgd", "anil", "reptile"):
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
