"""Label modes: rating / scaled / binary encodings, the BCE loss, the binary metrics, and the
mode running end to end (the trivial baselines are invariant to the affine scaling)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarec_jax.data import synthetic
from metarec_jax.labels import LabelSpec, auc_per_task, binary_metrics, masked_bce, precision_recall_at_k
from metarec_jax.learners import create_learner
from metarec_jax.config import Config
from metarec_jax.setup import label_spec
from metarec_jax.evaluate import make_predict_fn
from metarec_jax.data.episodes import redraw_support_query
from metarec_jax.protocol import train_and_evaluate

from helpers import episode_batch, tiny_setup


def test_encode_decode_and_levels():
  r = np.array([1.0, 2.0, 3.5, 4.0, 5.0])
  np.testing.assert_allclose(LabelSpec("rating").encode(r), r)
  scaled = LabelSpec("scaled")
  np.testing.assert_allclose(scaled.encode(r), [0.0, 0.25, 0.625, 0.75, 1.0])
  np.testing.assert_allclose(scaled.decode(scaled.encode(r)), r, rtol=1e-6)
  np.testing.assert_array_equal(LabelSpec("binary", threshold=4.0).encode(r), [0, 0, 0, 1, 1])
  np.testing.assert_array_equal(LabelSpec("binary", threshold=3.5).encode(r), [0, 0, 1, 1, 1])
  assert LabelSpec("rating").levels() == (1.0, 2.0, 3.0, 4.0, 5.0)
  assert scaled.levels() == (0.0, 0.25, 0.5, 0.75, 1.0)
  assert LabelSpec("binary").levels() == (0.0, 1.0)
  assert LabelSpec("binary").output_bias(0.25) == pytest.approx(np.log(1 / 3))
  assert (LabelSpec("rating").loss, LabelSpec("scaled").loss, LabelSpec("binary").loss) == ("mse", "mse", "bce")
  assert LabelSpec("binary").select_metric == "logloss" and scaled.select_metric == "mae"
  with pytest.raises(ValueError, match="label must be one of rating, scaled, binary"):
    LabelSpec("stars")
  with pytest.raises(ValueError, match="label_threshold must be in"):
    LabelSpec("binary", threshold=6.0)


def test_masked_bce_is_the_cross_entropy_of_the_sigmoid():
  logits = jnp.array([-30.0, -1.0, 0.0, 2.0, 30.0, 5.0])
  y = jnp.array([0.0, 1.0, 1.0, 0.0, 1.0, 1.0])
  mask = jnp.array([True, True, True, True, True, False])
  p = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
  want = -np.mean([np.log(1 - p[0]), np.log(p[1]), np.log(p[2]), np.log(1 - p[3]), np.log(p[4])])
  np.testing.assert_allclose(masked_bce(logits, y, mask), want, rtol=1e-5)
  g = jax.grad(lambda l: masked_bce(l, y, mask))(logits)
  np.testing.assert_allclose(g[:5], (p[:5] - np.asarray(y[:5])) / 5, rtol=1e-5, atol=1e-7)
  assert float(g[5]) == 0.0


def test_auc_counts_ordered_pairs_and_ties_half():
  s = jnp.array([[0.9, 0.1, 0.5, 0.5, 0.0], [0.3, 0.2, 0.1, 0.0, 0.0]])
  y = jnp.array([[1.0, 0.0, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0, 0.0]])
  mask = jnp.array([[True] * 5, [True, True, True, False, False]])
  auc, valid = auc_per_task(s, y, mask)
  # Task 0: positives 0.9, 0.5, 0.0 against negatives 0.1, 0.5: wins 2 + 1.5 + 0 of 6.
  np.testing.assert_allclose(auc[0], 3.5 / 6)
  assert bool(valid[0]) and not bool(valid[1])  # task 1 has no valid negative


def test_precision_at_k_is_by_item_and_recall_by_positives():
  s = jnp.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]])
  y = jnp.array([[1.0, 0.0, 1.0, 1.0, 0.0, 1.0]])
  mask = jnp.array([[True, True, True, True, True, False]])
  p, pv, r, rv = precision_recall_at_k(s, y, mask, 3)
  np.testing.assert_allclose(p, [2 / 3])  # items 0, 1, 2: two positives among three items
  np.testing.assert_allclose(r, [2 / 3])  # of the three valid positives
  p10, _, r10, _ = precision_recall_at_k(s, y, mask, 10)  # k beyond the query: its 5 valid items
  np.testing.assert_allclose(p10, [3 / 5])
  np.testing.assert_allclose(r10, [1.0])
  m = binary_metrics(jnp.array([[0.9, 0.6, 0.7, 0.6, 0.1, 0.4]]), y, mask, ks=(3,))
  assert float(m["accuracy"]) == pytest.approx(4 / 5)  # item 1 (p 0.6, a negative) is the one error
  assert float(m["precision"]) == pytest.approx(3 / 4) and float(m["recall"]) == pytest.approx(1.0)
  assert set(m) >= {"logloss", "auc", "precision", "recall", "f1", "precision@3", "recall@3", "ndcg@3"}


@pytest.mark.slow
def test_scaled_mode_reports_the_rating_scale_and_trivial_baselines_are_invariant(tmp_path):
  base = Config(
    dataset="synthetic",
    synthetic_users=120,
    synthetic_items=80,
    learner="global_mean",
    baselines=("item_mean", "support_mean"),
    checkpoints=False,
    embed_dim=4,
    hidden=(8,),
  )
  rating = train_and_evaluate(base, str(tmp_path / "rating"))
  scaled = train_and_evaluate(dataclasses.replace(base, label="scaled"), str(tmp_path / "scaled"))
  for name in ("global_mean", "item_mean", "support_mean"):
    for s in ("warm", "user_cold"):
      for m in ("mae", "rmse", "ndcg@3"):
        np.testing.assert_allclose(scaled["results"][name][s][m], rating["results"][name][s][m], rtol=1e-5)


@pytest.mark.slow
def test_binary_mode_trains_with_bce_and_reports_classification_metrics(tmp_path):
  config = Config(
    dataset="synthetic",
    synthetic_users=120,
    synthetic_items=80,
    learner="maml",
    inner_steps=1,
    epochs=2,
    label="binary",
    label_threshold=4.0,
    baselines=("item_mean", "popularity"),
    checkpoints=False,
    embed_dim=4,
    hidden=(8,),
  )
  final = train_and_evaluate(config, str(tmp_path / "binary"))
  res = final["results"]["maml"]["user_cold"]
  assert {"accuracy", "precision", "recall", "f1", "auc", "logloss", "precision@3", "ndcg@3"} <= set(res)
  assert "mae" not in res
  assert 0.0 <= res["auc"] <= 1.0 and np.isfinite(res["logloss"])
  assert final["training"]["maml"]["best_val/logloss"] < np.log(2) + 0.05  # log loss near or below chance


def test_learners_output_logits_under_bce_and_the_predict_fn_applies_the_sigmoid():
  ds, scen, model, ctx, tables = tiny_setup()
  for name in ("maml", "neural_process", "prototype", "pooled"):
    learner = create_learner(name, model, loss="bce", levels=(0.0, 1.0))
    assert learner.link == "sigmoid"
  assert create_learner("item_mean").link == "identity"
  learner = create_learner("pooled", model, loss="bce", levels=(0.0, 1.0))
  ep = episode_batch(tables, scen.val, 2)
  params = learner.init(jax.random.key(0), ep, ctx)
  fn = make_predict_fn(learner)
  arrays = {k: jnp.asarray(v[:2]) for k, v in scen.val.arrays().items()}
  probs = fn(params, {k: jnp.asarray(v) for k, v in tables.items()}, arrays)
  logits = jax.vmap(lambda x: model.apply(params["model"], x))(ep.query.x)
  np.testing.assert_allclose(probs, jax.nn.sigmoid(logits), rtol=1e-5)


def test_implicit_datasets_refuse_rating_labels():
  ds = synthetic.generate(n_users=20, n_items=30, seed=0)
  implicit = dataclasses.replace(ds, implicit=True, name="toy-implicit")
  with pytest.raises(ValueError, match="--label=rating does not apply to toy-implicit"):
    label_spec(Config(label="rating"), implicit)
  assert label_spec(Config(), implicit).binary and label_spec(Config(), ds).mode == "rating"


def test_redraw_keeps_each_tasks_query_size():
  ep = {
    "user": jnp.array([0, 1]),
    "query_item": jnp.array([[1, 2, 3], [4, 0, 0]]),
    "query_rating": jnp.ones((2, 3)),
    "query_mask": jnp.array([[True, True, True], [True, False, False]]),
    "support_item": jnp.array([[5, 6, 0, 0], [7, 8, 9, 10]]),
    "support_rating": jnp.zeros((2, 4)),
    "support_mask": jnp.array([[True, True, False, False], [True, True, True, True]]),
  }
  for seed in range(5):
    out = redraw_support_query(jax.random.key(seed), ep)
    np.testing.assert_array_equal(out["query_mask"].sum(1), [3, 1])
    np.testing.assert_array_equal(out["support_mask"].sum(1), [2, 4])
    for t in range(2):
      before = sorted(
        np.concatenate(
          [
            np.asarray(ep["query_item"][t])[np.asarray(ep["query_mask"][t])],
            np.asarray(ep["support_item"][t])[np.asarray(ep["support_mask"][t])],
          ]
        )
      )
      after = sorted(
        np.concatenate(
          [
            np.asarray(out["query_item"][t])[np.asarray(out["query_mask"][t])],
            np.asarray(out["support_item"][t])[np.asarray(out["support_mask"][t])],
          ]
        )
      )
      assert before == after


@pytest.mark.slow
def test_recommend_adapts_on_encoded_ratings_and_reports_stars(tmp_path):
  from metarec_jax.recommend import load_trained, recommend_for_new_user

  config = Config(
    dataset="synthetic",
    synthetic_users=120,
    synthetic_items=80,
    learner="support_mean",
    label="scaled",
    baselines=(),
    embed_dim=4,
    hidden=(8,),
  )
  train_and_evaluate(config, str(tmp_path / "run"))
  tr = load_trained(str(tmp_path / "run"))
  out = recommend_for_new_user(tr, [(0, 5.0), (1, 3.0)], top_k=3)
  # The support mean of the scaled ratings (1.0 and 0.5) is 0.75, i.e. 4 stars.
  assert [row["score"] for row in out["top_k"]] == pytest.approx([4.0, 4.0, 4.0])
