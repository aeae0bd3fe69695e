"""MovieLens-100K loader (the original GroupLens files)."""

from __future__ import annotations

import datetime
import os

import numpy as np

from metarec_jax.data.io import dedupe_keep_last, parse_float, parse_int, read_rows, require_file
from metarec_jax.data.schema import DataError, Dataset, FieldSpec

ML100K_SOURCE = (
  "MovieLens-100K comes from GroupLens (https://grouplens.org/datasets/movielens/100k/, "
  "ml-100k.zip); unzip it and pass its folder's parent as --data_dir."
)

# MeLU / ML-1M age groups: <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+.
AGE_EDGES = np.array([18, 25, 35, 45, 50, 56])
N_AGE_BUCKETS = len(AGE_EDGES) + 1
# Release-year buckets: 0 unknown, then <1940, 1940s, ..., 1980s, 1990-94, 1995, 1996, ...
YEAR_EDGES = np.array([1940, 1950, 1960, 1970, 1980, 1990, 1995, 1996, 1997, 1998, 1999, 2000])
N_YEAR_BUCKETS = len(YEAR_EDGES) + 2
N_ZIP_BUCKETS = 11  # first character 0-9, anything else -> 10


def age_bucket(ages: np.ndarray) -> np.ndarray:
  return np.digitize(ages, AGE_EDGES).astype(np.int32)


def year_bucket(years: np.ndarray) -> np.ndarray:
  """Bucket of a release year; nan (unknown) -> 0."""
  years = np.asarray(years, np.float64)
  out = np.digitize(np.nan_to_num(years, nan=0.0), YEAR_EDGES) + 1
  return np.where(np.isnan(years), 0, out).astype(np.int32)


def zip_bucket(zips: list[str]) -> np.ndarray:
  return np.array([int(z[0]) if z[:1].isdigit() else 10 for z in zips], np.int32)


def multihot_table(rows: list[list[int]]) -> np.ndarray:
  """List of id lists -> int32 [n, k] padded with -1 (k >= 1)."""
  k = max(1, max((len(r) for r in rows), default=1))
  table = np.full((len(rows), k), -1, np.int32)
  for i, r in enumerate(rows):
    table[i, : len(r)] = r
  return table


