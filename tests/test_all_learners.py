"""Every meta-learner behind the one interface: vmap = loop, one compile, deterministic
evaluation, and it learns on synthetic data where adaptation must help."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import episode_batch, tiny_setup
from metarec_jax.data import synthetic
from metarec_jax.data.features import feature_tables
from metarec_jax.data.tasks import TaskConfig, build_scenarios
from metarec_jax.learners import LEARNERS, FitContext, create_learner
from metarec_jax.models import create_model
from metarec_jax.train import (Config, create_train_state, device_data, fit, make_predict_fn, make_train_step,
                               predict_episodes, score, warm_start)

META = ("maml", "fomaml", "metasgd", "anil", "reptile", "neural_process", "in_context", "prototype", "matching")
GRADIENT = ("maml", "fomaml", "metasgd", "anil", "reptile")


def make(name, model, **kw):
  if name in GRADIENT:
    return create_learner(name, model, inner_lr=0.1, inner_steps=2, **kw)
  return create_learner(name, model, **kw)


def test_registry_lists_every_learner():
  assert set(META) <= set(LEARNERS)


@pytest.fixture(scope="module")
def setup():
  return tiny_setup()


@pytest.mark.parametrize("name", META)
def test_vmap_equals_loop_compiles_once_and_is_deterministic(setup, name):
  _, scen, model, ctx, tables = setup
  learner = make(name, model)
  ep = episode_batch(tables, scen.train, 4)
  params = learner.init(jax.random.key(0), ep, ctx)
  # vmap over tasks == mean of the per-task losses and gradients (these learners ignore the rng).
  rng = jax.random.key(3)
  vg = jax.jit(jax.value_and_grad(lambda p, e, r: learner.meta_loss(p, e, r)[0]))
  loss, grads = vg(params, ep, rng)
  loop = [vg(params, jax.tree.map(lambda a: a[t:t + 1], ep), rng) for t in range(4)]
  np.testing.assert_allclose(loss, np.mean([l for l, _ in loop]), rtol=2e-5, atol=1e-6)
  chex.assert_trees_all_close(grads, jax.tree.map(lambda *g: sum(g) / 4, *[g for _, g in loop]), rtol=2e-4, atol=2e-6)
  # One compile for any number of steps.
  traces = []
  counted = dataclasses.replace(learner, meta_loss=lambda *a: (traces.append(1), learner.meta_loss(*a))[1])
  data = device_data(scen.train, tables)
  state = create_train_state(jax.random.key(1), jax.tree.map(jnp.copy, params), optax.adam(1e-3))
  step = make_train_step(counted, redraw=True, id_dropout=0.1)
  order = (8 * jnp.arange(3)[:, None] + jnp.arange(8)[None, :]) % len(scen.train)
  for i in range(3):
    state, aux = step(state, data, order)
    assert np.isfinite(float(aux["loss"]))
  assert len(traces) == 1
  # Evaluation is deterministic: a task's predictions do not depend on the batch it is in.
  fn = make_predict_fn(learner)
  a = predict_episodes(fn, state.params, tables, scen.val, 16)
  b = predict_episodes(fn, state.params, tables, scen.val, 5)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_neural_process_latent_evaluates_with_the_mean(setup):
  _, scen, model, ctx, tables = setup
  learner = create_learner("neural_process", model, latent=True)
  ep = episode_batch(tables, scen.train, 3)
  params = learner.init(jax.random.key(0), ep, ctx)
  l1 = learner.meta_loss(params, ep, jax.random.key(1))[0]
  l2 = learner.meta_loss(params, ep, jax.random.key(2))[0]
  assert float(l1) != float(l2)  # training samples z
  fn = make_predict_fn(learner)  # no rng reaches evaluation: the latent mean is used
  np.testing.assert_allclose(predict_episodes(fn, params, tables, scen.val, 8),
                             predict_episodes(fn, params, tables, scen.val, 3), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def learning_setup():
  """Synthetic users whose bias is mostly idiosyncratic: only the support reveals it."""
  ds = synthetic.generate(n_users=500, n_items=200, min_ratings=20, max_ratings=60, user_bias_std=0.8, seed=7)
  cfg = TaskConfig(max_ratings=60, val_user_frac=0.15)
  scen = build_scenarios(ds, cfg, seed=0)
  known = np.zeros(ds.n_items, bool)
  known[scen.train_ratings[1]] = True
  fields, tables = feature_tables(ds, known_items=known, item_id=True)
  mu = float(scen.train_ratings[2].mean())
  model = create_model("content", fields=fields, embed_dim=8, hidden=(32,), output_bias=mu, linear=True)
  ctx = FitContext(model=model, fields=fields, n_items=ds.n_items, train_users=scen.train_ratings[0],
                   train_items=scen.train_ratings[1], train_ratings=scen.train_ratings[2], tables=tables)
  data = device_data(scen.train, tables)
  config = Config(epochs=12, patience=12, meta_batch_size=16, outer_lr=3e-3, eval_chunk=64)
  example = episode_batch(data["tables"], scen.train, 1)
  test = scen.test["user_cold"]

  def evaluate(learner, params):
    return score(predict_episodes(make_predict_fn(learner), params, data["tables"], test, 64), test)["mae"]

  pooled = create_learner("pooled", model)
  pooled_params, _ = fit(pooled, pooled.init(jax.random.key(0), example, ctx), data, scen, config, log=None,
                         predict_fn=make_predict_fn(pooled))
  support = create_learner("support_mean")
  refs = {"pooled": evaluate(pooled, pooled_params),
          "support_mean": evaluate(support, support.init(None, example, ctx))}
  return dict(data=data, scen=scen, ctx=ctx, model=model, config=config, example=example, evaluate=evaluate,
              refs=refs, pooled_params=pooled_params)


@pytest.mark.parametrize("name", META)
def test_learner_learns_where_adaptation_must_help(learning_setup, name):
  s = learning_setup
  learner = make(name, s["model"])
  params = learner.init(jax.random.key(0), s["example"], s["ctx"])
  params = warm_start(learner, params, s["pooled_params"])  # the default --init=pooled
  params, info = fit(learner, params, s["data"], s["scen"], s["config"], log=None, predict_fn=make_predict_fn(learner))
  mae = s["evaluate"](learner, params)
  refs = s["refs"]
  assert mae < 0.97 * refs["pooled"], (name, mae, refs)
  assert mae < 0.97 * refs["support_mean"], (name, mae, refs)


def test_cf_model_learns_with_maml_where_adaptation_must_help(learning_setup):
  s = learning_setup
  mu = float(s["scen"].train_ratings[2].mean())
  model = create_model("cf", fields=s["ctx"].fields, embed_dim=8, rank=8, output_bias=mu, linear=True)
  pooled = create_learner("pooled", model)
  pooled_params, _ = fit(pooled, pooled.init(jax.random.key(0), s["example"], s["ctx"]), s["data"], s["scen"],
                         s["config"], log=None, predict_fn=make_predict_fn(pooled))
  learner = make("maml", model)
  params = warm_start(learner, learner.init(jax.random.key(0), s["example"], s["ctx"]), pooled_params)
  params, _ = fit(learner, params, s["data"], s["scen"], s["config"], log=None, predict_fn=make_predict_fn(learner))
  mae = s["evaluate"](learner, params)
  assert mae < 0.97 * s["refs"]["pooled"] and mae < 0.97 * s["refs"]["support_mean"], (mae, s["refs"])


@pytest.mark.parametrize("kind, names", [("cf", ("maml", "metasgd", "reptile")), ("hybrid", ("fomaml",))])
def test_factor_models_vmap_equals_loop_with_gradient_learners(setup, kind, names):
  _, scen, content, ctx, tables = setup
  model = create_model(kind, fields=content.fields, embed_dim=4, hidden=(8,), rank=4, output_bias=3.5, linear=True)
  ep = episode_batch(tables, scen.train, 3)
  for name in names:
    learner = make(name, model)
    params = learner.init(jax.random.key(0), ep, ctx)
    vg = jax.jit(jax.value_and_grad(lambda p, e: learner.meta_loss(p, e, None)[0]))
    loss, grads = vg(params, ep)
    loop = [vg(params, jax.tree.map(lambda a: a[t:t + 1], ep)) for t in range(3)]
    np.testing.assert_allclose(loss, np.mean([l for l, _ in loop]), rtol=2e-5, atol=1e-6)
    chex.assert_trees_all_close(grads, jax.tree.map(lambda *g: sum(g) / 3, *[g for _, g in loop]), rtol=2e-4, atol=2e-6)
    if name in ("maml", "fomaml", "metasgd"):  # head = the user vector: it moves, the item side does not
      state = learner.adapt(params, ep.support._replace(x=jax.tree.map(lambda a: a[0], ep.support.x),
                                                        y=ep.support.y[0], mask=ep.support.mask[0]))
      assert {p[1] for p in state["fast"]} <= set(model.head_scopes)


@pytest.mark.parametrize("name", ["neural_process", "in_context", "prototype", "matching"])
def test_set_learners_with_factor_models_fail_clearly(setup, name):
  _, _, content, _, _ = setup
  model = create_model("cf", fields=content.fields, embed_dim=4, rank=4)
  with pytest.raises(ValueError, match=f"{name} with --model=cf is not supported yet"):
    create_learner(name, model)
