"""Last.fm loaders (TaNP's lastfm_20 episodes and fresh split, HetRec user_artists) on fixture
files the tests write, and on the shared data when present."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_binary
from metarec_jax.data import DataError, load_dataset
from metarec_jax.data.features import POPULARITY_FIELD, POSITIVE_COUNTS, TRAIN_USER, featurize, leave_own_out
from metarec_jax.data.lastfm import fresh_episodes, load_hetrec_lastfm, load_tanp_lastfm
from metarec_jax.data.tasks import TaskConfig, build_scenarios
from metarec_jax.labels import LabelSpec
from metarec_jax.evaluate import score


def _write(path, text):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)


def _tanp_fixture(root, *, ratings=None, episodes=None):
  """Users 0-3, items 0-5. Episodes: training users 0, 1; validation 2; testing 3."""
  rows = ratings if ratings is not None else [(u, i, int((u + i) % 2 == 0)) for u in range(4) for i in range(6)]
  _write(os.path.join(root, "tanp-lastfm", "ratings_final.txt"), "".join(f"{u}\t{i}\t{y}\n" for u, i, y in rows))
  eps = episodes or {"training": [0, 1], "validation": [2], "testing": [3]}
  for split, users in eps.items():
    for n, u in enumerate(users):
      d = os.path.join(root, "tanp-lastfm", "episodes", split)
      _write(os.path.join(d, f"supp_x_{n}_u_m_ids.txt"), "".join(f"{u}\t{i}\n" for i in (0, 1, 2, 3)))
      _write(os.path.join(d, f"query_x_{n}_u_m_ids.txt"), "".join(f"{u}\t{i}\n" for i in (4, 5)))


def test_tanp_episodes_are_read_with_their_labels(tmp_path):
  _tanp_fixture(str(tmp_path))
  ds = load_tanp_lastfm(str(tmp_path))
  assert ds.implicit and ds.n_users == 4 and ds.n_items == 6 and ds.n_ratings == 24
  fe = ds.fixed_episodes
  assert [len(fe[k]) for k in ("train", "val", "user_cold")] == [2, 1, 1]
  u, si, sy, qi, qy = fe["user_cold"][0]
  assert u == 3 and list(si) == [0, 1, 2, 3] and list(qi) == [4, 5]
  np.testing.assert_array_equal(sy, [(3 + i) % 2 == 0 for i in (0, 1, 2, 3)])
  np.testing.assert_array_equal(qy, [(3 + i) % 2 == 0 for i in (4, 5)])
  scen = build_scenarios(ds, TaskConfig(), seed=0)
  assert len(scen.train) == 2 and len(scen.val) == 1 and len(scen.test["user_cold"]) == 1
  assert len(scen.test["warm"]) == 0 and scen.train.support_item.shape[1] == 4 and scen.train.query_item.shape[1] == 2
  np.testing.assert_array_equal(scen.split.new_users, [3])
  assert len(scen.train_ratings[0]) == 12  # both training users' support and query pairs


@pytest.mark.parametrize(
  "mutate, message",
  [
    (lambda rows: rows[:3] + [(0, 1, 2)] + rows[4:], r"ratings_final.txt:4: field 'label' must be 0 or 1, got 2"),
    (lambda rows: rows + [(0, 0, 0)], r"ratings_final.txt:25: pair \(user 0, item 0\) has conflicting labels"),
    (lambda rows: [r for r in rows if r[:2] != (3, 5)], r"query_x_0_u_m_ids.txt:2: pair \(user 3, item 5\) is not in"),
  ],
)
def test_tanp_bad_rows_name_file_and_line(tmp_path, mutate, message):
  rows = [(u, i, int((u + i) % 2 == 0)) for u in range(4) for i in range(6)]
  _tanp_fixture(str(tmp_path), ratings=mutate(rows))
  with pytest.raises(DataError, match=message):
    load_tanp_lastfm(str(tmp_path))


def test_tanp_non_integer_field_and_mixed_users(tmp_path):
  _tanp_fixture(str(tmp_path))
  path = os.path.join(tmp_path, "tanp-lastfm", "episodes", "testing", "supp_x_0_u_m_ids.txt")
  _write(path, "3\t0\n2\t1\n")
  with pytest.raises(DataError, match=r"supp_x_0_u_m_ids.txt:2: an episode holds one user's pairs; expected user 3"):
    load_tanp_lastfm(str(tmp_path))
  _write(path, "3\tx\n")
  with pytest.raises(DataError, match=r"supp_x_0_u_m_ids.txt:1: field 'item' must be an integer, got 'x'"):
    load_tanp_lastfm(str(tmp_path))


def test_missing_folder_names_the_source(tmp_path):
  with pytest.raises(DataError, match="tanp-lastfm/ratings_final.txt: file not found. Get TaNP's lastfm_20"):
    load_tanp_lastfm(str(tmp_path))
  with pytest.raises(DataError, match="user_artists.dat: file not found. Get hetrec2011-lastfm-2k"):
    load_hetrec_lastfm(str(tmp_path))


def test_fresh_protocol_filters_splits_and_cuts_support_20():
  rng = np.random.default_rng(0)
  counts = [25, 30, 45, 200, 201] + [40] * 15
  users = np.concatenate([np.full(c, u) for u, c in enumerate(counts)])
  items = np.concatenate([rng.permutation(300)[:c] for c in counts])
  labels = rng.integers(0, 2, len(users)).astype(np.float32)
  eps = fresh_episodes(users, items, labels, seed=3)
  kept = sorted(t[0] for v in eps.values() for t in v)
  assert kept == [u for u, c in enumerate(counts) if 30 <= c <= 200]  # 18 users
  assert [len(eps[k]) for k in ("train", "val", "user_cold")] == [13, 2, 3]  # round(.7*18), round(.1*18), rest
  for v in eps.values():
    for u, si, sy, qi, qy in v:
      assert len(si) == 20 and len(qi) == counts[u] - 20
      mine = dict(zip(items[users == u].tolist(), labels[users == u].tolist()))
      assert all(mine[i] == y for i, y in zip(np.concatenate([si, qi]).tolist(), np.concatenate([sy, qy]).tolist()))
  assert fresh_episodes(users, items, labels, seed=3)["val"][0][0] == eps["val"][0][0]  # seeded


def test_hetrec_positives_and_sampled_negatives(tmp_path):
  lines = ["userID\tartistID\tweight"] + [f"{u}\t{a}\t{10 * a + 1}" for u in (2, 7) for a in range(100 + u, 135 + u)]
  _write(os.path.join(tmp_path, "hetrec2011-lastfm-2k", "user_artists.dat"), "\r\n".join(lines) + "\r\n")
  _write(
    os.path.join(tmp_path, "hetrec2011-lastfm-2k", "artists.dat"),
    "id\tname\turl\tpictureURL\n" + "".join(f"{a}\tArtist {a}\tu\tp\n" for a in range(100, 142)),
  )
  ds = load_hetrec_lastfm(str(tmp_path), seed=1)
  assert ds.implicit and ds.n_users == 2 and ds.n_items == 40  # artists 102..141
  assert ds.item_titles[0] == "Artist 102"
  for u in range(2):
    mine = ds.users == u
    pos = set(ds.items[mine & (ds.ratings == 1)].tolist())
    neg = set(ds.items[mine & (ds.ratings == 0)].tolist())
    assert len(pos) == 35 and len(neg) == 5 and not pos & neg  # as many negatives as the 5 unheard artists allow
  bad = lines[:3] + ["2\t103\t0"] + lines[4:]
  _write(os.path.join(tmp_path, "hetrec2011-lastfm-2k", "user_artists.dat"), "\n".join(bad) + "\n")
  with pytest.raises(DataError, match=r"user_artists.dat:4: field 'weight' must be a positive listening count, got 0"):
    load_hetrec_lastfm(str(tmp_path))
  _write(os.path.join(tmp_path, "hetrec2011-lastfm-2k", "user_artists.dat"), "\n".join(lines + [lines[1]]) + "\n")
  with pytest.raises(DataError, match="appears twice"):
    load_hetrec_lastfm(str(tmp_path))


def test_popularity_feature_leaves_a_training_users_own_label_out(tmp_path):
  _tanp_fixture(str(tmp_path))
  ds = load_tanp_lastfm(str(tmp_path))
  counts = ds.features[POSITIVE_COUNTS]
  # Training users 0 and 1: item i is positive for user u when u + i is even.
  np.testing.assert_array_equal(counts, [1, 1, 1, 1, 1, 1])
  np.testing.assert_array_equal(ds.features[TRAIN_USER], [True, True, False, False])
  tables = {k: jnp.asarray(v) for k, v in ds.features.items()}
  user, items = jnp.array([0, 3]), jnp.array([[0, 1], [0, 1]])
  labels, mask = jnp.array([[1.0, 0.0], [1.0, 0.0]]), jnp.ones((2, 2), bool)
  x = leave_own_out(tables, featurize(tables, user, items), user, items, labels, mask)
  # User 0's positive on item 0 is the whole count: it sees count 0 (bucket 0); user 3 sees 1 (bucket 2).
  np.testing.assert_array_equal(x[POPULARITY_FIELD], [[0, 2], [2, 2]])


@pytest.mark.slow
def test_shared_tanp_lastfm_counts_and_popularity_baseline(shared_data_dir):
  ds = load_dataset("lastfm", data_dir=shared_data_dir)
  assert ds.n_ratings == 42346 and int(ds.ratings.sum()) == 21173 and (ds.n_users, ds.n_items) == (1872, 3846)
  fe = ds.fixed_episodes
  assert [len(fe[k]) for k in ("train", "val", "user_cold")] == [248, 35, 66]
  assert sum(len(t[1]) + len(t[3]) for t in fe["train"]) == 8504
  assert sum(len(t[1]) + len(t[3]) for t in fe["user_cold"]) == 2259
  assert all(len(t[1]) == 20 for v in fe.values() for t in v)
  scen = build_scenarios(ds, TaskConfig(), seed=0)
  test = scen.test["user_cold"]
  pop = ds.features[POSITIVE_COUNTS].astype(np.float32)[test.query_item]
  m = score(pop, test, ks=(5,), label=LabelSpec("binary", scale=(0.0, 1.0), threshold=1.0))
  # Item popularity (positives in the training episodes) on TaNP's test episodes.
  assert m["auc"] == pytest.approx(0.723, abs=0.002) and m["ndcg@5"] == pytest.approx(0.771, abs=0.002)
  fresh = load_dataset("lastfm", data_dir=shared_data_dir, lastfm_protocol="fresh", seed=0).fixed_episodes
  assert all(30 <= len(t[1]) + len(t[3]) <= 200 and len(t[1]) == 20 for v in fresh.values() for t in v)


@pytest.mark.slow
def test_shared_hetrec_counts(shared_data_dir):
  ds = load_dataset("hetrec-lastfm", data_dir=shared_data_dir)
  assert int(ds.ratings.sum()) == 92834 and (ds.n_users, ds.n_items) == (1892, 17632)
  assert ds.n_ratings == 2 * 92834  # one sampled negative per positive
  assert sum(len(v) for v in ds.fixed_episodes.values()) > 1000


@pytest.mark.slow
def test_train_binary_on_lastfm_fixture_end_to_end(tmp_path):
  rows = [(u, i, int((u * 7 + i) % 3 == 0)) for u in range(40) for i in range(40)]
  eps = {"training": list(range(0, 30)), "validation": list(range(30, 34)), "testing": list(range(34, 40))}
  _tanp_fixture(str(tmp_path), ratings=rows, episodes=eps)
  out = tmp_path / "run"
  proc = run_binary(
    "experiments.train",
    "--dataset=lastfm",
    f"--data_dir={tmp_path}",
    "--epochs=2",
    "--baselines=popularity",
    "--ndcg_ks=1,2",
    "--embed_dim=4",
    "--hidden=8",
    f"--workdir={out}",
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  final = json.load(open(out / "final_metrics.json"))
  assert {"auc", "logloss", "precision@2", "ndcg@2"} <= set(final["results"]["maml"]["user_cold"])
  # Batch top-K: with binary labels the positive query items are the relevant ones.
  proc = run_binary(
    "experiments.recommend",
    f"--workdir={out}",
    f"--data_dir={tmp_path}",
    "--batch_scenario=user_cold",
    "--top_k=3",
    f"--out={tmp_path}/batch.json",
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  batch = json.load(open(tmp_path / "batch.json"))
  positives = sum(int(t[4].sum()) > 0 for t in load_tanp_lastfm(str(tmp_path)).fixed_episodes["user_cold"])
  assert batch["metrics"]["n_users"] == positives > 0
  proc = run_binary(
    "experiments.train",
    "--dataset=lastfm",
    f"--data_dir={tmp_path}",
    "--label=rating",
    f"--workdir={tmp_path / 'rating'}",
  )
  assert proc.returncode == 2 and "error: --label=rating does not apply to lastfm" in proc.stderr


def test_dataset_defaults_fill_only_the_flags_not_given():
  from metarec_jax.config import Config, with_dataset_defaults

  c = with_dataset_defaults(Config(dataset="lastfm"))
  assert c.ndcg_ks == (5, 7, 10) and c.item_id_feature is False and (c.cooc_dim, c.cooc_support_dim) == (8, 16)
  assert with_dataset_defaults(Config(dataset="lastfm", cooc_dim=0), explicit=["cooc_dim"]).cooc_dim == 0
  c = with_dataset_defaults(Config(dataset="lastfm", item_id_feature=True), explicit=["item_id_feature"])
  assert c.item_id_feature is True and c.ndcg_ks == (5, 7, 10)
  assert with_dataset_defaults(Config(dataset="ml-1m")).patience == 3
  assert with_dataset_defaults(Config(dataset="ml-100k")) == Config(dataset="ml-100k")