def load_ml100k(data_dir: str) -> Dataset:
  """Reads `<data_dir>/ml-100k/{u.data,u.user,u.item,u.occupation,u.genre}`."""
  root = os.path.join(data_dir, "ml-100k")
  if not os.path.isdir(root):
    raise DataError(f"{root}: directory not found. {ML100K_SOURCE}")

  occ_path = os.path.join(root, "u.occupation")
  require_file(occ_path, source=ML100K_SOURCE)
  with open(occ_path, encoding="ascii", errors="strict") as f:
    occupations = [line.strip() for line in f if line.strip()]
  occ_index = {o: i for i, o in enumerate(occupations)}

  user_path = os.path.join(root, "u.user")
  user_rows = read_rows(user_path, sep="|", n_fields=5, encoding="ascii", source=ML100K_SOURCE)
  raw_user_ids, ages, genders, occs, zips = [], [], [], [], []
  for line, (uid, age, gender, occ, zipcode) in user_rows:
    raw_user_ids.append(parse_int(user_path, line, "user id", uid))
    ages.append(parse_int(user_path, line, "age", age))
    if gender not in ("M", "F"):
      raise DataError(f"{user_path}:{line}: field 'gender' must be M or F, got {gender!r}")
    genders.append(0 if gender == "M" else 1)
    if occ not in occ_index:
      raise DataError(f"{user_path}:{line}: field 'occupation' {occ!r} is not listed in {occ_path}")
    occs.append(occ_index[occ])
    zips.append(zipcode)
  user_index = _index(raw_user_ids, user_path, "user id")

  item_path = os.path.join(root, "u.item")
  item_rows = read_rows(item_path, sep="|", n_fields=24, encoding="latin-1", source=ML100K_SOURCE)
  raw_item_ids, titles, release, genres = [], [], [], []
  for line, parts in item_rows:
    raw_item_ids.append(parse_int(item_path, line, "movie id", parts[0]))
    titles.append(parts[1])
    date = parts[2].strip()
    if date:
      try:
        when = datetime.datetime.strptime(date, "%d-%b-%Y").replace(tzinfo=datetime.timezone.utc)
      except ValueError:
        raise DataError(f"{item_path}:{line}: field 'release date' must look like 01-Jan-1995, got {date!r}") from None
      release.append(when.timestamp())
    else:
      release.append(np.nan)
    flags = parts[5:]
    if any(f not in ("0", "1") for f in flags):
      raise DataError(f"{item_path}:{line}: genre flags (fields 6-24) must be 0 or 1")
    genres.append([g for g, f in enumerate(flags) if f == "1"])
  item_index = _index(raw_item_ids, item_path, "movie id")
  genre_path = os.path.join(root, "u.genre")
  genre_name = {
    parse_int(genre_path, line, "genre id", g): name
    for line, (name, g) in read_rows(genre_path, sep="|", n_fields=2, encoding="latin-1", source=ML100K_SOURCE)
  }
  texts = [f"{t}. Genres: {', '.join(genre_name.get(g, str(g)) for g in gs)}." for t, gs in zip(titles, genres)]
  release = np.array(release, np.float64)
  years = np.array(
    [datetime.datetime.fromtimestamp(t, datetime.timezone.utc).year if t == t else np.nan for t in release], np.float64
  )

  data_path = os.path.join(root, "u.data")
  rows = read_rows(data_path, sep="\t", n_fields=4, encoding="ascii", source=ML100K_SOURCE)
  n = len(rows)
  users = np.empty(n, np.int32)
  items = np.empty(n, np.int32)
  ratings = np.empty(n, np.float32)
  stamps = np.empty(n, np.int64)
  for j, (line, (u, i, r, t)) in enumerate(rows):
    uid = parse_int(data_path, line, "user id", u)
    iid = parse_int(data_path, line, "item id", i)
    if uid not in user_index:
      raise DataError(f"{data_path}:{line}: user id {uid} is not in {user_path}")
    if iid not in item_index:
      raise DataError(f"{data_path}:{line}: item id {iid} is not in {item_path}")
    rating = parse_float(data_path, line, "rating", r)
    if not 1 <= rating <= 5:
      raise DataError(f"{data_path}:{line}: field 'rating' must be in [1, 5], got {r!r}")
    users[j], items[j], ratings[j] = user_index[uid], item_index[iid], rating
    stamps[j] = parse_int(data_path, line, "timestamp", t)
  users, items, ratings, stamps = dedupe_keep_last(users, items, ratings, stamps, path=data_path)

  fields = (
    FieldSpec("user/age", "categorical", N_AGE_BUCKETS),
    FieldSpec("user/gender", "categorical", 2),
    FieldSpec("user/occupation", "categorical", len(occupations)),
    FieldSpec("user/zip", "categorical", N_ZIP_BUCKETS),
    FieldSpec("item/genre", "multihot", 19),
    FieldSpec("item/year", "categorical", N_YEAR_BUCKETS),
  )
  features = {
    "user/age": age_bucket(np.array(ages)),
    "user/gender": np.array(genders, np.int32),
    "user/occupation": np.array(occs, np.int32),
    "user/zip": zip_bucket(zips),
    "item/genre": multihot_table(genres),
    "item/year": year_bucket(years),
  }
  ds = Dataset(
    name="ml-100k",
    users=users,
    items=items,
    ratings=ratings,
    timestamps=stamps,
    user_ids=np.array(raw_user_ids),
    item_ids=np.array(raw_item_ids),
    fields=fields,
    features=features,
    item_release=release,
    item_titles=titles,
    item_texts={"item/text": texts},
  )
  ds.validate()
  return ds


def _index(raw_ids: list[int], path: str, field: str) -> dict[int, int]:
  index = {}
  for j, rid in enumerate(raw_ids):
    if rid in index:
      raise DataError(f"{path}: {field} {rid} appears twice (rows {index[rid] + 1} and {j + 1})")
    index[rid] = j
  return index
