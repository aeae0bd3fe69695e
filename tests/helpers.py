"""Small shared builders for tests (tiny synthetic data, a tiny model, featurised episodes)."""

import jax
import jax.numpy as jnp
import numpy as np

from metarec_jax.data import synthetic
from metarec_jax.data.features import feature_tables
from metarec_jax.data.tasks import TaskConfig, build_scenarios
from metarec_jax.learners import FitContext
from metarec_jax.models import create_model
from metarec_jax.train import featurize_episodes


def tiny_setup(*, n_users=80, n_items=120, hidden=(8,), embed_dim=4, max_ratings=30, seed=0, linear=False):
  ds = synthetic.generate(n_users=n_users, n_items=n_items, min_ratings=15, max_ratings=max_ratings, seed=seed)
  scen = build_scenarios(ds, TaskConfig(max_ratings=max_ratings), seed=seed)
  known = np.zeros(ds.n_items, bool)
  known[scen.train_ratings[1]] = True
  fields, tables = feature_tables(ds, known_items=known, item_id=True)
  model = create_model("content", fields=fields, embed_dim=embed_dim, hidden=hidden, output_bias=3.5, linear=linear)
  ctx = FitContext(model=model, fields=fields, n_items=ds.n_items, train_users=scen.train_ratings[0],
                   train_items=scen.train_ratings[1], train_ratings=scen.train_ratings[2], tables=tables)
  tables = {k: jnp.asarray(v) for k, v in tables.items()}
  return ds, scen, model, ctx, tables


def episode_batch(tables, episodes, n):
  arrays = {k: jnp.asarray(v[:n]) for k, v in episodes.arrays().items()}
  return featurize_episodes(tables, arrays)


def task(episode, t):
  return jax.tree.map(lambda a: a[t], episode)


def to_f64(tree):
  return jax.tree.map(lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)
