"""train_and_evaluate: the learner under study and the baselines on the same splits, options
chosen on validation, and the final metrics. Results (`final_metrics.json`, schema
`FinalMetrics`) are kept apart from timings (`timing.json`), so the results of two runs
with the same seed and flags are byte-identical."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import TypedDict

import numpy as np
from absl import logging

from metarec_jax import runtime, writers
from metarec_jax.checkpoint import FitCheckpoints, checkpoint_dir
from metarec_jax.config import INIT_FROM_POOLED, Config, check_resumable
from metarec_jax.data.tasks import SCENARIOS
from metarec_jax.evaluate import score
from metarec_jax.learners import POOLED, REUSE, TRAIN, get_spec, warm_start
from metarec_jax.progress import Progress
from metarec_jax.setup import Setup, build_setup
from metarec_jax.training.loop import fit

FINAL_METRICS = "final_metrics.json"
TIMING = "timing.json"


class FinalMetrics(TypedDict):
  """final_metrics.json. Metrics dicts map a metric name (mae, rmse, ndcg@k, auc, logloss,
  ..., n_tasks) to its value."""

  # name, n_users, n_items, n_ratings, n_train_tasks, n_val_tasks, n_val_cold_tasks, n_val_new_items,
  # n_test_tasks, n_new_items[, protocol][, oracle: synthetic data's floor, scenario -> metrics]
  dataset: dict
  learner: str
  base: dict | None  # --base: {"name", "selected", "val/<criterion>", "folds"} of the fold-in stacked on
  families: dict[str, str]  # every evaluated learner -> its family
  results: dict[str, dict[str, dict]]  # learner -> scenario -> metrics
  # The learner under study, when it adapts by gradient steps: scenario -> {"mean_abs_change" (mean
  # |adapted - unadapted| query prediction), "<criterion>_without_adaptation"}; {} otherwise
  adaptation: dict[str, dict]
  few_shot: dict[str, dict]  # --few_shot_ks: scenario -> learner -> support size k -> metrics ({} without)
  # learner -> {"best_epoch", "best_val/<criterion>", "epochs_run", "steps"} for trained ones,
  # {"selected", "val/<criterion>"} for those with a validation grid
  training: dict[str, dict]


class Timing(TypedDict):
  """timing.json: seconds (and meta-training throughput); differs between identical runs."""

  data_s: float
  total_s: float
  learners: dict[
    str, float
  ]  # wall time of each row: its fits (the first to need the pooled network fits it), evaluation
  training: dict[str, dict]  # trained learner -> {"train_time_s", "tasks_per_s"}


def _fresh_workdir(config: Config, workdir: str, resume: bool) -> None:
  if resume:
    if not config.checkpoints:
      raise ValueError("--resume needs checkpoints (--checkpoints)")
    check_resumable(config, workdir)
  elif config.checkpoints:
    earlier = os.path.join(workdir, "checkpoints")
    if os.path.isdir(earlier) and os.listdir(earlier):
      # A fresh run must not mix its checkpoints with an earlier run's (saving skips a step that
      # exists, and the best step could restore the earlier run's parameters).
      raise ValueError(
        f"{earlier}: holds checkpoints of an earlier run; continue it with --resume, or use a new "
        "--workdir (experiments.compare: a new --out), or delete that folder"
      )


class _Run:
  """One run's fits and evaluations (the state `train_and_evaluate` threads through)."""

  def __init__(self, st: Setup, workdir: str, log, resume: bool):
    self.st, self.workdir, self.log, self.resume = st, workdir, log, resume
    self.trained, self.training, self.train_timing, self.results, self.families = {}, {}, {}, {}, {}
    self.few_shot, self.timing = {}, {}

  def fit(self, name: str, learner, *, exit_at_step=None):
    """The trained params of `learner` (registered as `name`), fitted once per run."""
    if name not in self.trained:
      st, c = self.st, self.st.config
      spec = get_spec(name)
      params = st.init_params(learner)
      if c.init == INIT_FROM_POOLED and spec.warm_start is not None:
        params = warm_start(name, params, self.fit(POOLED, st.make(POOLED)))
      ckpt = (
        FitCheckpoints(checkpoint_dir(self.workdir, learner.name), keep=c.keep_checkpoints, every=c.checkpoint_every)
        if c.checkpoints
        else None
      )
      params, info = fit(
        learner,
        params,
        st.data,
        c,
        n_tasks=len(st.scen.train),
        val_score=(lambda p: st.val_score(learner, p)) if len(st.scen.val) else None,
        select=st.scen.label.select_metric,
        log=self.log,
        ckpt=ckpt,
        resume=self.resume,
        exit_at_step=exit_at_step,
      )
      self.trained[name] = params
      self.training[name] = {k: v for k, v in info.items() if k not in ("train_time_s", "tasks_per_s")}
      self.train_timing[name] = {"train_time_s": info["train_time_s"], "tasks_per_s": info["tasks_per_s"]}
    return self.trained[name]

  def params_for(self, name: str, learner, **kw):
    spec = get_spec(name)
    if spec.source == TRAIN:
      return self.fit(name, learner, **kw)
    if spec.source == REUSE:
      return self.fit(spec.params_from, self.st.make(spec.params_from))
    return self.st.init_params(learner)

  def row(self, name: str, **kw):
    """Fits (or chooses on validation, when its spec has a grid) and evaluates the learner `name`;
    -> (learner, params, test predictions by scenario)."""
    st = self.st
    if get_spec(name).grid:
      best = st.select(name, lambda b: self.params_for(name, b))
      self.training[name] = {"selected": best["options"], f"val/{best['metric']}": best["val"]}
      learner, params, fn = best["learner"], best["params"], best["predict_fn"]
    else:
      learner = st.make(name)
      params, fn = self.params_for(name, learner, **kw), None
    preds, self.results[learner.name] = self.evaluate(learner, params, fn)
    return learner, params, preds

  def evaluate(self, learner, params, fn=None, few_shot_curve=True, phase=None):
    st, c = self.st, self.st.config
    ev, scen = st.evaluator, st.scen
    fn = fn or ev.predict_fn(learner)
    self.families[learner.name] = learner.family
    curve_ks = c.few_shot_ks if few_shot_curve else ()
    n_splits = len(SCENARIOS) + len(curve_ks) * len(c.few_shot_scenarios)
    with Progress(phase or f"{learner.name}: evaluation", n_splits, "split") as bar:
      preds, metrics = {}, {}
      for s in SCENARIOS:
        preds[s] = ev.predict(fn, params, ("test", s), scen.test[s])
        metrics[s] = score(preds[s], scen.test[s], c.ndcg_ks, scen.label)
        bar.update(1)
      for s in c.few_shot_scenarios if curve_ks else ():
        curve = self.few_shot.setdefault(s, {}).setdefault(learner.name, {})
        for k in curve_ks:
          curve[str(k)] = ev.score(fn, params, ("few_shot", s, k), scen.test[s].cap_support(k))
          bar.update(1)
    return preds, metrics


