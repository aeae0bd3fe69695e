import math

import jax.numpy as jnp
import numpy as np
import pytest

from metarec_jax import metrics


def test_mae_rmse_per_task_and_pooled():
  pred = jnp.array([[3.0, 4.0, 0.0], [2.0, 0.0, 0.0]])
  y = jnp.array([[4.0, 4.0, 9.0], [5.0, 9.0, 9.0]])
  mask = jnp.array([[True, True, False], [True, False, False]])
  # task 0: errors 1, 0 -> MAE .5, RMSE sqrt(.5); task 1: error 3.
  assert float(metrics.mae(pred, y, mask)) == pytest.approx((0.5 + 3.0) / 2)
  assert float(metrics.mae(pred, y, mask, pooled=True)) == pytest.approx(4.0 / 3)
  assert float(metrics.rmse(pred, y, mask)) == pytest.approx((math.sqrt(0.5) + 3.0) / 2)
  assert float(metrics.rmse(pred, y, mask, pooled=True)) == pytest.approx(math.sqrt(10.0 / 3))


def test_empty_task_is_ignored():
  pred = jnp.array([[1.0], [2.0]])
  y = jnp.array([[2.0], [0.0]])
  mask = jnp.array([[True], [False]])
  assert float(metrics.mae(pred, y, mask)) == pytest.approx(1.0)


def test_ndcg_hand_computed():
  # True ratings 3, 1, 5; predicted order: item 1 (score .9), item 0, item 2.
  scores = jnp.array([[0.5, 0.9, 0.1]])
  y = jnp.array([[3.0, 1.0, 5.0]])
  mask = jnp.ones((1, 3), bool)
  g = [7.0, 1.0, 31.0]  # 2^r - 1
  d = [1.0, 1 / math.log2(3), 0.5]
  dcg = g[1] * d[0] + g[0] * d[1] + g[2] * d[2]
  idcg = g[2] * d[0] + g[0] * d[1] + g[1] * d[2]
  assert float(metrics.ndcg(scores, y, mask, 3)) == pytest.approx(dcg / idcg, rel=1e-6)
  dcg2 = g[1] * d[0] + g[0] * d[1]
  idcg2 = g[2] * d[0] + g[0] * d[1]
  assert float(metrics.ndcg(scores, y, mask, 2)) == pytest.approx(dcg2 / idcg2, rel=1e-6)


def test_ndcg_ties_are_deterministic_and_padding_is_ignored():
  # All scores tie: the stable order is the query order.
  scores = jnp.array([[1.0, 1.0, 1.0, 99.0]])
  y = jnp.array([[1.0, 5.0, 3.0, 5.0]])
  mask = jnp.array([[True, True, True, False]])
  g = [1.0, 31.0, 7.0]
  d = [1.0, 1 / math.log2(3)]
  expected = (g[0] * d[0] + g[1] * d[1]) / (g[1] * d[0] + g[2] * d[1])
  assert float(metrics.ndcg(scores, y, mask, 2)) == pytest.approx(expected, rel=1e-6)


def test_ndcg_zero_ideal_dcg_is_excluded():
  scores = jnp.array([[0.1, 0.2], [0.3, 0.1]])
  y = jnp.array([[0.0, 0.0], [1.0, 0.0]])
  mask = jnp.ones((2, 2), bool)
  per_task, valid = metrics.ndcg_per_task(scores, y, mask, 2, binary_gain=True)
  np.testing.assert_array_equal(np.asarray(valid), [False, True])
  assert float(metrics.ndcg(scores, y, mask, 2, binary_gain=True)) == pytest.approx(1.0)
  assert np.isfinite(np.asarray(per_task)).all()


def test_threshold_metrics_standard_definitions():
  pred = jnp.array([[4.5, 3.0, 4.0, 2.0]])
  y = jnp.array([[5.0, 4.0, 2.0, 1.0]])
  mask = jnp.ones((1, 4), bool)
  m = metrics.threshold_metrics(pred, y, mask, 4.0)
  # predicted relevant: items 0, 2; truly relevant: items 0, 1. TP = 1.
  assert float(m["accuracy"]) == pytest.approx(2 / 4)
  assert float(m["precision"]) == pytest.approx(1 / 2)
  assert float(m["recall"]) == pytest.approx(1 / 2)
  assert float(m["f1"]) == pytest.approx(0.5)


def test_threshold_metrics_nothing_predicted():
  m = metrics.threshold_metrics(jnp.array([[1.0, 1.0]]), jnp.array([[5.0, 1.0]]), jnp.ones((1, 2), bool), 4.0)
  assert float(m["precision"]) == 0.0 and float(m["recall"]) == 0.0
  assert float(m["accuracy"]) == pytest.approx(0.5)


def test_rating_metrics_clip_errors_but_rank_raw_scores():
  pred = jnp.array([[6.0, 5.5, 0.0]])
  y = jnp.array([[5.0, 4.0, 1.0]])
  mask = jnp.ones((1, 3), bool)
  m = metrics.rating_metrics(pred, y, mask, ks=(2,), scale=(1.0, 5.0))
  assert float(m["mae"]) == pytest.approx((0 + 1 + 0) / 3)
  # Raw scores rank item 0 above item 1 (clipped they would tie at 5): a perfect ranking.
  assert float(m["ndcg@2"]) == pytest.approx(1.0)
  raw = metrics.rating_metrics(pred, y, mask, ks=(2,))
  assert float(raw["mae"]) == pytest.approx((1 + 1.5 + 1) / 3)
