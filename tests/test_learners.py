"""Meta-SGD, Reptile, ANIL and the closed-form fold-in baselines."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from jax.flatten_util import ravel_pytree

from helpers import episode_batch, task, tiny_setup
from metarec_jax.learners import create_learner
from metarec_jax.learners.base import concat_batches, masked_mse


@pytest.fixture(scope="module")
def setup():
  return tiny_setup()


def test_metasgd_inner_rates_start_at_inner_lr_and_get_gradients(setup):
  _, scen, model, ctx, tables = setup
  ep = episode_batch(tables, scen.train, 4)
  msgd = create_learner("metasgd", model, inner_lr=0.1, inner_steps=2)
  maml = create_learner("maml", model, inner_lr=0.1, inner_steps=2)
  params = msgd.init(jax.random.key(0), ep, ctx)
  lrs = traverse_util.flatten_dict(params["inner_lr"])
  assert all(("params", "embed") != p[:2] for p in lrs)  # head adaptation: no embedding rates
  assert all(np.allclose(v, 0.1) for v in lrs.values())
  # At the initial rates Meta-SGD is exactly MAML.
  np.testing.assert_allclose(
    msgd.meta_loss(params, ep, None)[0], maml.meta_loss({"model": params["model"]}, ep, None)[0], rtol=1e-6
  )
  g = jax.jit(jax.grad(lambda p: msgd.meta_loss(p, ep, None)[0]))(params)
  for path, leaf in traverse_util.flatten_dict(g["inner_lr"]).items():
    assert np.abs(np.asarray(leaf)).sum() > 0, path


@pytest.mark.slow
def test_metasgd_all_adaptation_uses_per_entry_rates_of_gathered_rows(setup):
  """One Meta-SGD step with random per-entry rates equals theta - lr * grad on the full params."""
  _, scen, model, ctx, tables = setup
  ep = episode_batch(tables, scen.train, 2)
  learner = create_learner("metasgd", model, inner_lr=0.05, inner_steps=1, adapt="all")
  params = learner.init(jax.random.key(0), ep, ctx)
  keys = iter(jax.random.split(jax.random.key(1), 100))
  params["inner_lr"] = jax.tree.map(lambda v: jax.random.uniform(next(keys), v.shape, maxval=0.2), params["inner_lr"])
  s = task(ep, 0).support
  ours = learner.predict(params, learner.adapt(params, s), s.x)
  g = jax.grad(lambda p: masked_mse(model.apply(p, s.x), s.y, s.mask))(params["model"])
  manual = jax.tree.map(lambda p, lr, d: p - lr * d, params["model"], params["inner_lr"], g)
  np.testing.assert_allclose(ours, model.apply(manual, s.x), rtol=1e-5, atol=1e-5)
  # Rows of the item-id table that the support never uses get no meta-gradient.
  grads = jax.jit(jax.grad(lambda p: learner.meta_loss(p, ep, None)[0]))(params)
  rows = np.abs(np.asarray(grads["inner_lr"]["params"]["embed"]["item_id"])).sum(1)
  used = np.unique(np.asarray(ep.support.x["item/id"]))
  assert (rows[np.setdiff1d(np.arange(len(rows)), used)] == 0).all()


@pytest.mark.slow
def test_reptile_direction_on_a_quadratic():
  """Only the output layer adapts, so the task loss is quadratic in it: L = 1/2 d^T H d + g0^T d.
  Two SGD steps with rate a give theta - theta' = a (2I - a H) g0."""
  _, scen, model, ctx, tables = tiny_setup(hidden=(6,))
  a = 0.05
  learner = create_learner("reptile", model, inner_lr=a, inner_steps=2, adapt="last")
  ep = episode_batch(tables, scen.train, 1)
  params = learner.init(jax.random.key(0), ep, ctx)
  g_rep = jax.grad(lambda p: learner.meta_loss(p, ep, None)[0])(params)
  out = params["model"]["params"]["out"]
  flat0, unravel = ravel_pytree(out)
  both = concat_batches(task(ep, 0).support, task(ep, 0).query)

  def loss(v):
    p = jax.tree.map(lambda x: x, params["model"])
    p = {"params": {**p["params"], "out": unravel(v)}}
    return masked_mse(model.apply(p, both.x), both.y, both.mask)

  g0 = jax.grad(loss)(flat0)
  H = jax.hessian(loss)(flat0)
  expected = a * (2 * jnp.eye(len(flat0)) - a * H) @ g0
  got, _ = ravel_pytree(g_rep["model"]["params"]["out"])
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)
  # Nothing else adapts, so nothing else moves.
  assert float(jnp.abs(g_rep["model"]["params"]["hidden_0"]["kernel"]).sum()) == 0.0


def test_anil_adapts_decision_layers_only(setup):
  _, scen, model, ctx, tables = setup
  ep = episode_batch(tables, scen.train, 2)
  anil = create_learner("anil", model, inner_lr=0.1, inner_steps=1, adapt="all")
  params = anil.init(jax.random.key(0), ep, ctx)
  state = anil.adapt(params, task(ep, 0).support)
  assert all("embed" not in p for p in state["fast"]) and state["uniq"] == {}


