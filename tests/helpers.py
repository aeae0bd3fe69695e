"""Small shared builders for tests (tiny synthetic data, a tiny model, featurised episodes), and
a compile observer."""

import contextlib

import jax
import pytest
import jax.numpy as jnp

from metarec_jax.data.episodes import featurize_episodes


def tiny_setup(*, n_users=80, n_items=120, hidden=(8,), embed_dim=4, max_ratings=30, seed=0, linear=False):
  """Tiny synthetic data through `build_setup`: (dataset, scenarios, model, context, device tables)."""
  from metarec_jax.config import Config
  from metarec_jax.setup import build_setup

  st = build_setup(
    Config(
      synthetic_users=n_users,
      synthetic_items=n_items,
      synthetic_max_ratings=max_ratings,
      max_ratings=max_ratings,
      hidden=hidden,
      embed_dim=embed_dim,
      linear=linear,
      seed=seed,
    )
  )
  return st.ds, st.scen, st.model, st.ctx, st.data["tables"]


def episode_batch(tables, episodes, n):
  arrays = {k: jnp.asarray(v[:n]) for k, v in episodes.arrays().items()}
  return featurize_episodes(tables, arrays)


def task(episode, t):
  return jax.tree.map(lambda a: a[t], episode)


def to_f64(tree):
  return jax.tree.map(lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def fit_on(learner, params, data, scen, config, **kw):
  """training.loop.fit with validation on `scen.val` (the protocol's criterion and cut-offs)."""
  from metarec_jax.evaluate import Evaluator
  from metarec_jax.setup import VAL_KS
  from metarec_jax.training.loop import fit

  label = scen.label
  from metarec_jax import runtime

  ev = Evaluator(data["tables"], chunk=runtime.eval_chunk(config.eval_chunk), label=label)
  val = (lambda p: ev.score(learner, p, "val", scen.val, ks=VAL_KS)) if len(scen.val) else None
  select = label.select_metric if label is not None else "mae"
  return fit(learner, params, data, config, n_tasks=len(scen.train), val_score=val, select=select, **kw)


def fast_first(values):
  """The first value in the fast tier, the others marked slow (the full suite runs them all)."""
  return [
    v if i == 0 else pytest.param(*(v if isinstance(v, tuple) else (v,)), marks=pytest.mark.slow)
    for i, v in enumerate(values)
  ]


@contextlib.contextmanager
def compiles():
  """The names of the programs XLA compiles, or loads from the persistent cache, while the block
  runs (JAX's backend-compile events; any thread's)."""
  names = []

  def listen(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      names.append(kwargs.get("fun_name", ""))

  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    yield names
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
