import os

import numpy as np
import pytest

from metarec_jax.data import DataError, load_dataset
from metarec_jax.data import movielens, synthetic
from metarec_jax.data.features import ITEM_ID_FIELD, feature_tables, featurize

USERS = "1|24|M|technician|85711\n2|53|F|other|94043\n3|17|M|writer|T8H1N\n"
ITEMS_LATIN1 = (
  "10|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
  "20|Mis\xe9rables, Les (1995)|01-Jan-1995||http://x|0|0|0|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0\n"
  "30|Unknown movie|||http://x|1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
)
DATA = "1\t10\t5\t881250949\n2\t20\t3\t881250950\n3\t30\t1\t881250951\n1\t20\t4\t881250952\n"


def write_ml100k(root, *, data=DATA, users=USERS, items=ITEMS_LATIN1, data_bytes=None):
  folder = os.path.join(root, "ml-100k")
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "u.occupation"), "w") as f:
    f.write("other\ntechnician\nwriter\n")
  with open(os.path.join(folder, "u.genre"), "w") as f:
    names = "unknown Action Adventure Animation Children's Comedy Crime Documentary Drama Fantasy".split()
    f.write("".join(f"{g}|{j}\n" for j, g in enumerate(names + [f"g{j}" for j in range(10, 19)])) + "\n")
  with open(os.path.join(folder, "u.user"), "w") as f:
    f.write(users)
  with open(os.path.join(folder, "u.item"), "wb") as f:
    f.write(items.encode("latin-1"))
  with open(os.path.join(folder, "u.data"), "wb") as f:
    f.write(data_bytes if data_bytes is not None else data.encode("ascii"))
  return str(root)


def test_ml100k_parses_fixture(tmp_path):
  ds = movielens.load_ml100k(write_ml100k(tmp_path))
  assert (ds.n_users, ds.n_items, ds.n_ratings) == (3, 3, 4)
  assert ds.item_titles[1] == "Misérables, Les (1995)"  # Latin-1 decoded
  # The text encoder's input: title and genre names (u.genre).
  assert ds.item_texts["item/text"][0] == "Toy Story (1995). Genres: Animation, Children's, Comedy."
  np.testing.assert_array_equal(ds.user_ids, [1, 2, 3])
  np.testing.assert_array_equal(ds.item_ids, [10, 20, 30])
  # Ratings map to contiguous indices and back.
  np.testing.assert_array_equal(ds.item_ids[ds.items], [10, 20, 30, 20])
  np.testing.assert_array_equal(ds.ratings, [5, 3, 1, 4])
  assert ds.features["user/gender"].tolist() == [0, 1, 0]
  assert ds.features["user/occupation"].tolist() == [1, 0, 2]
  assert ds.features["user/age"].tolist() == [1, 5, 0]  # 24 -> 18-24, 53 -> 50-55, 17 -> <18
  assert ds.features["user/zip"].tolist() == [8, 9, 10]  # non-digit prefix -> 10
  assert ds.features["item/genre"][0].tolist()[:3] == [3, 4, 5]
  assert ds.features["item/genre"][1].tolist() == [8, -1, -1]
  assert np.isnan(ds.item_release[2]) and ds.features["item/year"][2] == 0
  assert ds.features["item/year"][0] == movielens.year_bucket(np.array([1995.0]))[0] != 0


@pytest.mark.parametrize(
  "data,match",
  [
    ("1 10 5 881250949\n", r"u.data:1: expected 4 fields separated by '\\t', found 1"),
    ("1\t10\tfive\t881250949\n", r"u.data:1: field 'rating' must be a number, got 'five'"),
    ("1\t10\t5\t1\n1\t10\t7\t2\n", r"u.data:2: field 'rating' must be in \[1, 5\], got '7'"),
    ("9\t10\t5\t1\n", r"u.data:1: user id 9 is not in .*u.user"),
    ("1\t99\t5\t1\n", r"u.data:1: item id 99 is not in .*u.item"),
    ("", r"u.data: file is empty"),
  ],
)
def test_ml100k_bad_rows_name_file_line_and_field(tmp_path, data, match):
  with pytest.raises(DataError, match=match):
    movielens.load_ml100k(write_ml100k(tmp_path, data=data))


