"""MetaEmb (a generator of new items' id embeddings, meta-trained on simulated cold items) and
MAMO (memory-personalised MAML) behind the learner interface."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import episode_batch, tiny_setup
from metarec_jax.data.features import ITEM_ID_FIELD
from metarec_jax.learners import create_learner, get_spec, warm_start
from metarec_jax.learners.metaemb import K, item_tasks


@pytest.fixture(scope="module")
def setup():
  return tiny_setup(linear=True)


def test_item_tasks_are_the_training_items_with_enough_ratings(setup):
  _, scen, _, ctx, _ = setup
  tasks = item_tasks(ctx, seed=0, kept=64)
  counts = np.bincount(ctx.train_items, minlength=ctx.n_items)
  np.testing.assert_array_equal(tasks["item"], np.flatnonzero(counts >= 2 * K))
  np.testing.assert_array_equal(tasks["mask"].sum(1), np.minimum(counts[tasks["item"]], 64))
  pairs = {(u, i): r for u, i, r in zip(ctx.train_users.tolist(), ctx.train_items.tolist(), ctx.train_ratings.tolist())}
  for j in range(0, len(tasks["item"]), 7):
    m = tasks["mask"][j]
    got = list(zip(tasks["user"][j][m].tolist(), tasks["rating"][j][m].tolist()))
    assert len(set(u for u, _ in got)) == len(got)  # distinct ratings
    assert all(pairs[(u, int(tasks["item"][j]))] == r for u, r in got)
  # Validation new items are not training items, so never simulated cold items either.
  assert not scen.split.val_new_item[tasks["item"]].any()


def test_metaemb_generator_trains_on_simulated_cold_items_and_leaves_known_items_alone(setup):
  _, scen, model, ctx, tables = setup
  pooled = create_learner("pooled", model)
  ep = episode_batch(tables, scen.train, 8)
  base = pooled.init(jax.random.key(0), ep, ctx)
  learner = create_learner("metaemb", model, inner_lr=0.1, seed=0)
  params = warm_start("metaemb", learner.init(jax.random.key(1), ep, ctx), base)
  fn = jax.jit(lambda p, x: learner.predict(p, learner.adapt(p, None), x))
  x = jax.tree.map(lambda a: a[0], ep.query.x)
  ref = pooled.predict(base, pooled.adapt(base, ep.support), x)
  # At the start the generator returns the unknown row: the pooled network's predictions.
  np.testing.assert_allclose(fn(params, x), ref, rtol=1e-6)
  cold = {**x, ITEM_ID_FIELD: jnp.zeros_like(x[ITEM_ID_FIELD])}
  np.testing.assert_allclose(
    fn(params, cold),
    pooled.predict(base, pooled.adapt(base, jax.tree.map(lambda a: a[0], ep.support)), cold),
    rtol=1e-6,
  )

  loss_grad = jax.jit(jax.value_and_grad(lambda p, r: learner.meta_loss(p, ep, r)[0]))
  tx = optax.adam(1e-2)
  opt = tx.init(params)

  def held_loss(p):  # the same item tasks before and after
    return np.mean([float(loss_grad(p, jax.random.key(1000 + i))[0]) for i in range(5)])

  before = held_loss(params)
  for s in range(60):
    _, g = loss_grad(params, jax.random.key(100 + s))
    # Only the generator learns: the base network's gradient is zero.
    assert all(float(jnp.abs(v).max()) == 0 for v in jax.tree.leaves(g["model"]))
    upd, opt = tx.update(g, opt, params)
    params = optax.apply_updates(params, upd)
  after = held_loss(params)
  assert after < 0.95 * before, (before, after)
  # A known item is still scored by the base; an unknown one by its generated row, which now
  # depends on the item's content.
  np.testing.assert_allclose(fn(params, x), ref, rtol=1e-6)
  out = np.asarray(fn(params, cold))
  assert not np.allclose(out, pooled.predict(base, pooled.adapt(base, jax.tree.map(lambda a: a[0], ep.support)), cold))
  assert len(np.unique(np.round(out[np.asarray(ep.query.mask[0])], 5))) > 1


def test_metaemb_cannot_be_stacked():
  assert not get_spec("metaemb").stackable
  with pytest.raises(ValueError, match="metaemb cannot be stacked"):
    create_learner("metaemb", None, base=object())


def test_mamo_runs_under_vmap_and_its_memories_personalise_the_start(setup):
  _, scen, model, ctx, tables = setup
  learner = create_learner("mamo", model, inner_lr=0.1, inner_steps=2)
  ep = episode_batch(tables, scen.train, 4)
  params = learner.init(jax.random.key(0), ep, ctx)
  params["memory"] = jax.tree.map(
    lambda a: a + 0.05 * jax.random.normal(jax.random.key(5), a.shape), params["memory"]
  )  # non-zero memories
  vg = jax.jit(jax.value_and_grad(lambda p, e: learner.meta_loss(p, e, None)[0]))
  loss, grads = vg(params, ep)
  loop = [vg(params, jax.tree.map(lambda a: a[t : t + 1], ep)) for t in range(4)]
  np.testing.assert_allclose(loss, np.mean([l for l, _ in loop]), rtol=2e-5)
  chex.assert_trees_all_close(grads, jax.tree.map(lambda *g: sum(g) / 4, *[g for _, g in loop]), rtol=2e-4, atol=2e-6)
  # The outer gradient reaches all three memories.
  for name in ("profile", "bias", "preference"):
    assert float(jnp.abs(grads["memory"][name]).max()) > 0, name
  # Two users with different profiles start from different decision layers and preferences.
  from metarec_jax.learners.mamo import make_mamo

  m = make_mamo(model, inner_steps=0)
  s0, s1 = (m.adapt(params, jax.tree.map(lambda a: a[t], ep.support)) for t in (0, 1))
  assert not np.allclose(s0["profile"], s1["profile"])
  assert not np.allclose(s0["fast"]["W"], s1["fast"]["W"])
  # With empty memories and no inner step it is the network itself.
  zero = {**params, "memory": jax.tree.map(jnp.zeros_like, params["memory"])}
  sup, qx = jax.tree.map(lambda a: a[0], ep.support), jax.tree.map(lambda a: a[0], ep.query.x)
  np.testing.assert_allclose(m.predict(zero, m.adapt(zero, sup), qx), model.apply(zero["model"], qx), rtol=1e-6)
