"""The CSV loader (a user's own data): parsing, feature types, id maps and one clear error per bad file."""

import json
import os

import numpy as np
import pytest

from conftest import run_binary
from metarec_jax.data import DataError
from metarec_jax.data.csv_data import load_csv

RATINGS = "user,item,rating,timestamp\nu1,m1,5,10\nu1,m2,3,11\nu2,m1,4,12\nu2,m3,2,13\nu3,m2,1,14\n"
ITEMS = "item,title,genre,year\nm1,Alpha,drama|comedy,1990\nm2,Beta,drama,2001\nm3,Gamma,,\n"
USERS = "user,gender,age\nu1,F,23\nu2,M,41\nu3,F,\n"
COLUMNS = ("title:title", "genre:multihot:|", "year:numeric", "gender:categorical", "age:numeric")


def write(tmp_path, ratings=RATINGS, items=ITEMS, users=USERS, raw=None):
  paths = {}
  for name, text in (("ratings", ratings), ("items", items), ("users", users)):
    p = tmp_path / f"{name}.csv"
    if raw is not None and name == "ratings":
      p.write_bytes(raw)
    else:
      p.write_text(text)
    paths[name] = str(p)
  return paths


def load(paths, **kw):
  return load_csv(paths["ratings"], user_features=paths["users"], item_features=paths["items"], columns=COLUMNS, **kw)


def test_csv_parses_ids_features_and_times(tmp_path):
  ds = load(write(tmp_path))
  assert (ds.n_users, ds.n_items, ds.n_ratings) == (3, 3, 5)
  assert list(ds.user_ids) == ["u1", "u2", "u3"] and list(ds.item_ids) == ["m1", "m2", "m3"]
  np.testing.assert_array_equal(ds.item_ids[ds.items], ["m1", "m2", "m1", "m3", "m2"])
  np.testing.assert_array_equal(ds.ratings, [5, 3, 4, 2, 1])
  assert ds.item_titles == ["Alpha", "Beta", "Gamma"] and ds.rating_scale == (1.0, 5.0)
  names = [f.name for f in ds.fields]
  assert names == ["user/gender", "user/age", "item/genre", "item/year"]
  assert ds.features["user/gender"].tolist() == [0, 1, 0]  # sorted vocabulary: F, M
  assert ds.features["item/genre"].tolist() == [[1, 0], [1, -1], [-1, -1]]  # drama|comedy (ids 1, 0); empty cell
  assert ds.features["user/age"][2] == 0 and ds.features["user/age"][0] != ds.features["user/age"][1]  # empty: bin 0
  np.testing.assert_array_equal(ds.item_release, [10, 11, 13])  # first rating time of each item


@pytest.mark.parametrize(
  "kw, message",
  [
    (dict(ratings="user,item\nu1,m1\n"), "ratings.csv:1: expected the header user,item,rating[,timestamp] (3 or 4"),
    (dict(ratings="usr,item,rating\nu1,m1,5\n"), "ratings.csv:1: the header's first column must be 'user', got 'usr'"),
    (dict(ratings="user,item,rating\nu1,m1,5\nu2;m1;4\n"), "ratings.csv:3: expected 3 fields separated by ','"),
    (dict(ratings="user,item,rating\nu1,m1,five\n"), "ratings.csv:2: field 'rating' must be a number, got 'five'"),
    (dict(ratings="user,item,rating\nu1,,5\n"), "ratings.csv:2: field 'item' is empty"),
    (dict(ratings="user,item,rating,timestamp\nu1,m1,5,yesterday\n"), "field 'timestamp' must be an integer"),
    (dict(ratings=""), "ratings.csv: file is empty"),
    (dict(ratings="user,item,rating\n"), "ratings.csv: no ratings after the header"),
    (dict(raw=b"user,item,rating\nu1,m\xff,5\n"), "ratings.csv:2: bytes are not valid utf-8"),
    (dict(users=USERS + "u9,F,30\n"), "users.csv:5: user 'u9' has no rating in the ratings file"),
    (dict(items=ITEMS.replace("m3,Gamma,,\n", "")), "items.csv: 1 rated item(s) have no feature row, e.g. 'm3'"),
    (dict(items=ITEMS + "m1,Again,drama,1990\n"), "items.csv:5: item 'm1' repeats line 2"),
    (dict(users="user,gender,age,city\nu1,F,23,x\nu2,M,41,y\nu3,F,,z\n"), "users.csv:1: column 'city' has no type"),
    (dict(items=ITEMS.replace("1990", "nineteen")), "items.csv:2: field 'year' must be a number, got 'nineteen'"),
  ],
)
def test_bad_csv_files_name_file_line_and_field(tmp_path, kw, message):
  with pytest.raises(DataError) as err:
    load(write(tmp_path, **kw))
  assert message in str(err.value)