def oracle_metrics(st: Setup) -> dict:
  """Synthetic data: each test scenario scored with the generator's own noiseless ratings
  (`synthetic.oracle_prediction`), the floor no model can beat; {} for other data or 0/1 labels."""
  from metarec_jax.data.synthetic import oracle_prediction

  ds, scen, c = st.ds, st.scen, st.config
  if ds.expected is None or scen.label.binary:
    return {}
  keys = ds.users.astype(np.int64) * ds.n_items + ds.items
  order = np.argsort(keys)
  out = {}
  for s in SCENARIOS:
    ep = scen.test[s]
    q = ep.user[:, None].astype(np.int64) * ds.n_items + ep.query_item
    idx = order[np.clip(np.searchsorted(keys[order], q), 0, len(keys) - 1)]
    pred = scen.label.encode(oracle_prediction(ds.expected[idx]))
    out[s] = score(np.where(ep.query_mask, pred, 0.0).astype(np.float32), ep, c.ndcg_ks, scen.label)
  return out


def train_and_evaluate(
  config: Config, workdir: str, *, resume: bool = False, exit_at_step: int | None = None
) -> FinalMetrics:
  """Loads data, meta-trains the learner and the baselines, evaluates the four scenarios;
  writes config.json, metrics.jsonl, final_metrics.json and timing.json into `workdir`.

  With `config.checkpoints`, every fit (the pooled network and the learner) is checkpointed
  under <workdir>/checkpoints/<name>; `resume` continues each from its latest checkpoint.
  """
  config.validate()
  if config.protocol == "ranking":
    from metarec_jax.ranking.protocol import train_and_evaluate_ranking

    return train_and_evaluate_ranking(config, workdir)
  t_start = time.perf_counter()
  runtime.check_same_workdir(workdir)
  _fresh_workdir(config, workdir, resume)
  os.makedirs(workdir, exist_ok=True)
  writers.write_json_atomic(os.path.join(workdir, "config.json"), dataclasses.asdict(config))
  st = build_setup(config)
  ds, scen = st.ds, st.scen
  if ds.protocol_report:
    logging.info("%s protocol checks: %s", ds.name, json.dumps(ds.protocol_report, sort_keys=True))
  logging.info(
    "%s tasks: train %d, validation %d, test %s",
    ds.name,
    len(scen.train),
    len(scen.val),
    {s: len(e) for s, e in scen.test.items()},
  )
  run = _Run(st, workdir, writers.MetricsLog(workdir, append=resume), resume)
  data_s = time.perf_counter() - t_start
  criterion = scen.label.select_metric

  # The learner under study.
  spec = get_spec(config.learner)
  t0 = time.perf_counter()
  _, params, preds = run.row(config.learner, exit_at_step=exit_at_step)
  run.timing[config.learner] = time.perf_counter() - t0  # with the pooled network's fit when it warm-starts
  base_info = None
  if config.base:  # which fit of the base the stacked learners predict the residual of
    base = st.select(config.base)
    base_info = {
      "name": config.base,
      "selected": base["options"],
      f"val/{base['metric']}": base["val"],
      "folds": config.base_folds,
    }
  adaptation = {}
  if spec.inner_loop and config.inner_steps > 0:
    frozen = st.make(config.learner, inner_steps=0)
    preds0, res0 = run.evaluate(
      frozen, params, few_shot_curve=False, phase=f"{config.learner} without adaptation: evaluation"
    )
    for s in SCENARIOS:
      m = scen.test[s].query_mask
      delta = float(np.abs(preds[s] - preds0[s])[m].mean()) if m.any() else None
      adaptation[s] = {"mean_abs_change": delta, f"{criterion}_without_adaptation": res0[s].get(criterion)}

  # Baselines on the same splits.
  others = [name for name in config.baselines if name != config.learner]
  with Progress("baselines", len(others), "baseline") as bar:
    for name in others:
      t0 = time.perf_counter()
      run.row(name)
      run.timing[name] = time.perf_counter() - t0
      bar.update(1, note=name)

  final: FinalMetrics = {
    "dataset": {
      "name": ds.name,
      "n_users": ds.n_users,
      "n_items": ds.n_items,
      "n_ratings": ds.n_ratings,
      "n_train_tasks": len(scen.train),
      "n_val_tasks": len(scen.val),
      "n_val_cold_tasks": {s: len(e) for s, e in scen.val_cold.items()},
      "n_val_new_items": int(scen.split.val_new_item.sum()) if scen.split.val_new_item is not None else 0,
      "n_test_tasks": {s: len(scen.test[s]) for s in SCENARIOS},
      "n_new_items": int(scen.split.new_item.sum()),
      **({"protocol": ds.protocol_report} if ds.protocol_report else {}),
      **({"oracle": oracle} if (oracle := oracle_metrics(st)) else {}),
    },
    "learner": config.learner,
    "base": base_info,
    "families": run.families,
    "results": run.results,
    "adaptation": adaptation,
    "few_shot": run.few_shot,
    "training": run.training,
  }
  timing: Timing = {
    "data_s": data_s,
    "total_s": time.perf_counter() - t_start,
    "learners": run.timing,
    "training": run.train_timing,
  }
  final = writers.round_floats(final)
  writers.write_json_atomic(os.path.join(workdir, FINAL_METRICS), final)
  writers.write_json_atomic(os.path.join(workdir, TIMING), timing)
  return final
