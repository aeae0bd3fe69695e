"""The rating protocol's episode learners meta-trained for ranking (ranking/episodic.py)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarec_jax.config import Config
from metarec_jax.data import synthetic
from metarec_jax.learners import get_spec
from metarec_jax.ranking import get_ranker, ranker_names
from metarec_jax.ranking.episodic import episode_learners, support_arrays, train_episode
from metarec_jax.ranking.evaluate import RankingEvaluator
from metarec_jax.ranking.split import build_ranking_data

SMALL = dict(hidden=(8,), embed_dim=4, inner_steps=1, meta_batch_size=8, rank=4, protocol="ranking")


@pytest.fixture(scope="module")
def data():
  ds = synthetic.generate(n_users=240, n_items=60, min_ratings=15, max_ratings=30, seed=0)
  return build_ranking_data(ds, seed=0, min_heldout=30)


def test_every_family_has_a_ranking_learner():
  learners = episode_learners()
  assert {get_spec(n).family for n in learners} == {"optimisation", "model", "metric", "baseline"}
  assert {"maml", "metasgd", "anil", "reptile", "neural_process", "in_context", "prototype", "matching"} <= set(
    learners
  )
  assert "pooled" in learners and "finetune" not in learners and "als_foldin" not in learners
  assert set(learners) <= set(ranker_names())
  Config(learner="prototype", protocol="ranking", baselines=("popularity",)).validate()  # valid names
  with pytest.raises(ValueError, match="'als_foldin' has no ranking model"):
    Config(learner="als_foldin", protocol="ranking", baselines=()).validate()


def test_training_episodes_split_a_users_positives_and_draw_true_negatives():
  row = np.zeros(50, np.float32)
  row[[1, 4, 9, 12, 20, 33, 40, 41, 47, 49]] = 1.0
  for seed in range(5):
    (si, sy, sm), (qi, qy, qm) = jax.device_get(train_episode(jax.random.key(seed), jnp.asarray(row), 6, 3, None))
    s_pos, s_neg = si[(sy == 1) & sm], si[(sy == 0) & sm]
    q_pos, q_neg = qi[(qy == 1) & qm], qi[(qy == 0) & qm]
    assert len(s_pos) == 6 and len(q_pos) == 3  # 0.8 * 10 = 8 capped at 6; the query takes the next 3
    assert len(s_neg) == len(s_pos) and len(q_neg) == len(q_pos)  # balanced
    assert row[s_pos].all() and row[q_pos].all() and not set(s_pos) & set(q_pos)
    assert len(set(s_pos)) == 6 and len(set(s_neg)) == 6
    assert not row[q_neg].any()  # query negatives: the user's non-positives
    assert not set(s_neg) & set(s_pos)  # support negatives: not in the support
  # a support cap of 2 keeps two positives (and two negatives)
  (_, sy, sm), _ = jax.device_get(train_episode(jax.random.key(0), jnp.asarray(row), 6, 3, 2))
  assert ((sy == 1) & sm).sum() == 2 and ((sy == 0) & sm).sum() == 2


def test_the_softmax_loss_by_hand():
  from metarec_jax.learners.base import LOSSES

  loss, link = LOSSES["softmax"]
  logits = jnp.array([2.0, 0.0, 1.0, 5.0])
  y = jnp.array([1.0, 0.0, 1.0, 1.0])
  mask = jnp.array([True, True, True, False])  # item 3 is padding: neither in the softmax nor a positive
  z = np.log(np.exp(2.0) + np.exp(0.0) + np.exp(1.0))
  assert float(loss(logits, y, mask)) == pytest.approx(((z - 2.0) + (z - 1.0)) / 2, rel=1e-6) and link == "identity"


def test_a_held_out_users_support_is_their_folded_in_items_and_as_many_negatives():
  row = np.zeros(30, np.float32)
  row[[3, 5, 8]] = 1.0
  items, y, mask = jax.device_get(support_arrays(jax.random.key(0), jnp.asarray(row), 4))
  assert sorted(items[(y == 1) & mask]) == [3, 5, 8]
  neg = items[(y == 0) & mask]
  assert len(neg) == 3 and not row[neg].any()


@pytest.mark.parametrize(
  "name, loss", [("maml", "softmax"), ("pooled", "softmax"), ("neural_process", "bce"), ("prototype", "softmax")]
)
def test_each_family_trains_under_the_ranking_loss(data, name, loss):
  config = Config(learner=name, epochs=2, ranking_loss=loss, **SMALL)
  spec = get_ranker(name, config, data)
  ranker = spec.score.__self__
  x = np.asarray(data.train_x)
  before = ranker.init(x)
  ep = ranker.episodes(jax.random.key(1), jnp.asarray(x[:8]))
  loss0, _ = ranker.learner.meta_loss(before, ep, jax.random.key(2))
  params = spec.fit(x, {"seed": 0, "epochs": 3}, None)
  loss1, _ = ranker.learner.meta_loss(params, ep, jax.random.key(2))
  assert np.isfinite(float(loss1)) and float(loss1) < float(loss0)  # BCE on held-out positives vs negatives
  ev = RankingEvaluator(data.n_items, chunk=32)
  first = ev.score(spec.score, params, "test", data.test)
  with jax.transfer_guard("disallow"):
    again = ev.score(spec.score, params, "test", data.test)
  assert again == first and 0.0 <= first["recall@20"] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fomaml", "metasgd", "anil", "reptile", "in_context", "matching"])
def test_the_other_learners_train_under_the_ranking_loss(data, name):
  config = Config(learner=name, epochs=2, **SMALL)
  spec = get_ranker(name, config, data)
  params = spec.fit(np.asarray(data.train_x), {"seed": 0, "epochs": 2}, None)
  m = RankingEvaluator(data.n_items, chunk=32).score(spec.score, params, "test", data.test)
  assert np.isfinite(m["ndcg@100"]) and m["n_users"] == len(data.test)


def test_a_users_scores_do_not_depend_on_the_batch_they_are_scored_in(data):
  config = Config(learner="maml", **SMALL)
  spec = get_ranker("maml", config, data)
  params = spec.score.__self__.init(np.asarray(data.train_x))
  s = jnp.asarray(data.test.support_mask(data.n_items)[:16], jnp.float32)
  together = jax.jit(spec.score)(params, s)
  alone = jax.jit(spec.score)(params, s[3:4])
  np.testing.assert_allclose(together[3], alone[0], rtol=1e-5, atol=1e-5)


def test_adaptation_personalises_the_ranking_on_two_tastes():
  # 120 users like items 0-19 (the popular half), 80 like items 20-39; a shared model of the items
  # alone (pooled) can only rank by popularity, MAML adapts to which half a user's support is in.
  rng = np.random.default_rng(1)
  x = np.zeros((200, 40), np.float32)
  for u in range(200):
    half = 0 if u < 120 else 20
    x[u, half + rng.choice(20, 10, replace=False)] = 1.0
  ds = dataclasses.replace(
    synthetic.generate(n_users=200, n_items=40, min_ratings=5, max_ratings=10, seed=0),
  )
  users, items = np.nonzero(x)
  ds = dataclasses.replace(
    ds,
    users=users.astype(np.int32),
    items=items.astype(np.int32),
    ratings=np.full(len(users), 5.0, np.float32),
    timestamps=np.arange(len(users), dtype=np.int64),
    fields=(),
    features={},
  )
  data = build_ranking_data(ds, seed=0, min_heldout=40)
  ev = RankingEvaluator(data.n_items, chunk=16)
  recall = {}
  for name in ("pooled", "maml"):
    config = Config(learner=name, epochs=30, outer_lr=1e-2, inner_lr=1.0, adapt="all", **{**SMALL, "hidden": (16,)})
    spec = get_ranker(name, config, data)
    params = spec.fit(data.train_x, {"seed": 0, "epochs": 30}, None)
    recall[name] = ev.score(spec.score, params, "test", data.test)["recall@20"]
  assert recall["maml"] > recall["pooled"] + 0.15, recall


@pytest.mark.slow
def test_an_episode_learners_ranking_run_trains_reports_and_recommends(tmp_path):
  import json

  from conftest import run_binary

  workdir = str(tmp_path / "rank")
  proc = run_binary(
    "experiments.train",
    "--protocol=ranking",
    "--learner=maml",
    "--baselines=popularity",
    "--synthetic_users=300",
    "--synthetic_items=100",
    "--epochs=2",
    "--hidden=8",
    "--embed_dim=4",
    "--inner_steps=1",
    "--few_shot_ks=3",
    f"--workdir={workdir}",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  final = json.load(open(f"{workdir}/final_metrics.json"))
  assert final["learner"] == "maml" and final["families"] == {"maml": "optimisation", "popularity": "baseline"}
  assert set(final["adaptation"]["user_cold"]) == {"recall@20_without_adaptation", "ndcg@100_without_adaptation"}
  assert set(final["few_shot"]["user_cold"]["maml"]) == {"3"}
  proc = run_binary("experiments.recommend", f"--workdir={workdir}", "--liked=1,2,3", "--top_k=5", "--json")
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout)
  assert out["score"] == "probability of a positive" and len(out["top_k"]) == 5
  assert all(0.0 < r["score"] < 1.0 for r in out["top_k"]) and not {1, 2, 3} & {r["item_id"] for r in out["top_k"]}
  proc = run_binary("experiments.recommend", f"--workdir={workdir}", "--batch_scenario=user_cold", "--json")
  assert proc.returncode == 0, proc.stderr[-3000:]
  batch = json.loads(proc.stdout)
  # the batch metrics of the saved parameters are the run's own test metrics at the same cut-off
  assert batch["metrics"]["recall@10"] == pytest.approx(final["results"]["maml"]["user_cold"]["recall@10"], abs=1e-5)