def test_rating_scale_and_duplicates(tmp_path, caplog):
  paths = write(tmp_path, ratings=RATINGS + "u1,m1,2,20\n")
  with pytest.raises(DataError, match=r"ratings.csv:2: field 'rating' must be in \[1, 4\], got 5"):
    load(paths, rating_scale=(1.0, 4.0))
  ds = load(paths)
  assert ds.n_ratings == 5 and ds.ratings[(ds.users == 0) & (ds.items == 0)].tolist() == [2.0]  # last row kept
  assert "1 duplicate (user, item) rows; kept the last of each" in caplog.text


def test_catalogue_items_nobody_rated_are_new_items(tmp_path):
  from metarec_jax.data.tasks import TaskConfig, split_users_items

  ds = load(write(tmp_path, items=ITEMS + "m9,Zeta,drama,2000\nm8,Eta,,\n"))
  assert list(ds.item_ids) == ["m1", "m2", "m3", "m9", "m8"] and ds.n_ratings == 5
  assert ds.item_titles[3:] == ["Zeta", "Eta"] and ds.features["item/genre"][4].tolist() == [-1, -1]
  np.testing.assert_array_equal(ds.item_release, [10, 11, 13, np.inf, np.inf])
  split = split_users_items(ds, TaskConfig(query_size=1, min_ratings=2), seed=0)
  # the new-item share (20 %) counts the 3 rated items: round(0.6) = 1 (m3, the newest) plus both unrated
  np.testing.assert_array_equal(split.new_item, [False, False, True, True, True])
  # without timestamps no rated item is new, the unrated ones still are
  ratings = "user,item,rating\n" + "".join(",".join(r.split(",")[:3]) + "\n" for r in RATINGS.splitlines()[1:])
  ds = load(write(tmp_path, ratings=ratings, items=ITEMS + "m9,Zeta,drama,2000\n"))
  split = split_users_items(ds, TaskConfig(query_size=1, min_ratings=2), seed=0)
  np.testing.assert_array_equal(split.new_item, [False, False, False, True])


def test_split_of_fully_rated_data_is_unchanged_by_the_catalogue_rule():
  # Every item of the built-in data has ratings: the new items are the newest 20 % of all items.
  from metarec_jax.data import synthetic
  from metarec_jax.data.tasks import TaskConfig, split_users_items

  ds = synthetic.generate(n_users=60, n_items=50, min_ratings=15, max_ratings=30, seed=3)
  assert np.bincount(ds.items, minlength=ds.n_items).min() > 0
  new = split_users_items(ds, TaskConfig(), seed=0).new_item
  order = np.lexsort((np.arange(ds.n_items), ds.item_release))
  np.testing.assert_array_equal(np.flatnonzero(new), np.sort(order[-10:]))


