"""ML-1M under MeLU's protocol: the loader on small fixture files, and on the shared data."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from metarec_jax.data import DataError
from metarec_jax.data.melu_ml1m import load_melu_ml1m
from metarec_jax.data.tasks import build_scenarios
from metarec_jax.config import Config


VOCAB = {
  "gender": "M\r\nF",
  "age": "1\r\n18\r\n25\r\n",
  "occupation": "0\r\n1\r\n",
  "zipcode": "11111\r\n22222\r\n",
  "rate": "PG\r\nR\r\n",
  "genre": "Drama\r\nComedy\r\n",
  "director": "Ann Lee\r\nBo Kim\r\n",
  "actor": "Cy Doe\r\nDi Fox\r\n",
}
USERS = "1::F::1::0::11111\n2::M::18::1::22222-1234\n3::M::25::0::11111\n"
MOVIES = "".join(
  f"{m}::Film {m}::199{k}::{rate}::1 Jan 199{k}::{genre}::Ann Lee::W::Cy Doe, Di Fox::plot::x\r\n"
  for k, (m, rate, genre) in enumerate(
    [(10, "PG", "Drama"), (20, "R", "Drama, Comedy"), (30, "N/A", "Comedy"), (40, "PG", "Drama")]
  )
)
# Rated movies 10, 20, 40 (30 unrated) -> rda items 1, 2, 3 (rank among rated MovieIDs).
RDA = [(1, 1, 5), (1, 2, 3), (2, 1, 4), (2, 3, 2), (3, 1, 1), (3, 2, 4), (3, 3, 5)]
STATES = {
  "user_cold_state": ({"3": ["10", "20"]}, {"3": [1, 4]}),
  "item_cold_state": ({"1": [], "2": ["40"]}, {"1": [], "2": [2]}),
  "user_and_item_cold_state": ({"3": ["40"]}, {"3": [5]}),
}
WARM_Y = {"1": [5, 3], "2": [4]}


def write_melu(root, *, users=USERS, movies=MOVIES, rda=RDA, states=STATES, columns=("user", "item", "rating")):
  import rdata

  m = os.path.join(root, "melu-ml-1m")
  os.makedirs(m, exist_ok=True)
  for k, v in VOCAB.items():
    with open(os.path.join(m, f"m_{k}.txt"), "w", newline="") as f:
      f.write(v)
  with open(os.path.join(m, "users.dat"), "w") as f:
    f.write(users)
  with open(os.path.join(m, "movies_extrainfos.dat"), "w", newline="") as f:
    f.write(movies)
  for s, (ids, ys) in states.items():
    json.dump(ids, open(os.path.join(m, f"{s}.json"), "w"))
    json.dump(ys, open(os.path.join(m, f"{s}_y.json"), "w"))
  json.dump(WARM_Y, open(os.path.join(m, "warm_state_y.json"), "w"))
  r = os.path.join(root, "ml-1m-ratings-rda")
  os.makedirs(r, exist_ok=True)
  table = pd.DataFrame({c: np.array([row[j] for row in rda], np.int32) for j, c in enumerate(columns)})
  rdata.write_rda(os.path.join(r, "ratings.rda"), {"ratings": table})
  return str(root)


def test_fixture_maps_items_features_and_the_state_split(tmp_path):
  ds = load_melu_ml1m(write_melu(tmp_path))
  assert (ds.n_users, ds.n_items, ds.n_ratings) == (3, 4, 7)
  assert list(ds.item_ids) == [10, 20, 30, 40]
  # rda items 1, 2, 3 are movies 10, 20, 40 (30 has no ratings)
  np.testing.assert_array_equal(ds.item_ids[ds.items], [10, 20, 10, 40, 10, 20, 40])
  np.testing.assert_array_equal(ds.ratings, [5, 3, 4, 2, 1, 4, 5])
  assert ds.features["user/zip"].tolist() == [0, 1, 0]  # 22222-1234 -> 22222
  assert ds.features["item/rate"].tolist() == [0, 1, 2, 0]  # N/A is not in m_rate.txt: the extra "unknown" id
  assert ds.features["item/genre"][1].tolist() == [0, 1] and ds.features["item/actor"][0].tolist() == [0, 1]
  assert ds.item_titles[0] == "Film 10 (1990)"
  hint = ds.split_hint
  assert hint["new_item"].tolist() == [False, False, False, True]  # movie 40: item-cold states
  assert hint["new_users"].tolist() == [2] and hint["warm_users"].tolist() == [0, 1]
  rep = ds.protocol_report
  assert rep["item_map"]["matched_directly"] + rep["item_map"]["matched_by_order"] == 3
  assert rep["user_cold_state"]["pairs_matched"] == 2 and rep["warm_state"]["users_matched"] == 2


@pytest.mark.parametrize(
  "kw, message",
  [
    (
      dict(users=USERS.replace("11111\n2", "99999\n2")),
      "users.dat:1: field 'zipcode' value '99999' is not in m_zipcode.txt",
    ),
    (dict(movies=MOVIES.replace("::plot::x", "")), "movies_extrainfos.dat:1: expected 11 fields separated by '::'"),
    (dict(rda=[(1, 1, 9)]), "ratings.rda: row 1 of 'ratings' has user 1, item 1, rating 9"),
    (dict(columns=("user", "movie", "rating")), "the 'ratings' table lacks column(s) item"),
    (dict(states={**STATES, "user_cold_state": ({"3": ["10"]}, {"3": [1, 4]})}), "user 3 has 1 movies but 2 ratings"),
  ],
)
def test_fixture_errors_name_the_file_and_field(tmp_path, kw, message):
  with pytest.raises(DataError) as err:
    load_melu_ml1m(write_melu(tmp_path, **kw))
  assert message in str(err.value)


def test_missing_folders_say_where_the_data_comes_from(tmp_path):
  with pytest.raises(DataError, match="melu-ml-1m: directory not found. MeLU's ML-1M files come from"):
    load_melu_ml1m(str(tmp_path))


@pytest.mark.slow
def test_shared_ml1m_counts_and_the_melu_task_counts(shared_data_dir):
  ds = load_melu_ml1m(shared_data_dir)
  assert (ds.n_users, ds.n_ratings) == (6040, 1000209)
  rep = ds.protocol_report
  assert rep["item_map"]["rda_items"] == 3706 and rep["item_map"]["state_movies"] == 3497
  # Every warm user's rebuilt ratings equal warm_state_y.json; the cold states are (almost) all found.
  assert rep["warm_state"]["users_matched"] == rep["warm_state"]["users"] == 4832
  assert rep["item_cold_state"]["pairs_matched"] == rep["item_cold_state"]["pairs"] == 157456
  assert rep["user_cold_state"]["pairs"] - rep["user_cold_state"]["pairs_matched"] <= 5
  scen = build_scenarios(ds, Config(dataset="ml-1m").task_config(), seed=0)
  # MeLU's 13-100 filter on its own state files gives these user counts; ours equal them.
  counts = {s: len(scen.test[s]) for s in ("user_cold", "item_cold", "user_item_cold")}
  assert counts == {
    "user_cold": rep["user_cold_state"]["users_with_13_to_100"],
    "item_cold": rep["item_cold_state"]["users_with_13_to_100"],
    "user_item_cold": rep["user_and_item_cold_state"]["users_with_13_to_100"],
  }
  assert counts == {"user_cold": 668, "item_cold": 2863, "user_item_cold": 723}