def test_ml100k_bad_encoding(tmp_path):
  with pytest.raises(DataError, match=r"u.data:2: bytes are not valid ascii"):
    movielens.load_ml100k(write_ml100k(tmp_path, data_bytes=b"1\t10\t5\t1\n2\t2\xe90\t3\t1\n"))


def test_ml100k_missing_folder_says_where_data_comes_from(tmp_path):
  with pytest.raises(DataError, match="directory not found.*grouplens"):
    movielens.load_ml100k(str(tmp_path))


def test_ml100k_duplicate_rows_keep_last(tmp_path):
  ds = movielens.load_ml100k(write_ml100k(tmp_path, data=DATA + "1\t10\t2\t881250999\n"))
  assert ds.n_ratings == 4
  row = np.flatnonzero((ds.users == 0) & (ds.items == 0))
  assert ds.ratings[row].tolist() == [2.0]


def test_unknown_dataset_lists_choices():
  with pytest.raises(ValueError, match="Unsupported dataset: 'nope'; choose one of synthetic, ml-100k"):
    load_dataset("nope")


def test_synthetic_is_deterministic_and_valid():
  a = synthetic.generate(n_users=50, n_items=80, seed=3)
  b = synthetic.generate(n_users=50, n_items=80, seed=3)
  c = synthetic.generate(n_users=50, n_items=80, seed=4)
  np.testing.assert_array_equal(a.ratings, b.ratings)
  np.testing.assert_array_equal(a.items, b.items)
  assert not np.array_equal(a.ratings[:100], c.ratings[:100])
  assert set(np.unique(a.ratings)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
  counts = np.bincount(a.users, minlength=50)
  assert counts.min() >= 15 and counts.max() <= 80
  # No (user, item) pair is rated twice.
  assert len(np.unique(a.users.astype(np.int64) * 1000 + a.items)) == a.n_ratings


def test_synthetic_user_bias_is_learnable_from_support():
  """The known structure: a user's mean rating is consistent across two halves of their ratings."""
  ds = synthetic.generate(n_users=400, n_items=300, seed=0)
  rng = np.random.default_rng(0)
  half = rng.random(ds.n_ratings) < 0.5
  m1 = np.bincount(ds.users[half], ds.ratings[half], 400) / np.bincount(ds.users[half], minlength=400)
  m2 = np.bincount(ds.users[~half], ds.ratings[~half], 400) / np.bincount(ds.users[~half], minlength=400)
  assert np.corrcoef(m1, m2)[0, 1] > 0.5


def test_feature_tables_unknown_items_share_id_zero():
  ds = synthetic.generate(n_users=20, n_items=30, seed=0)
  known = np.arange(30) < 10
  fields, tables = feature_tables(ds, known_items=known, item_id=True)
  assert fields[-1].name == ITEM_ID_FIELD and fields[-1].vocab_size == 31
  assert tables[ITEM_ID_FIELD][:10].tolist() == list(range(1, 11))
  assert (tables[ITEM_ID_FIELD][10:] == 0).all()
  x = featurize(tables, np.array([3, 4]), np.array([[0, 1, 2], [5, 6, 7]]))
  assert x["user/age"].shape == (2, 3) and x["item/genre"].shape[:2] == (2, 3)
  assert (np.asarray(x["user/age"][1]) == ds.features["user/age"][4]).all()
  np.testing.assert_array_equal(np.asarray(x["item/genre"][1, 2]), ds.features["item/genre"][7])


@pytest.mark.slow
def test_shared_ml100k_row_counts(shared_data_dir):
  ds = movielens.load_ml100k(shared_data_dir)
  assert (ds.n_users, ds.n_items, ds.n_ratings) == (943, 1682, 100000)
  assert "Misérables" in ds.item_titles[542]
  assert np.bincount(ds.users).min() >= 20
