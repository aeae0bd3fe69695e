"""The benchmark's growth suite: time and peak memory of generating synthetic users, building
their episodes and one training epoch, for one size per process."""

from __future__ import annotations

import time


def growth_one(o, n_users: int) -> dict:
  """One size: generate, build episodes, one epoch; peak RSS after each phase."""
  import jax
  import numpy as np
  import optax

  from metarec_jax import bench
  from metarec_jax.data import synthetic
  from metarec_jax.data.features import feature_tables
  from metarec_jax.data.tasks import TaskConfig, build_scenarios
  from metarec_jax.learners import FitContext, create_learner
  from metarec_jax.models import create_model
  from metarec_jax.training.state import create_train_state
  from metarec_jax.data.episodes import device_data, featurize_episodes
  from metarec_jax.training.step import make_epoch_order, make_train_step, run_epoch

  res = {"n_users": n_users, "n_items": o.growth_items}
  t0 = time.perf_counter()
  ds = synthetic.generate(n_users=n_users, n_items=o.growth_items, min_ratings=15, max_ratings=85, seed=o.seed)
  res["n_ratings"] = ds.n_ratings
  res["generate"] = {"s": time.perf_counter() - t0, "peak_host_mb": bench.peak_host_mb()}
  t0 = time.perf_counter()
  scen = build_scenarios(ds, TaskConfig(max_ratings=85), o.seed)
  known = np.zeros(ds.n_items, bool)
  known[scen.train_ratings[1]] = True
  fields, tables = feature_tables(ds, known_items=known, item_id=True)
  data = device_data(scen.train, tables)
  jax.block_until_ready(data)
  res["n_train_tasks"] = len(scen.train)
  res["episodes"] = {"s": time.perf_counter() - t0, "peak_host_mb": bench.peak_host_mb()}
  model = create_model("content", fields=fields, embed_dim=32, hidden=(64, 64), output_bias=3.5, linear=True)
  learner = create_learner(o.growth_learner, model, inner_lr=o.inner_lr, inner_steps=o.growth_inner_steps)
  example = featurize_episodes(data["tables"], jax.tree.map(lambda a: a[:1], data["episodes"]))
  ctx = FitContext.of(model, fields, ds.n_items, scen.train_ratings)
  state = create_train_state(jax.random.key(1), learner.init(jax.random.key(0), example, ctx), optax.adam(1e-3))
  step_fn = make_train_step(learner, redraw=True, id_dropout=0.1)
  order_fn = make_epoch_order(len(scen.train), o.growth_batch)
  key, order = order_fn(jax.random.key(2))
  # Compile on a one-row order (same shapes per step), then time a full epoch.
  state = jax.block_until_ready(step_fn(state, data, order[:1])[0])
  t0 = time.perf_counter()
  state, losses = run_epoch(step_fn, state, data, order)
  losses = np.asarray(losses)
  res["epoch"] = {
    "s": time.perf_counter() - t0,
    "steps": int(order.shape[0]),
    "meta_batch_size": o.growth_batch,
    "learner": o.growth_learner,
    "inner_steps": o.growth_inner_steps,
    "tasks_per_s": order.size / (time.perf_counter() - t0),
    "finite": bool(np.isfinite(losses).all()),
    "peak_host_mb": bench.peak_host_mb(),
  }
  return res
