"""Stacked learners (--base): a meta-learner on the residual of a fold-in baseline, with the
base cross-fitted so that a training task's base never saw that user's ratings."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import episode_batch, fit_on, task, tiny_setup
from metarec_jax.learners import create_learner
from metarec_jax.learners.base import Episode
from metarec_jax.learners.stacked import BASE_KEY, fold_context, frozen_mask, make_stacked, residual_levels
from metarec_jax.config import Config
from metarec_jax.training.state import create_train_state
from metarec_jax.data.episodes import device_data
from metarec_jax.evaluate import make_predict_fn, predict_episodes, score
from metarec_jax.training.step import make_train_step
from metarec_jax.protocol import train_and_evaluate

FOLDS = 3


@pytest.fixture(scope="module")
def setup():
  return tiny_setup()


def base_learner(model):
  return create_learner("als_foldin", model, rank=4, reg=3.0)


def stacked(model):
  inner = create_learner("maml", model, inner_lr=0.1, inner_steps=2)
  return make_stacked(inner, base_learner(model), folds=FOLDS), inner


def built(setup, split: str, n: int):
  """(stacked MAML, its inner learner, the base learner, n featurised episodes, params)."""
  _, scen, model, ctx, tables = setup
  learner, inner = stacked(model)
  ep = episode_batch(tables, getattr(scen, split), n)
  return learner, inner, base_learner(model), ep, learner.init(jax.random.key(0), ep, ctx)


def test_fold_context_leaves_out_exactly_the_folds_users(setup):
  _, scen, _, ctx, _ = setup
  for k in range(FOLDS):
    c = fold_context(ctx, k, FOLDS)
    assert not np.any(c.train_users % FOLDS == k)
    assert len(c.train_users) == np.sum(ctx.train_users % FOLDS != k)
    assert c.memo is ctx.memo  # memoised matrices are shared (their keys name what they depend on)


def test_base_stack_is_the_fold_fits_then_the_full_fit(setup):
  learner, inner, base, ep, params = built(setup, "train", 2)
  ctx = setup[3]
  for k in range(FOLDS):
    want = base.init(jax.random.key(0), ep, fold_context(ctx, k, FOLDS))
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[k], params[BASE_KEY]), want)
  chex.assert_trees_all_close(jax.tree.map(lambda a: a[FOLDS], params[BASE_KEY]), base.init(jax.random.key(0), ep, ctx))


def test_prediction_is_the_base_fold_in_plus_the_learner_on_the_residuals(setup):
  learner, inner, base, ep, params = built(setup, "val", 3)
  full = jax.tree.map(lambda a: a[FOLDS], params[BASE_KEY])
  for t in range(3):
    e = task(ep, t)
    b_state = base.adapt(full, e.support)
    fitted = base.predict(full, b_state, e.support.x)
    resid = e.support._replace(y=jnp.where(e.support.mask, e.support.y - fitted, 0.0))
    want = base.predict(full, b_state, e.query.x) + inner.predict(
      params["learner"], inner.adapt(params["learner"], resid), e.query.x
    )
    got = learner.predict(params, learner.adapt(params, e.support), e.query.x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_meta_loss_uses_each_tasks_out_of_fold_base(setup):
  learner, inner, base, ep, params = built(setup, "train", 6)
  rng = jax.random.key(1)
  for t in range(6):
    e = jax.tree.map(lambda a: a[t : t + 1], ep)
    fold = int(e.support.x["user"][0, 0]) % FOLDS
    p = jax.tree.map(lambda a: a[fold], params[BASE_KEY])
    one = task(e, 0)
    st = base.adapt(p, one.support)
    s_res = one.support.y - base.predict(p, st, one.support.x)
    q_res = one.query.y - base.predict(p, st, one.query.x)
    resid = Episode(
      e.support._replace(y=jnp.where(e.support.mask, s_res[None], 0.0)),
      e.query._replace(y=jnp.where(e.query.mask, q_res[None], 0.0)),
    )
    want, _ = inner.meta_loss(params["learner"], resid, rng)
    got, _ = learner.meta_loss(params, e, rng)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_cross_fitting_removes_the_leak_of_the_training_query(setup):
  """The full base was fitted on the training users' query ratings: its residuals there are
  smaller than the out-of-fold base's, which has never seen those users."""
  learner, inner, base, ep, params = built(setup, "train", 64)
  fold = ep.support.x["user"][:, 0] % FOLDS

  def query_mse(which):
    def one(w, sup, q):
      p = jax.tree.map(lambda a: a[w], params[BASE_KEY])
      err = (base.predict(p, base.adapt(p, sup), q.x) - q.y) ** 2
      return jnp.sum(err * q.mask), q.mask.sum()

    se, n = jax.vmap(one)(which, ep.support, ep.query)
    return float(se.sum() / n.sum())

  leaky, honest = query_mse(jnp.full_like(fold, FOLDS)), query_mse(fold)
  assert leaky < 0.95 * honest, (leaky, honest)


