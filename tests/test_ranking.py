"""The ranking protocol: metrics on hand-made rankings, EASE against an independent solve,
Mult-VAE's loss by hand, the split's disjointness, device evaluation without transfers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarec_jax.data import synthetic
from metarec_jax.ranking import RANKERS
from metarec_jax.ranking.baselines import ease_weights
from metarec_jax.ranking.evaluate import RankingEvaluator, per_user_metrics
from metarec_jax.ranking.mult_vae import MultVAE, mult_vae_loss
from metarec_jax.ranking.split import UserSets, build_ranking_data


def test_metrics_on_a_hand_made_ranking_with_ties_small_heldout_and_folded_in_items():
  n = 120
  scores = np.zeros((2, n), np.float32)
  # user 0: items 0..4 score 5..1 (item 0 is folded in: excluded), the rest tie at 0 -> lower index first
  scores[0, :5] = [5, 4, 3, 2, 1]
  support = np.zeros((2, n), bool)
  support[0, 0] = True
  query = np.zeros((2, n), bool)
  query[0, [1, 3, 60]] = True  # ranks 1, 3 and (ties: 5..119 in index order after items 1..4) 60 - 5 + 5 = 60
  # user 1: all scores tie; held-out items 0 and 119: ranks 1 and 120 (outside every cut-off)
  query[1, [0, 119]] = True
  m = {
    k: np.asarray(v) for k, v in per_user_metrics(jnp.asarray(scores), jnp.asarray(support), jnp.asarray(query)).items()
  }
  # user 0 ranking: 1, 2, 3, 4, 5, 6, ..., so item 60 is at rank 60
  assert m["precision@10"][0] == pytest.approx(2 / 10) and m["hr@10"][0] == 1.0
  assert m["recall@10"][0] == pytest.approx(2 / 3)  # min(10, 3) = 3 held out
  assert m["recall@20"][0] == pytest.approx(2 / 3) and m["recall@50"][0] == pytest.approx(2 / 3)
  d = 1 / np.log2(np.arange(2, 102))
  assert m["ndcg@100"][0] == pytest.approx((d[0] + d[2] + d[59]) / d[:3].sum(), rel=1e-5)
  assert m["recall@20"][1] == pytest.approx(1 / 2) and m["precision@10"][1] == pytest.approx(1 / 10)
  assert m["ndcg@100"][1] == pytest.approx(d[0] / d[:2].sum(), rel=1e-5)  # item 119 is at rank 120 > 100


def test_recall_divides_by_the_smaller_of_k_and_the_heldout_count():
  n = 200
  scores = jnp.asarray(-np.arange(n, dtype=np.float32)[None, :])  # item i at rank i + 1
  query = np.zeros((1, n), bool)
  query[0, :60] = True  # 60 held out, all at the top
  m = per_user_metrics(scores, jnp.zeros((1, n), bool), jnp.asarray(query))
  assert (
    float(m["recall@20"][0]) == 1.0
    and float(m["recall@50"][0]) == 1.0
    and float(m["ndcg@100"][0]) == pytest.approx(1.0)
  )


def test_ease_matches_an_independent_constrained_solve():
  rng = np.random.default_rng(0)
  x = (rng.random((40, 7)) < 0.35).astype(np.float64)
  lam = 3.0
  b = ease_weights(x, lam)
  # independent: each item's column regresses it on the other items (ridge lam), zero self-weight
  for j in range(x.shape[1]):
    others = [i for i in range(x.shape[1]) if i != j]
    a = x[:, others]
    coef = np.linalg.solve(a.T @ a + lam * np.eye(len(others)), a.T @ x[:, j])
    np.testing.assert_allclose(b[others, j], coef, rtol=1e-8, atol=1e-10)
    assert b[j, j] == 0.0


def test_mult_vae_loss_by_hand():
  logits = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
  x = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
  mu = np.array([[0.5, -0.5], [1.0, 0.0]])
  logvar = np.array([[0.0, 0.2], [-0.3, 0.1]])
  logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  nll = -(logp * x).sum(1).mean()
  kl = (0.5 * (-logvar + np.exp(logvar) + mu**2 - 1)).sum(1).mean()
  loss, (got_nll, got_kl) = mult_vae_loss(*(jnp.asarray(a) for a in (logits, mu, logvar, x)), 0.2)
  assert float(got_nll) == pytest.approx(nll, rel=1e-6) and float(got_kl) == pytest.approx(kl, rel=1e-6)
  assert float(loss) == pytest.approx(nll + 0.2 * kl, rel=1e-6)
  model = MultVAE(n_items=3, hidden=4, latent=2)
  params = model.init(jax.random.key(0), jnp.zeros((1, 3)))["params"]
  out, m, lv = model.apply({"params": params}, jnp.asarray(x, jnp.float32))
  assert out.shape == (2, 3) and m.shape == lv.shape == (2, 2)


@pytest.fixture(scope="module")
def data():
  ds = synthetic.generate(n_users=500, n_items=120, min_ratings=15, max_ratings=40, seed=0)
  return build_ranking_data(ds, seed=0, min_heldout=50)


def test_split_users_are_disjoint_and_support_and_query_are_disjoint(data):
  train, val, test = set(data.train_users), set(data.val.users), set(data.test.users)
  assert not (train & val) and not (train & test) and not (val & test)
  assert len(val) >= 40 and len(test) >= 40
  for sets in (data.val, data.test):
    support = sets.support_mask(data.n_items)
    assert not (support & sets.query).any()
    assert support.any(1).all() and sets.query.any(1).all()
    n_pos = support.sum(1) + sets.query.sum(1)
    assert np.all(sets.query.sum(1) == np.maximum(1, np.round(0.2 * n_pos)))
  assert (
    data.train_x.shape == (len(train), data.n_items) and data.train_x.sum(0).min() > 0
  )  # catalogue: seen in training


def test_support_cap_keeps_the_earliest_and_excludes_the_rest_from_the_ranking():
  sets = UserSets(np.array([0]), np.array([[4, 2, 7]], np.int32), np.zeros((1, 10), bool))
  np.testing.assert_array_equal(np.flatnonzero(sets.support_mask(10, cap=2)[0]), [2, 4])
  sets.query[0, 9] = True
  seen = []

  def score(params, s):  # records what the scorer is given; ranks items 7, 4, 2 first
    seen.append(s)
    return jnp.broadcast_to(jnp.array([0, 0, 8, 0, 9, 0, 0, 10, 0, 1.0]), s.shape)

  ev = RankingEvaluator(10, chunk=4)
  m = ev.score(score, {}, "t", sets, cap=1)
  assert m["hr@10"] == 1.0 and m["precision@10"] == pytest.approx(0.1)
  # item 9 ranks first: the support items 7, 4, 2 (also the ones not given) are out of the ranking
  assert m["ndcg@100"] == pytest.approx(1.0)


def test_every_ranker_fits_and_scores_and_evaluation_moves_no_data(data):
  ev = RankingEvaluator(data.n_items, chunk=32)
  for name, spec in RANKERS.items():
    options = {**spec.grid[0], "seed": 0, "epochs": 2, "iters": 2}
    params = spec.fit(data.train_x, options, None)
    first = ev.score(spec.score, params, "test", data.test)
    with jax.transfer_guard("disallow"):  # the sets and parameters are on the device already
      again = ev.score(spec.score, params, "test", data.test)
    assert again == first, name
    assert 0.0 <= first["recall@20"] <= 1.0 and first["n_users"] == len(data.test)


def test_personalised_rankers_beat_popularity_on_two_tastes():
  # 60 users like items 0-29 (the popular half), 40 like items 30-59; each user has 12 of their half.
  rng = np.random.default_rng(1)
  x = np.zeros((100, 60), np.float32)
  for u in range(100):
    half = 0 if u < 60 else 30
    x[u, half + rng.choice(30, 12, replace=False)] = 1.0
  train, held = x[::2], x[1::2]
  support = np.where(np.arange(60)[None, :] < 60, held, 0)
  order = [rng.permutation(np.flatnonzero(r)) for r in support]
  sets = UserSets(np.arange(len(held)), np.array([o[:9] for o in order], np.int32), np.zeros_like(held, bool))
  for j, o in enumerate(order):
    sets.query[j, o[9:]] = True
  ev = RankingEvaluator(60, chunk=16)
  recall = {}
  for name, options in (
    ("popularity", {}),
    ("item_knn", {}),
    ("ease", {"lam": 10.0}),
    ("wmf", {"rank": 4, "alpha": 5.0, "reg": 1.0}),
  ):
    spec = RANKERS[name]
    recall[name] = ev.score(spec.score, spec.fit(train, options), "t", sets)["recall@20"]
  for name in ("item_knn", "ease", "wmf"):
    assert recall[name] > recall["popularity"] + 0.2, recall


@pytest.mark.slow
def test_ranking_run_end_to_end_with_recommend(tmp_path):
  import json

  from conftest import run_binary

  workdir = str(tmp_path / "rank")
  common = ["--protocol=ranking", "--synthetic_users=400", "--synthetic_items=150", "--epochs=2", "--few_shot_ks=1,3"]
  common.append("--baselines=popularity,ease")
  proc = run_binary("experiments.train", *common, f"--workdir={workdir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  final = json.load(open(f"{workdir}/final_metrics.json"))
  assert final["protocol"] == "ranking" and final["learner"] == "maml_rank"
  assert set(final["results"]) == {"maml_rank", "popularity", "ease"}
  for name, res in final["results"].items():
    m = res["user_cold"]
    assert m["n_users"] == final["dataset"]["test_users"] and 0 <= m["recall@20"] <= 1 and 0 <= m["ndcg@100"] <= 1
    assert set(final["few_shot"]["user_cold"][name]) == {"1", "3"}
    assert final["training"][name]["val/ndcg@100"] > 0
  assert "maml_rank and 2 baselines on synthetic, test users; Recall@20 / nDCG@100" in proc.stdout
  proc = run_binary(
    "experiments.recommend", f"--workdir={workdir}", "--batch_scenario=user_cold", "--top_k=10", "--json"
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  res = json.loads(proc.stdout)
  for who in ("metrics", "popularity_metrics", "ease_metrics"):
    assert {"precision@10", "recall@10", "hr@10", "ndcg@10"} <= set(res[who])
  proc = run_binary("experiments.recommend", f"--workdir={workdir}", "--liked=1,2", "--top_k=5", "--json")
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout)
  assert len(out["top_k"]) == 5 and not {1, 2} & {r["item_id"] for r in out["top_k"]}
  proc = run_binary("experiments.recommend", f"--workdir={workdir}", "--ratings=1:5")
  assert proc.returncode == 2 and "a ranking run takes the new user's liked items" in proc.stderr


def test_few_shot_table_is_mean_and_std_over_runs():
  from metarec_jax.aggregate import few_shot_markdown

  runs = [
    {"few_shot": {"user_cold": {"ease": {"1": {"recall@20": v}, "5": {"recall@20": v + 0.1}}}}} for v in (0.2, 0.4)
  ]
  md = few_shot_markdown({"g": runs}, "recall@20").splitlines()
  assert md[0] == "| run | learner | k=1 | k=5 |"
  assert md[2] == "| g | ease | 0.3000 ± 0.1000 | 0.4000 ± 0.1000 |"


@pytest.mark.slow
def test_compare_draws_the_few_shot_ranking_curve(tmp_path):
  import os

  from metarec_jax.compare import compare
  from metarec_jax.config import resolve

  base = resolve(
    "default",
    {"protocol": "ranking", "synthetic_users": 300, "synthetic_items": 100, "epochs": 2, "few_shot_ks": (1, 3)},
  )
  base = dataclasses_replace(base, baselines=("popularity", "ease"))
  md = compare(base, ["maml_rank"], [0], str(tmp_path / "cmp"))
  assert "user-cold RECALL@20 against support size k" in md and "| ease | " in md
  assert os.path.isfile(tmp_path / "cmp" / "figures" / "few_shot.png")


def dataclasses_replace(config, **kw):
  import dataclasses

  return dataclasses.replace(config, **kw)


def test_maml_ease_reads_a_base_fitted_without_the_users_fold():
  from metarec_jax.ranking.maml_rank import FOLDS, _ease_base

  rng = np.random.default_rng(0)
  x = (rng.random((50, 12)) < 0.3).astype(np.float32)
  base, folds, fold = _ease_base(x, {"seed": 0, "lam": 5.0}, None)
  np.testing.assert_allclose(base["B"], ease_weights(x, 5.0), atol=1e-6)
  assert folds.shape == (FOLDS, 12, 12) and sorted(np.bincount(fold)) == [10] * FOLDS
  for k in range(FOLDS):  # fold k's base never saw fold k's users
    np.testing.assert_allclose(folds[k], ease_weights(x[fold != k], 5.0), atol=1e-6)
  params = RANKERS["maml_ease"].fit(x, {"seed": 0, "epochs": 1, "batch": 8, "random_support": True}, None)
  assert RANKERS["maml_ease"].score(params, jnp.asarray(x[:3])).shape == (3, 12)
