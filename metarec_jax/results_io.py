"""Results as the binaries wrote them, loaded and checked field by field for the figures and
reports: a compare `results.json`, a train run's `final_metrics.json` or its folder,
`metrics.jsonl` files, benchmark JSON. A missing or malformed field is one `ResultsError`
naming the file and the field."""

from __future__ import annotations

import dataclasses
import glob
import json
import os

import numpy as np

from metarec_jax.data.tasks import SCENARIOS

METRIC_LABELS = {
  "mae": "MAE (rating points, lower is better)",
  "rmse": "RMSE (rating points, lower is better)",
  "ndcg@3": "nDCG@3 (higher is better)",
  "ndcg@5": "nDCG@5 (higher is better)",
  "auc": "AUC (higher is better)",
  "recall@20": "Recall@20 (higher is better)",
  "ndcg@100": "nDCG@100 (higher is better)",
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
        raise ResultsError(
          f"{path}: field {where}'results'.{name!r}.{s!r} is not a scenario; expected one of {', '.join(SCENARIOS)}"
        )
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
    raise ResultsError(
      f"{path}: not a results file; expected a compare results.json (field 'runs'), a "
      "final_metrics.json (field 'results') or a benchmark JSON (field 'configs')"
    )


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
        res.curves.append(
          {"label": os.path.basename(os.path.dirname(os.path.abspath(jl))), "records": _read_jsonl(jl), "source": jl}
        )
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
      vals = [
        r["final"]["results"][n][s].get(metric)
        for r in res.runs
        if n in r["final"]["results"] and s in r["final"]["results"][n]
      ]
      vals = [float(v) for v in vals if v is not None]
      if vals:
        out[n][s] = (float(np.mean(vals)), float(np.std(vals)), len(vals))
  return out


def few_shot_data(res: Results) -> dict[str, dict[str, dict[int, list[dict]]]]:
  """{scenario: {learner: {k: [metrics per run]}}} from final_metrics.json's `few_shot`."""
  out: dict = {}
  for r in res.runs:
    fs = r["final"].get("few_shot")
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