def test_base_stays_frozen_and_the_step_compiles_once(setup):
  _, scen, model, ctx, tables = setup
  learner, _ = stacked(model)
  data = device_data(scen.train, tables)
  params = learner.init(jax.random.key(0), episode_batch(data["tables"], scen.train, 1), ctx)
  traces = []
  step = make_train_step(learner, redraw=True, on_trace=lambda: traces.append(1))
  tx = optax.multi_transform(
    {"train": optax.adamw(1e-2, weight_decay=0.5), "frozen": optax.set_to_zero()}, frozen_mask(params)
  )
  state = create_train_state(jax.random.key(1), jax.tree.map(jnp.copy, params), tx)
  order = (8 * jnp.arange(3)[:, None] + jnp.arange(8)[None, :]) % len(scen.train)
  for _ in range(3):
    state, aux = step(state, data, order)
  assert len(traces) == 1 and np.isfinite(float(aux["loss"]))
  chex.assert_trees_all_equal(state.params[BASE_KEY], params[BASE_KEY])
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), state.params["learner"], params["learner"])
  assert max(jax.tree.leaves(moved)) > 0


@pytest.mark.slow
def test_fit_keeps_the_base_frozen_under_weight_decay(setup):
  _, scen, model, ctx, tables = setup
  learner, _ = stacked(model)
  data = device_data(scen.train, tables)
  params = learner.init(jax.random.key(0), episode_batch(data["tables"], scen.train, 1), ctx)
  config = Config(epochs=2, patience=2, meta_batch_size=8, weight_decay=0.5, eval_chunk=16)
  fitted, _ = fit_on(learner, jax.tree.map(jnp.copy, params), data, scen, config)
  chex.assert_trees_all_equal(fitted[BASE_KEY], params[BASE_KEY])
  preds = predict_episodes(make_predict_fn(learner), fitted, data["tables"], scen.val, 16)
  assert np.isfinite(score(preds, scen.val)["mae"])


def test_clear_errors(setup):
  model = setup[2]
  base = base_learner(model)
  with pytest.raises(ValueError, match="closed form"):
    make_stacked(create_learner("maml", model), create_learner("maml", model))
  with pytest.raises(ValueError, match="nothing to meta-train"):
    make_stacked(create_learner("item_mean"), base)
  with pytest.raises(ValueError, match="residual of a 0/1 label"):
    make_stacked(create_learner("maml", model, loss="bce"), base)
  with pytest.raises(ValueError, match="base_folds"):
    make_stacked(create_learner("maml", model), base, folds=1)
  with pytest.raises(ValueError, match="base must be one of"):
    Config(base="item_mean").validate()


def test_binary_labels_are_refused_before_training(tmp_path):
  config = Config(
    dataset="synthetic", synthetic_users=120, synthetic_items=150, label="binary", base="als_foldin", checkpoints=False
  )
  with pytest.raises(ValueError, match="residual of a 0/1 label"):
    train_and_evaluate(config, str(tmp_path / "binary"))


def test_residual_levels_are_centred_on_the_middle_label_level():
  assert residual_levels((1.0, 2.0, 3.0, 4.0, 5.0)) == (-2.0, -1.0, 0.0, 1.0, 2.0)
  assert residual_levels((0.0, 0.25, 0.5, 0.75, 1.0)) == (-0.5, -0.25, 0.0, 0.25, 0.5)  # --label=scaled


def test_a_recorded_base_choice_is_refitted_without_the_validation_grid():
  from metarec_jax.setup import build_setup

  config = Config(
    dataset="synthetic",
    synthetic_users=100,
    synthetic_items=120,
    hidden=(8,),
    embed_dim=4,
    base="als_foldin",
    base_folds=2,
  )
  first = build_setup(config)
  chosen = first.select("als_foldin")
  again = build_setup(config)

  def no_grid(*args, **kwargs):
    raise AssertionError("the validation grid ran again")

  again.val_score = no_grid
  got = again.select("als_foldin", recorded={"name": "als_foldin", "selected": chosen["options"], "val": chosen["val"]})
  assert got["options"] == chosen["options"] and got["val"] == chosen["val"]
  np.testing.assert_allclose(
    predict_episodes(got["predict_fn"], got["params"], again.data["tables"], again.scen.val, 64),
    predict_episodes(chosen["predict_fn"], chosen["params"], first.data["tables"], first.scen.val, 64),
    rtol=1e-6,
  )
  assert again.select("als_foldin") is got  # memoised: stacked learners reuse it