@pytest.mark.slow
def test_csv_binary_end_to_end_and_one_line_errors(tmp_path):
  from metarec_jax.data import synthetic

  ds = synthetic.generate(n_users=90, n_items=100, min_ratings=15, max_ratings=30, seed=0)
  lines = ["user,item,rating,timestamp"] + [
    f"user{u},item{i},{r:g},{t}" for u, i, r, t in zip(ds.users, ds.items, ds.ratings, ds.timestamps)
  ]
  (tmp_path / "r.csv").write_text("\n".join(lines) + "\n")
  genre = ds.features["item/genre"]
  rows = ["item,genre"] + [f"item{i},{'|'.join(str(g) for g in genre[i] if g >= 0)}" for i in range(ds.n_items)]
  rows += ["catalogue1,0|1", "catalogue2,2"]  # nobody has rated these yet
  (tmp_path / "i.csv").write_text("\n".join(rows) + "\n")
  common = [
    "--dataset=csv",
    f"--csv_ratings={tmp_path}/r.csv",
    f"--csv_item_features={tmp_path}/i.csv",
    "--csv_columns=genre:multihot:|",
    "--max_ratings=30",
    "--epochs=1",
    "--meta_batch_size=8",
    "--hidden=8",
    "--embed_dim=4",
    "--inner_steps=1",
    "--baselines=support_mean",
  ]
  proc = run_binary("experiments.train", *common, f"--workdir={tmp_path}/run")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert os.path.isfile(tmp_path / "run" / "final_metrics.json")
  proc = run_binary(
    "experiments.recommend", f"--workdir={tmp_path}/run", "--ratings=item1:5,item2:1", "--top_k=100", "--json"
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  listed = {row["item_id"]: row for row in json.loads(proc.stdout)["top_k"]}
  assert len(listed) == 100 and listed["catalogue1"]["new_item"] and listed["catalogue2"]["new_item"]
  proc = run_binary("experiments.train", *common[:3], "--csv_columns=genre:multihot", f"--workdir={tmp_path}/bad")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
    "error: --csv_columns entry 'genre:multihot': multihot needs a separator, e.g. genre:multihot:|"
  )


def test_csv_reads_files_as_spreadsheets_and_python_csv_write_them(tmp_path):
  import csv
  import io

  buf = io.StringIO()
  w = csv.writer(buf)  # quotes a title holding a comma, CRLF line ends
  w.writerows(
    [
      ["item", "title", "genre", "year"],
      ["m1", "Usual Suspects, The (1995)", "drama|comedy", "1990"],
      ["m2", 'Say "Hi"', "drama", "2001"],
      ["m3", "Gamma", "", ""],
    ]
  )
  ratings = "\ufeff" + "# exported by a spreadsheet\r\n" + RATINGS.replace(",", " , ").replace("\n", "\r\n") + "\r\n"
  paths = write(tmp_path, items=buf.getvalue(), ratings=ratings)
  ds = load(paths)  # a byte-order mark, a comment line, CRLF, spaces around cells, a trailing blank line
  assert (ds.n_users, ds.n_items, ds.n_ratings) == (3, 3, 5) and list(ds.user_ids) == ["u1", "u2", "u3"]
  assert ds.item_titles == ["Usual Suspects, The (1995)", 'Say "Hi"', "Gamma"]
  # Another delimiter, by name or by character.
  semi = write(
    tmp_path, ratings=RATINGS.replace(",", ";"), items=ITEMS.replace(",", ";"), users=USERS.replace(",", ";")
  )
  assert load(semi, delimiter=";").n_ratings == 5
  tabs = write(
    tmp_path, ratings=RATINGS.replace(",", "\t"), items=ITEMS.replace(",", "\t"), users=USERS.replace(",", "\t")
  )
  assert load(tabs, delimiter="\t").n_ratings == 5


@pytest.mark.parametrize(
  "raw, message",
  [
    (b"user,item,rating\nu1,m1\x00,5\n", "ratings.csv:2: NUL byte; expected a UTF-8 text CSV"),
    ("user,item,rating\nu1,m1,5\n".encode("utf-16"), "ratings.csv:1: NUL byte"),
    (b'user,item,rating\nu1,"m1,5\nu2,m2,4\n', "ratings.csv:2: not a valid CSV row"),
    (b"user,item,rating\nu1,m1,5,7\n", "ratings.csv:2: expected 3 fields separated by ',' (as in the header), found 4"),
    (b"user,item\xe9,rating\n", "ratings.csv:1: bytes are not valid utf-8"),
  ],
)
def test_broken_csv_files_are_refused_with_the_file_and_line(tmp_path, raw, message):
  with pytest.raises(DataError) as err:
    load(write(tmp_path, raw=raw))
  assert message in str(err.value)


def test_the_delimiter_flag_is_validated():
  from metarec_jax.config import Config

  Config(csv_delimiter="tab").validate()
  with pytest.raises(ValueError, match="csv_delimiter must be one character"):
    Config(csv_delimiter=";;").validate()