def test_bias_foldin_closed_form(setup):
  _, scen, model, ctx, tables = setup
  ctx = ctx.__class__(**{**ctx.__dict__, "tables": {k: np.asarray(v) for k, v in ctx.tables.items()}})
  learner = create_learner("bias_foldin", reg_user=2.0)
  params = learner.init(None, None, ctx)
  s = task(episode_batch(tables, scen.test["user_cold"], 1), 0).support
  state = learner.adapt(params, s)
  m = np.asarray(s.mask)
  resid = np.asarray(s.y)[m] - float(params["mu"]) - np.asarray(params["item_bias"])[np.asarray(s.x["item"])[m]]
  assert float(state["user_bias"]) == pytest.approx(resid.sum() / (m.sum() + 2.0), rel=1e-5)
  # New items (no training ratings) get a bias from content, not zero.
  known = np.zeros(ctx.n_items, bool)
  known[ctx.train_items] = True
  assert np.abs(np.asarray(params["item_bias"])[~known]).sum() > 0


def test_als_foldin_solves_the_ridge_problem(setup):
  _, scen, model, ctx, tables = setup
  ctx = ctx.__class__(**{**ctx.__dict__, "tables": {k: np.asarray(v) for k, v in ctx.tables.items()}})
  learner = create_learner("als_foldin", rank=4, reg=3.0, reg_user=2.0)
  params = learner.init(None, None, ctx)
  s = task(episode_batch(tables, scen.test["user_cold"], 1), 0).support
  state = learner.adapt(params, s)
  z = np.concatenate([np.asarray(state["user_factors"]), [float(state["user_bias"])]])
  m = np.asarray(s.mask)
  items = np.asarray(s.x["item"])[m]
  phi = np.concatenate([np.asarray(params["item_factors"])[items], np.ones((m.sum(), 1))], 1)
  target = np.asarray(s.y)[m] - float(params["mu"]) - np.asarray(params["item_bias"])[items]
  # Stationarity of the ridge objective: phi^T (phi z - target) + diag(reg) z = 0.
  grad = phi.T @ (phi @ z - target) + np.array([3.0] * 4 + [2.0]) * z
  np.testing.assert_allclose(grad, 0.0, atol=1e-3)
  # The fit reduces the support error below the bias-only fold-in.
  bias = create_learner("bias_foldin", reg_user=2.0)
  bp = bias.init(None, None, ctx)
  e_als = masked_mse(learner.predict(params, state, s.x), s.y, s.mask)
  e_bias = masked_mse(bias.predict(bp, bias.adapt(bp, s), s.x), s.y, s.mask)
  assert float(e_als) < float(e_bias)


def test_content_ridge_in_the_dual_equals_the_primal_ridge(setup):
  from metarec_jax.learners.foldin import content_ridge_predict, item_design_matrix, ridge

  _, _, _, ctx, _ = setup
  ctx = ctx.__class__(**{**ctx.__dict__, "tables": {k: np.asarray(v) for k, v in ctx.tables.items()}})
  X = item_design_matrix(ctx)
  known = np.zeros(ctx.n_items, bool)
  known[ctx.train_items] = True
  Y = np.random.default_rng(0).standard_normal((known.sum(), 3))
  for dual in (True, False):
    for reg in (0.5, 10.0):
      np.testing.assert_allclose(
        content_ridge_predict(ctx, known, Y, reg, dual=dual), X @ ridge(X[known], Y, reg), rtol=1e-8, atol=1e-10
      )


def test_batched_als_equals_the_per_key_loop():
  """fit_als solves keys in blocks of similar counts; a plain loop over users, then items, gives
  the same factors (keys without ratings keep their random start)."""
  from metarec_jax.learners.foldin import fit_als

  rng = np.random.default_rng(0)
  n_users, n_items, rank, reg = 150, 90, 5, 3.0
  u = rng.integers(0, n_users - 10, 2000)  # the last 10 users rate nothing
  i = (rng.zipf(1.6, 2000) - 1) % (n_items - 5)  # skewed counts; the last 5 items unrated
  resid = rng.standard_normal(2000)
  P, Q = fit_als(resid, u, i, n_users, n_items, rank, reg, 4, seed=7)
  r2 = np.random.default_rng(7)
  P0, Q0 = 0.1 * r2.standard_normal((n_users, rank)), 0.1 * r2.standard_normal((n_items, rank))
  for _ in range(4):
    for k in range(n_users):
      m = u == k
      if m.any():
        P0[k] = np.linalg.solve(Q0[i[m]].T @ Q0[i[m]] + reg * np.eye(rank), Q0[i[m]].T @ resid[m])
    for k in range(n_items):
      m = i == k
      if m.any():
        Q0[k] = np.linalg.solve(P0[u[m]].T @ P0[u[m]] + reg * np.eye(rank), P0[u[m]].T @ resid[m])
  np.testing.assert_allclose(P, P0, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(Q, Q0, rtol=1e-9, atol=1e-12)


def test_popularity_counts_positives_for_binary_labels_and_ratings_otherwise(setup):
  _, _, _, ctx, _ = setup
  items = np.array([0, 0, 1, 2, 2, 2])
  labels = np.array([1.0, 1.0, 0.0, 1.0, 0.0, 0.0], np.float32)
  for binary, want in ((True, [2, 0, 1]), (False, [2, 1, 3])):
    c = ctx.__class__(
      **{
        **ctx.__dict__,
        "train_items": items,
        "train_ratings": labels,
        "train_users": items * 0,
        "binary_labels": binary,
        "memo": {},
      }
    )
    params = create_learner("popularity").init(None, None, c)
    pop = np.asarray(params["popularity"])[:3]
    np.testing.assert_allclose(pop, np.array(want) / max(want))
