"""train_and_evaluate for `--protocol=ranking`: every ranker fitted on the training users, its
options chosen on the validation users (nDCG@100), then scored on the test users: the full
fold-in (80 % of their positives), `--support_cap`, and each `--few_shot_ks` cap."""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax.numpy as jnp
from absl import logging

from metarec_jax import writers
from metarec_jax.data import load_dataset
from metarec_jax.progress import Progress
from metarec_jax.ranking import get_ranker
from metarec_jax.ranking.evaluate import SELECT_METRIC, RankingEvaluator
from metarec_jax.ranking.split import build_ranking_data

SCENARIO = "user_cold"  # the test users are new users: none of their positives is trained on


def ranking_data(config):
  from metarec_jax.setup import dataset_options

  ds = load_dataset(config.dataset, **dataset_options(config))
  return build_ranking_data(
    ds, config.seed, threshold=config.label_threshold, min_item_users=config.ranking_min_item_users
  )


def train_and_evaluate_ranking(config, workdir: str) -> dict:
  t_start = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  writers.write_json_atomic(os.path.join(workdir, "config.json"), dataclasses.asdict(config))
  with Progress(f"{config.dataset}: load and split (ranking)", None):
    data = ranking_data(config)
  logging.info("%s ranking protocol: %s", data.name, json.dumps(data.report, sort_keys=True))
  ev = RankingEvaluator(data.n_items)
  cap = config.support_cap
  names = [config.learner] + [b for b in config.baselines if b != config.learner]
  results, few_shot, training, timing, adaptation = {}, {}, {}, {}, {}
  specs = {name: get_ranker(name, config, data) for name in names}
  for name in names:
    spec = specs[name]
    t0 = time.perf_counter()

    def val(params, spec=spec):
      return ev.score(spec.score, params, "val", data.val, cap)[SELECT_METRIC]

    best = None
    with Progress(f"{name}: fit and validation grid", len(spec.grid), "point") as bar:
      for options in spec.grid:
        fit_options = {**options, "seed": config.seed, "epochs": config.epochs, "support_cap": cap}
        params = spec.fit(data.train_x, fit_options, val)
        v = val(params)
        if best is None or v > best[0]:
          best = (v, options, params)
        bar.update(1, note=f"best val {SELECT_METRIC} {best[0]:.4f}")
    v, options, params = best
    training[name] = {"selected": options, f"val/{SELECT_METRIC}": v}
    results[name] = {SCENARIO: ev.score(spec.score, params, "test", data.test, cap)}
    frozen = None  # what adaptation adds: the learner's parameters scored with no inner step
    if name == config.learner and isinstance(params, dict) and "steps" in params:
      frozen = ev.score(spec.score, {**params, "steps": jnp.int32(0)}, "test", data.test, cap)
    elif name == config.learner and spec.unadapted is not None:
      frozen = ev.score(spec.unadapted, params, "test", data.test, cap)
    if frozen is not None:
      adaptation[SCENARIO] = {f"{k}_without_adaptation": frozen[k] for k in ("recall@20", "ndcg@100")}
    for k in config.few_shot_ks:
      few_shot.setdefault(SCENARIO, {}).setdefault(name, {})[str(k)] = ev.score(
        spec.score, params, "test", data.test, k
      )
    if name in (config.learner, "ease"):  # what experiments.recommend reads back
      from metarec_jax.ranking.recommend import save_params

      save_params(workdir, name, params)
    timing[name] = time.perf_counter() - t0
    m = results[name][SCENARIO]
    logging.info("%s: test Recall@20 %.4f, nDCG@100 %.4f", name, m["recall@20"], m["ndcg@100"])
  final = writers.round_floats(
    {
      "protocol": "ranking",
      "dataset": {
        "name": data.name,
        "n_users": data.report["users"],
        "n_items": data.n_items,
        "n_ratings": data.report["positives"],
        **data.report,
      },
      "learner": config.learner,
      "support_cap": cap,
      "families": {n: specs[n].family for n in names},
      "results": results,
      "adaptation": adaptation,
      "few_shot": few_shot,
      "training": training,
    }
  )
  writers.write_json_atomic(os.path.join(workdir, "final_metrics.json"), final)
  writers.write_json_atomic(
    os.path.join(workdir, "timing.json"), {"learners": timing, "total_s": time.perf_counter() - t_start}
  )
  return final
