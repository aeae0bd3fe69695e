"""The recommendation module: top-K for a new user, batch ranking metrics, input errors."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_binary
from metarec_jax import metrics
from metarec_jax.data import DataError
from metarec_jax.recommend import (
  RecommendError,
  batch_recommend,
  load_trained,
  parse_ratings,
  read_ratings_file,
  recommend_for_new_user,
)

pytestmark = pytest.mark.slow  # end-to-end runs (binaries or train_and_evaluate) and real data


@pytest.fixture(scope="module")
def trained(tiny_trained_run):
  return load_trained(tiny_trained_run)


def test_topk_metrics_by_hand():
  scores = jnp.array([[0.9, 0.8, 0.7, 0.6, 0.5], [0.1, 0.2, 0.3, 0.4, 0.5], [0.5, 0.4, 0.3, 0.2, 0.1]])
  relevant = jnp.array(
    [[False, True, False, False, True], [True, False, False, False, False], [False, False, False, False, False]]
  )  # user 3 has nothing relevant: left out
  valid = jnp.array(
    [
      [False, True, True, True, True],  # item 0 is a support item: excluded
      [True, True, True, True, True],
      [True, True, True, True, True],
    ]
  )
  m = metrics.topk_metrics(scores, relevant, valid, 2)
  # user 1 ranks items 1, 2 (hit, miss); user 2 ranks items 4, 3 (miss, miss)
  assert int(m["n_users"]) == 2
  assert float(m["precision@2"]) == pytest.approx((1 / 2 + 0) / 2)
  assert float(m["recall@2"]) == pytest.approx((1 / 2 + 0) / 2)
  assert float(m["hr@2"]) == pytest.approx(0.5)
  ideal = 1 + 1 / np.log2(3)  # user 1 has two relevant items
  assert float(m["ndcg@2"]) == pytest.approx((1 / ideal + 0) / 2)


def test_recommend_text_output(trained, capsys):
  from metarec_jax.recommend import format_table

  print(format_table(recommend_for_new_user(trained, parse_ratings("1:5,2:4,3:1", trained.setup.ds), top_k=4)))
  out = capsys.readouterr().out.splitlines()
  assert out[0] == f"synthetic, learner maml (checkpoint step {trained.checkpoint_step}); adapted to 3 ratings:"
  assert out[4] == "top 4 of 117 unrated items:" and len(out) == 10 and "Synthetic item" in out[-1]


def test_recommend_ranks_unrated_items_by_the_adapted_scores(trained):
  ds = trained.setup.ds
  ratings = parse_ratings("1:5,2:4,3:1", ds)
  res = recommend_for_new_user(trained, ratings, top_k=7)
  rows = res["top_k"]
  assert [r["rank"] for r in rows] == list(range(1, 8))
  assert all(a["score"] >= b["score"] for a, b in zip(rows, rows[1:]))
  assert not {r["item_id"] for r in rows} & {1, 2, 3}
  assert res["n_candidates"] == ds.n_items - 3
  # The ratings matter: the opposite ratings give different scores.
  flipped = recommend_for_new_user(trained, parse_ratings("1:1,2:2,3:5", ds), top_k=7)
  assert [r["score"] for r in flipped["top_k"]] != [r["score"] for r in rows]


def test_ratings_of_new_items_are_used_through_their_features(trained):
  st = trained.setup
  known = np.zeros(st.ds.n_items, bool)
  known[st.scen.train_ratings[1]] = True
  new_id = int(st.ds.item_ids[np.flatnonzero(~known)[0]])
  a, b = (int(x) for x in st.ds.item_ids[np.flatnonzero(known)[:2]])
  base = recommend_for_new_user(trained, parse_ratings(f"{a}:5,{b}:4", st.ds), top_k=5)
  with_new = recommend_for_new_user(trained, parse_ratings(f"{a}:5,{b}:4,{new_id}:1", st.ds), top_k=5)
  assert with_new["ratings"][-1]["item_id"] == new_id
  assert [r["score"] for r in with_new["top_k"]] != [r["score"] for r in base["top_k"]]


@pytest.mark.parametrize(
  "spec, message",
  [
    ("", "--ratings is empty"),
    ("1:5,99999:4", "item id '99999' is not an item of synthetic"),
    ("1:5,2:9", "rating 9 is outside the rating scale [1, 5]"),
    ("1:5,2:0", "rating 0 is outside the rating scale [1, 5]"),
    ("1-5", "expected item_id:rating"),
    ("1:great", "rating 'great' is not a number"),
  ],
)
def test_bad_ratings_get_clear_errors(trained, spec, message):
  with pytest.raises(RecommendError) as err:
    parse_ratings(spec, trained.setup.ds)
  assert message in str(err.value)


def test_ratings_file(tmp_path, trained):
  good = tmp_path / "r.csv"
  good.write_text("item_id,rating\n1,5\n2,4\n1,3\n")
  assert read_ratings_file(str(good), trained.setup.ds) == [(0, 3.0), (1, 4.0)]  # repeated item: last kept
  bad = tmp_path / "bad.csv"
  bad.write_text("item,score\n1,5\n")
  with pytest.raises(DataError, match=r"bad.csv:1: expected the header 'item_id,rating'"):
    read_ratings_file(str(bad), trained.setup.ds)
  bad.write_text("item_id,rating\n1,5\n2;4\n")
  with pytest.raises(DataError, match=r"bad.csv:3: expected 2 fields separated by ','"):
    read_ratings_file(str(bad), trained.setup.ds)


def test_batch_mode_excludes_support_items_and_scores_the_catalogue(trained):
  res = batch_recommend(trained, "user_cold", top_k=5)
  eps = trained.setup.scen.test["user_cold"]
  assert res["n_test_users"] == len(eps) == len(res["lists"])
  ids = trained.setup.ds.item_ids
  for t, entry in enumerate(res["lists"]):
    support = set(ids[eps.support_item[t][eps.support_mask[t]]].tolist())
    assert len(entry["items"]) == 5 and not support & set(entry["items"])
  for k in ("precision@5", "recall@5", "hr@5", "ndcg@5"):
    assert 0 <= res["metrics"][k] <= 1 and 0 <= res["popularity_metrics"][k] <= 1
  cold = batch_recommend(trained, "item_cold", top_k=5)
  assert cold["popularity_metrics"] is None  # new items have no training ratings to rank by


def test_recommend_binary_text_json_and_errors(tmp_path, tiny_trained_run):
  ratings = tmp_path / "r.csv"
  ratings.write_text("item_id,rating\n1,5\n2,4\n3,1\n")
  proc = run_binary(
    "experiments.recommend", f"--workdir={tiny_trained_run}", f"--ratings_file={ratings}", "--top_k=4", "--json"
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  res = json.loads(proc.stdout)
  assert len(res["top_k"]) == 4 and res["learner"] == "maml" and res["checkpoint_step"] is not None
  proc = run_binary(
    "experiments.recommend",
    f"--workdir={tiny_trained_run}",
    "--batch_scenario=warm",
    "--top_k=3",
    f"--out={tmp_path}/warm.json",
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert (
    "P@3" in proc.stdout
    and "popularity ranking on the same candidates" in proc.stdout
    and len(json.load(open(tmp_path / "warm.json"))["lists"]) > 0
  )
  for args, message in [
    (["--ratings=1:5,2:7"], "error: --ratings pair 2: rating 7 is outside the rating scale [1, 5]"),
    ([], "error: give exactly one of --ratings, --ratings_file and --liked (or --batch_scenario)"),
  ]:
    proc = run_binary("experiments.recommend", f"--workdir={tiny_trained_run}", *args)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == message, proc.stderr[-500:]
  proc = run_binary("experiments.recommend", f"--workdir={tiny_trained_run}", "--liked=1,2", "--top_k=3", "--json")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert [r["rating"] for r in json.loads(proc.stdout)["ratings"]] == [5.0, 5.0]  # liked: the top of the scale
  proc = run_binary("experiments.recommend", f"--workdir={tmp_path}/nothing", "--ratings=1:5")
  assert proc.returncode == 2 and "config.json: not found" in proc.stderr


def test_a_fine_tuned_learner_restores_the_pooled_network_and_its_recorded_choice(tmp_path):
  from metarec_jax.config import resolve
  from metarec_jax.protocol import train_and_evaluate

  workdir = str(tmp_path / "ft")
  final = train_and_evaluate(resolve("smoke", {"learner": "finetune", "baselines": ("item_mean",)}), workdir)
  chosen = final["training"]["finetune"]["selected"]
  tr = load_trained(workdir)
  assert tr.checkpoint_step is not None  # the pooled network's best checkpoint, not an initialisation
  assert float(tr.params["adapt_options"]["inner_lr"]) == pytest.approx(chosen["inner_lr"])
  assert int(tr.params["adapt_options"]["inner_steps"]) == chosen["inner_steps"]
  # The restored learner scores the test users as the run did.
  from metarec_jax.evaluate import score

  scen = tr.setup.scen
  pred = tr.setup.evaluator.predict(tr.learner, tr.params, ("test", "user_cold"), scen.test["user_cold"])
  got = score(pred, scen.test["user_cold"], tr.setup.config.ndcg_ks, scen.label)["mae"]
  assert got == pytest.approx(final["results"]["finetune"]["user_cold"]["mae"], rel=1e-6)


def test_min_item_ratings_and_scores_within_the_rating_scale(trained):
  st = trained.setup
  counts = np.bincount(st.scen.train_ratings[1], minlength=st.ds.n_items)
  cut = int(np.median(counts[counts > 0]))
  res = recommend_for_new_user(trained, parse_ratings("1:5,2:4,3:1", st.ds), top_k=20, min_item_ratings=cut)
  index = {i: j for j, i in enumerate(st.ds.item_ids)}
  assert all(counts[index[r["item_id"]]] >= cut for r in res["top_k"])
  assert res["n_candidates"] == int(
    np.sum(counts[np.setdiff1d(np.arange(st.ds.n_items), [index[1], index[2], index[3]])] >= cut)
  )
  lo, hi = st.ds.rating_scale
  assert all(lo <= r["score"] <= hi for r in res["top_k"])
