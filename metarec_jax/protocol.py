"""train_and_evaluate: the learner under study and the baselines on the same splits, options
chosen on validation, and the final metrics. Results (`final_metrics.json`, schema
`FinalMetrics`) are kept apart from timings (`timing.json`), so the results of two runs
with the same seed and flags are byte-identical."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from typing import TypedDict

import jax
import numpy as np
from absl import logging

from metarec_jax import runtime, writers
from metarec_jax.checkpoint import FitCheckpoints, check_resumable, checkpoint_dir
from metarec_jax.config import INIT_FROM_POOLED, Config
from metarec_jax.data.tasks import SCENARIOS
from metarec_jax.evaluate import score
from metarec_jax.learners import POOLED, REUSE, TRAIN, get_spec, warm_start
from metarec_jax.overlap import Deferred, Handoff, fits_of
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

  def __init__(self, st: Setup, workdir: str, log, resume: bool, handoff: "Handoff | None" = None, device=None):
    """`handoff`: the fits one thread publishes (the main thread's `_Run`, `device` None) and
    the other takes instead of fitting them again (the baselines' `_Run`, on `device`)."""
    self.st, self.workdir, self.log, self.resume = st, workdir, log, resume
    self.handoff, self.device = handoff, device
    self.trained, self.training, self.train_timing, self.results, self.families = {}, {}, {}, {}, {}
    self.few_shot, self.timing, self.learners, self.prepared = {}, {}, {}, {}

  def learner_of(self, name: str):
    """The learner `name` with the run's options, made once (its jitted functions with it)."""
    if name not in self.learners:
      self.learners[name] = self.st.make(name)
    return self.learners[name]

  def prepare(self, name: str) -> None:
    """Compiles the training steps of `name`'s fit in a thread while the fit it starts from
    (the pooled network's) steps, from that fit's second epoch: the first epoch's own compiles
    hold the interpreter. `name`'s fit then starts stepping at once."""
    from metarec_jax.training.loop import compile_steps, make_steps

    st, learner = self.st, self.learner_of(name)

    def work():
      params = st.init_params(learner)
      steps = make_steps(learner, st.data, st.config, len(st.scen.train), params)
      compile_steps(steps, params, st.config)
      if len(st.scen.val):
        st.val_score(learner, params)  # compiles the validation predictions (values unused)
      return steps

    self.prepared[name] = Deferred(work)

  @staticmethod
  def _prepared_steps(prepared: Deferred | None):
    """The steps `prepare` compiled (None: not prepared), their compiles' freed memory returned."""
    if prepared is None:
      return None
    steps = prepared.result()
    runtime.release_free_memory()
    return steps

  def fit(self, name: str, learner, *, exit_at_step=None):
    """The trained params of `learner` (registered as `name`), fitted once per run."""
    if name not in self.trained and self.device is not None and name in self.handoff.names:
      self.trained[name] = jax.device_put(self.handoff.take(name), self.device)
    if name not in self.trained:
      st, c = self.st, self.st.config
      spec = get_spec(name)
      params = st.init_params(learner)
      if c.init == INIT_FROM_POOLED and spec.warm_start is not None:
        params = warm_start(name, params, self.fit(POOLED, self.learner_of(POOLED)))
      ckpt = (
        FitCheckpoints(checkpoint_dir(self.workdir, learner.name), keep=c.keep_checkpoints, every=c.checkpoint_every)
        if c.checkpoints
        else None
      )
      prepared = self.prepared.pop(name, None)
      start_prepared = lambda epoch: [p.start() for p in self.prepared.values()]  # noqa: E731
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
        steps=self._prepared_steps(prepared),
        on_epoch=start_prepared if self.prepared else None,
      )
      self.trained[name] = params
      self.training[name] = {k: v for k, v in info.items() if k not in ("train_time_s", "tasks_per_s")}
      self.train_timing[name] = {"train_time_s": info["train_time_s"], "tasks_per_s": info["tasks_per_s"]}
      if self.handoff is not None and self.device is None:
        self.handoff.publish(name, params)
    return self.trained[name]

  def params_for(self, name: str, learner, **kw):
    spec = get_spec(name)
    if spec.source == TRAIN:
      return self.fit(name, learner, **kw)
    if spec.source == REUSE:
      return self.fit(spec.params_from, self.learner_of(spec.params_from))
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
      learner = self.learner_of(name)
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


def _baseline_rows(run: _Run, names: list[str], stop: threading.Event | None = None) -> None:
  with Progress("baselines", len(names), "baseline") as bar:
    for name in names:
      if stop is not None and stop.is_set():  # the learner's thread failed: its error is raised
        return
      t0 = time.perf_counter()
      run.row(name)
      run.timing[name] = time.perf_counter() - t0
      runtime.release_free_memory()  # the row's compiles are done
      bar.update(1, note=name)


class _Baselines(threading.Thread):
  """The baselines' rows in a second thread, on their own device, while the main thread fits
  and evaluates the learner: every computation is the one the sequential run makes, on a
  device of the same kind, so the results are the same. `merge_into` adds them to the run's
  in the order of `names`."""

  def __init__(self, run: _Run, names: list[str], device, handoff: Handoff):
    super().__init__(name="baselines", daemon=True)
    st = dataclasses.replace(run.st, evaluator=run.st.evaluator.on_device(device))
    # The rows that need none of the learner's fits first (the rest wait for those fits): the
    # pooled network's steps leave the second core idle, the learner's use both.
    waits = lambda n: bool(fits_of(n, run.st.config) & handoff.names)  # noqa: E731
    self.names, self.order = sorted(names, key=waits), list(names)
    self.error, self.stop = None, threading.Event()
    self.run_ = _Run(st, run.workdir, run.log, run.resume, handoff=handoff, device=device)

  def run(self):
    try:
      with jax.default_device(self.run_.device):
        _baseline_rows(self.run_, self.names, self.stop)
    except BaseException as e:  # raised again by merge_into, in the main thread
      self.error = e

  def merge_into(self, run: _Run) -> None:
    self.join()
    if self.error is not None:
      raise self.error
    b = self.run_
    rank = lambda k: self.order.index(k) if k in self.order else len(self.order)  # noqa: E731
    ordered = lambda src: {k: src[k] for k in sorted(src, key=rank)}  # noqa: E731
    for name in [n for n in ordered(b.results) if n not in run.results]:
      run.results[name] = b.results[name]
    for d, src in ((run.families, b.families), (run.training, b.training), (run.timing, b.timing)):
      d.update({k: v for k, v in ordered(src).items() if k not in d})
    for s, curves in b.few_shot.items():
      run.few_shot.setdefault(s, {}).update(ordered(curves))


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
  others = [name for name in config.baselines if name != config.learner]
  device = runtime.baseline_device(config.overlap_baselines, config.devices) if others else None
  handoff = Handoff(fits_of(config.learner, config)) if device is not None else None
  run = _Run(st, workdir, writers.MetricsLog(workdir, append=resume), resume, handoff=handoff)
  data_s = time.perf_counter() - t_start
  criterion = scen.label.select_metric
  base_info = None
  if config.base:  # which fit of the base the stacked learners predict the residual of (before both threads)
    base = st.select(config.base)
    base_info = {
      "name": config.base,
      "selected": base["options"],
      f"val/{base['metric']}": base["val"],
      "folds": config.base_folds,
    }
  baselines = _Baselines(run, others, device, handoff) if device is not None else None
  if baselines is not None:  # beside the learner, on a second device (runtime.baseline_device)
    baselines.start()
  spec = get_spec(config.learner)
  if spec.source == TRAIN and not spec.grid and len(fits_of(config.learner, config)) > 1 and jax.process_count() == 1:
    run.prepare(config.learner)  # compiled while the fit it starts from (the pooled network's) runs

  # The learner under study.
  t0 = time.perf_counter()
  try:
    _, params, preds = run.row(config.learner, exit_at_step=exit_at_step)
  except BaseException:
    if baselines is not None:
      baselines.stop.set()
    raise
  finally:
    if handoff is not None:
      handoff.close()
  run.timing[config.learner] = time.perf_counter() - t0  # with the pooled network's fit when it warm-starts
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
  if baselines is not None:
    baselines.merge_into(run)
  else:
    _baseline_rows(run, others)

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
