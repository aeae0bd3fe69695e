"""Every meta-learner behind the one interface: vmap = loop, one compile, deterministic
evaluation, and it learns on synthetic data where adaptation must help."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import episode_batch, fast_first, fit_on, tiny_setup
from metarec_jax.data import synthetic
from metarec_jax.data.features import feature_tables
from metarec_jax.data.tasks import TaskConfig, build_scenarios
from metarec_jax import learners
from metarec_jax.learners import LEARNERS, FitContext, create_learner
from metarec_jax.models import create_model
from metarec_jax.config import Config
from metarec_jax.training.state import create_train_state
from metarec_jax.data.episodes import device_data
from metarec_jax.evaluate import make_predict_fn, predict_episodes, score
from metarec_jax.training.step import make_train_step
from metarec_jax.learners import warm_start

# metaemb's meta-loss reads item tasks it draws itself, not the user episodes
# (tests/test_cold_item_learners.py covers it).
META = tuple(n for n in learners.META_LEARNERS if n != "metaemb")
GRADIENT = learners.names(lambda s: s.inner_loop)


def make(name, model, **kw):
  if name in GRADIENT:
    return create_learner(name, model, inner_lr=0.1, inner_steps=2, **kw)
  return create_learner(name, model, **kw)


def test_registry_lists_every_family():
  assert set(META) | {"metaemb"} == set(learners.META_LEARNERS) and set(META) <= set(LEARNERS)
  assert {learners.get_spec(n).family for n in META} == {"optimisation", "model", "metric"}
  assert set(GRADIENT) == {"maml", "fomaml", "metasgd", "anil", "reptile", "mamo"}


@pytest.fixture(scope="module")
def setup():
  return tiny_setup()


@pytest.mark.parametrize("name", fast_first(META))
def test_vmap_equals_loop_compiles_once_and_is_deterministic(setup, name):
  _, scen, model, ctx, tables = setup
  learner = make(name, model)
  ep = episode_batch(tables, scen.train, 4)
  params = learner.init(jax.random.key(0), ep, ctx)
  # vmap over tasks == mean of the per-task losses and gradients (these learners ignore the rng).
  rng = jax.random.key(3)
  vg = jax.jit(jax.value_and_grad(lambda p, e, r: learner.meta_loss(p, e, r)[0]))
  loss, grads = vg(params, ep, rng)
  loop = [vg(params, jax.tree.map(lambda a: a[t : t + 1], ep), rng) for t in range(4)]
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
  np.testing.assert_allclose(
    predict_episodes(fn, params, tables, scen.val, 8),
    predict_episodes(fn, params, tables, scen.val, 3),
    rtol=1e-5,
    atol=1e-5,
  )


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
  ctx = FitContext.of(model, fields, ds.n_items, scen.train_ratings, tables=tables)
  data = device_data(scen.train, tables)
  config = Config(epochs=12, patience=12, meta_batch_size=16, outer_lr=3e-3, eval_chunk=64)
  example = episode_batch(data["tables"], scen.train, 1)
  test = scen.test["user_cold"]

  def evaluate(learner, params):
    return score(predict_episodes(make_predict_fn(learner), params, data["tables"], test, 64), test)["mae"]

  pooled = create_learner("pooled", model)
  pooled_params, _ = fit_on(pooled, pooled.init(jax.random.key(0), example, ctx), data, scen, config)
  support = create_learner("support_mean")
  refs = {
    "pooled": evaluate(pooled, pooled_params),
    "support_mean": evaluate(support, support.init(None, example, ctx)),
  }
  cf_cache = {}

  def cf():
    """The cf model and its pooled network, trained once for the tests that use them."""
    if not cf_cache:
      cf_model = create_model("cf", fields=fields, embed_dim=8, rank=8, output_bias=mu, linear=True)
      cf_pooled = create_learner("pooled", cf_model)
      cf_cache["v"] = (
        cf_model,
        fit_on(cf_pooled, cf_pooled.init(jax.random.key(0), example, ctx), data, scen, config)[0],
      )
    return cf_cache["v"]

  return dict(
    data=data,
    scen=scen,
    ctx=ctx,
    model=model,
    config=config,
    example=example,
    evaluate=evaluate,
    refs=refs,
    pooled_params=pooled_params,
    cf=cf,
  )


@pytest.mark.slow
@pytest.mark.parametrize("name", META)
def test_learner_learns_where_adaptation_must_help(learning_setup, name):
  s = learning_setup
  learner = make(name, s["model"])
  params = learner.init(jax.random.key(0), s["example"], s["ctx"])
  params = warm_start(learner.name, params, s["pooled_params"])  # the default --init=pooled
  params, info = fit_on(learner, params, s["data"], s["scen"], s["config"])
  mae = s["evaluate"](learner, params)
  refs = s["refs"]
  assert mae < 0.97 * refs["pooled"], (name, mae, refs)
  assert mae < 0.97 * refs["support_mean"], (name, mae, refs)


@pytest.mark.slow
def test_cf_model_learns_with_maml_where_adaptation_must_help(learning_setup):
  s = learning_setup
  model, pooled_params = s["cf"]()
  learner = make("maml", model)
  params = warm_start(learner.name, learner.init(jax.random.key(0), s["example"], s["ctx"]), pooled_params)
  params, _ = fit_on(learner, params, s["data"], s["scen"], s["config"])
  mae = s["evaluate"](learner, params)
  assert mae < 0.97 * s["refs"]["pooled"] and mae < 0.97 * s["refs"]["support_mean"], (mae, s["refs"])


@pytest.mark.parametrize("kind, names", fast_first([("cf", ("maml", "metasgd", "reptile")), ("hybrid", ("fomaml",))]))
def test_factor_models_vmap_equals_loop_with_gradient_learners(setup, kind, names):
  _, scen, content, ctx, tables = setup
  model = create_model(kind, fields=content.fields, embed_dim=4, hidden=(8,), rank=4, output_bias=3.5, linear=True)
  ep = episode_batch(tables, scen.train, 3)
  for name in names:
    learner = make(name, model)
    params = learner.init(jax.random.key(0), ep, ctx)
    vg = jax.jit(jax.value_and_grad(lambda p, e: learner.meta_loss(p, e, None)[0]))
    loss, grads = vg(params, ep)
    loop = [vg(params, jax.tree.map(lambda a: a[t : t + 1], ep)) for t in range(3)]
    np.testing.assert_allclose(loss, np.mean([l for l, _ in loop]), rtol=2e-5, atol=1e-6)
    chex.assert_trees_all_close(grads, jax.tree.map(lambda *g: sum(g) / 3, *[g for _, g in loop]), rtol=2e-4, atol=2e-6)
    if name in ("maml", "fomaml", "metasgd"):  # head = the user vector: it moves, the item side does not
      state = learner.adapt(
        params,
        ep.support._replace(x=jax.tree.map(lambda a: a[0], ep.support.x), y=ep.support.y[0], mask=ep.support.mask[0]),
      )
      assert {p[1] for p in state["fast"]} <= set(model.head_scopes)


SET = learners.names(lambda s: s.meta_learner and s.family in ("model", "metric"))  # the set learners


# hybrid only differs from cf by the alpha weight of the change, which one learner covers.
@pytest.mark.parametrize("name, kind", fast_first([(n, "cf") for n in SET] + [("neural_process", "hybrid")]))
def test_set_learners_with_factor_models_vmap_equals_loop_and_are_deterministic(setup, kind, name):
  _, scen, content, ctx, tables = setup
  model = create_model(kind, fields=content.fields, embed_dim=4, hidden=(8,), rank=4, output_bias=3.5, linear=True)
  learner = create_learner(name, model)
  ep = episode_batch(tables, scen.train, 3)
  params = learner.init(jax.random.key(0), ep, ctx)
  assert set(params) == {"model", "enc"}
  # Make the encoder's output non-zero (it starts at "no change of the user vector").
  leaves, tree = jax.tree.flatten(params["enc"])
  keys = jax.random.split(jax.random.key(9), len(leaves))
  params = {
    **params,
    "enc": jax.tree.unflatten(tree, [a + 0.02 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)]),
  }
  vg = jax.jit(jax.value_and_grad(lambda p, e: learner.meta_loss(p, e, jax.random.key(0))[0]))
  loss, grads = vg(params, ep)
  loop = [vg(params, jax.tree.map(lambda a: a[t : t + 1], ep)) for t in range(3)]
  np.testing.assert_allclose(loss, np.mean([l for l, _ in loop]), rtol=2e-5, atol=1e-6)
  chex.assert_trees_all_close(grads, jax.tree.map(lambda *g: sum(g) / 3, *[g for _, g in loop]), rtol=2e-4, atol=2e-5)
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads["enc"]))
  # The adapted state is the user vector change; a query's rating moves by alpha * (<dp, q> + db).
  t0 = jax.tree.map(lambda a: a[0], ep)
  state = learner.adapt(params, t0.support)
  assert state["dp"].shape == (4,) and state["db"].shape == ()
  parts = model.apply(params["model"], t0.query.x, parts=True)
  np.testing.assert_allclose(
    learner.predict(params, state, t0.query.x),
    parts["pred"] + parts["alpha"] * (parts["q"] @ state["dp"] + state["db"]),
    rtol=1e-5,
  )
  fn = make_predict_fn(learner)
  np.testing.assert_allclose(
    predict_episodes(fn, params, tables, scen.val, 16),
    predict_episodes(fn, params, tables, scen.val, 5),
    rtol=1e-5,
    atol=1e-5,
  )


def _one_cf_task(setup, name):
  """A cf model, the set learner `name` on it, its initial parameters and one training task."""
  _, scen, content, ctx, tables = setup
  model = create_model("cf", fields=content.fields, embed_dim=4, rank=4, output_bias=3.5, linear=True)
  learner = create_learner(name, model)
  ep = episode_batch(tables, scen.train, 1)
  return model, learner, learner.init(jax.random.key(0), ep, ctx), jax.tree.map(lambda a: a[0], ep)


def test_factor_matching_is_the_closed_form_user_vector(setup):
  model, learner, params, t0 = _one_cf_task(setup, "matching")
  parts = model.apply(params["model"], t0.support.x, parts=True)
  m = np.asarray(t0.support.mask, np.float64)
  e = m * (np.asarray(t0.support.y) - np.asarray(parts["pred"]))
  q = np.asarray(parts["q"], np.float64)
  M = 0.3 * np.eye(4)
  lam = np.log1p(np.e)  # softplus(1)
  state = learner.adapt(params, t0.support)
  np.testing.assert_allclose(state["dp"], M.T @ M @ (e @ q) / (m.sum() + lam), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(state["db"], e.sum() / (m.sum() + lam), rtol=1e-4, atol=1e-6)


def test_factor_prototype_builds_one_prototype_per_rating_level(setup):
  model, learner, params, t0 = _one_cf_task(setup, "prototype")
  a = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
  c = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
  params = {
    **params,
    "enc": {"params": {**params["enc"]["params"], "level_weight": jnp.asarray(a), "level_bias": jnp.asarray(c)}},
  }
  q = np.asarray(model.apply(params["model"], t0.support.x, parts=True)["q"], np.float64)
  y, m = np.asarray(t0.support.y), np.asarray(t0.support.mask)
  dp, db, n = np.zeros(4), 0.0, 0
  for level, (al, cl) in enumerate(zip(a, c), start=1):
    member = m & (np.round(y) == level)
    if member.any():
      dp += al * q[member].mean(0)
      db += cl * member.sum()
      n += member.sum()
  state = learner.adapt(params, t0.support)
  np.testing.assert_allclose(state["dp"], dp, rtol=1e-4, atol=1e-6)  # metric starts at the identity
  np.testing.assert_allclose(state["db"], db / n, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", SET)
def test_set_learners_on_cf_learn_where_adaptation_must_help(learning_setup, name):
  s = learning_setup
  model, pooled_params = s["cf"]()
  learner = create_learner(name, model)
  params = warm_start(learner.name, learner.init(jax.random.key(0), s["example"], s["ctx"]), pooled_params)
  chex.assert_trees_all_equal(params["model"], pooled_params["model"])
  params, _ = fit_on(learner, params, s["data"], s["scen"], s["config"])
  mae = s["evaluate"](learner, params)
  assert mae < 0.97 * s["refs"]["pooled"] and mae < 0.97 * s["refs"]["support_mean"], (mae, s["refs"])
