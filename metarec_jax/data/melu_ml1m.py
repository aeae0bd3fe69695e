"""ML-1M under MeLU's protocol, rebuilt from MeLU's files and the full ML-1M ratings (R data).

Inputs (under --data_dir):
  melu-ml-1m/         users.dat, movies_extrainfos.dat, m_*.txt vocabularies and the state
                      files warm_state_y.json, {user_cold,item_cold,user_and_item_cold}_state[_y].json
  ml-1m-ratings-rda/  ratings.rda: all 1,000,209 ratings (user, item, rating); `item` is a dense
                      re-index of the MovieIDs (order-preserving), with no timestamps.

The rda item index is mapped back to MovieIDs with the cold state files: each state movie's
(user, rating) pairs pick the rda items that contain all of them; one candidate is a match,
and the map being increasing narrows the ambiguous ones to the gap between their matched
neighbours. Items no state names are placed by rank when the MovieIDs in their gap are as
many as the items (the "gap" matches); the rest stay items of their own with unknown content
(their ratings are kept). `mapping_report` counts each kind.

Scenarios follow MeLU's state files: warm users are the keys of warm_state_y.json; new users
the keys of user_cold_state and user_and_item_cold_state; new items the movies of
item_cold_state and user_and_item_cold_state. Ratings come from the rda file.
"""

from __future__ import annotations

import bisect
import collections
import json
import os
import warnings

import numpy as np

from metarec_jax.data.io import parse_int, read_rows, require_file
from metarec_jax.data.movielens import multihot_table
from metarec_jax.data.schema import DataError, Dataset, FieldSpec

MELU_SOURCE = (
  "MeLU's ML-1M files come from https://github.com/hoyeoplee/MeLU (movielens/ml-1m) and the full "
  "ratings from https://github.com/tarashnot/SVDApproximation (data/ratings.rda); see README.md, Real data."
)
COLD_STATES = ("user_cold_state", "item_cold_state", "user_and_item_cold_state")


def _vocab(path: str) -> dict[str, int]:
  require_file(path, source=MELU_SOURCE)
  with open(path, "rb") as f:
    text = f.read().decode("utf-8")
  lines = [l.strip() for l in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
  return {v: i for i, v in enumerate(l for l in lines if l)}


def _json(path: str):
  require_file(path, source=MELU_SOURCE)
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise DataError(f"{path}: not valid JSON ({e})") from None


def read_rda_ratings(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(user, item, rating) int64 arrays of the rda file's `ratings` table."""
  require_file(path, source=MELU_SOURCE)
  try:
    import rdata
  except ImportError:
    raise DataError(f"{path}: reading .rda needs the `rdata` package (pip install rdata)") from None
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # "Missing constructor for R class data.table": read as a data.frame
      objs = rdata.read_rda(path)
  except Exception as e:  # noqa: BLE001 (rdata raises many kinds of parse errors)
    raise DataError(f"{path}: not a readable R data file ({type(e).__name__}: {e})") from None
  table = objs.get("ratings")
  if table is None:
    raise DataError(f"{path}: no object 'ratings' (found {', '.join(objs) or 'none'})")
  missing = [c for c in ("user", "item", "rating") if c not in table.columns]
  if missing:
    raise DataError(f"{path}: the 'ratings' table lacks column(s) {', '.join(missing)}")
  cols = [table[c].to_numpy("int64", na_value=-1) for c in ("user", "item", "rating")]
  bad = np.flatnonzero((cols[2] < 1) | (cols[2] > 5) | (cols[0] < 1) | (cols[1] < 1))
  if bad.size:
    raise DataError(
      f"{path}: row {int(bad[0]) + 1} of 'ratings' has user {cols[0][bad[0]]}, item {cols[1][bad[0]]}, "
      f"rating {cols[2][bad[0]]}; expected positive ids and a rating in 1..5"
    )
  return cols[0], cols[1], cols[2]


def map_rda_items(
  users, items, ratings, state_triples: dict[int, list[tuple[int, int]]], movie_ids: list[int]
) -> tuple[dict[int, int], dict]:
  """rda item index -> MovieID, from the state files' (movie, user, rating) triples."""
  # The items each (user, rating) rated: the ratings sorted by that key, a slice per key.
  keys = users.astype(np.int64) * 8 + ratings
  order = np.argsort(keys, kind="stable")
  keys, by_key = keys[order], items[order].tolist()
  firsts, starts = np.unique(keys, return_index=True)
  ends = np.r_[starts[1:], len(keys)]
  by_ur = {(k // 8, k % 8): set(by_key[a:b]) for k, a, b in zip(firsts.tolist(), starts.tolist(), ends.tolist())}
  cands = {}
  for m, pairs in state_triples.items():
    c = None
    for pair in pairs:
      c = set(by_ur.get(pair, ())) if c is None else c & by_ur.get(pair, set())
      if not c:
        break
    cands[m] = c or set()
  direct = sum(len(c) == 1 for c in cands.values())
  while True:  # the map increases: an ambiguous movie's item lies between its matched neighbours'
    res = {m: next(iter(c)) for m, c in cands.items() if len(c) == 1}
    keys = sorted(res)
    changed = False
    for m, c in cands.items():
      if len(c) <= 1:
        continue
      k = bisect.bisect_left(keys, m)
      lo = res[keys[k - 1]] if k else 0
      hi = res[keys[k]] if k < len(keys) else 1 << 62
      narrowed = {j for j in c if lo < j < hi}
      if narrowed != c:
        cands[m], changed = narrowed, True
    if not changed:
      break
  item_to_movie = {j: m for m, j in res.items()}
  if len(item_to_movie) != len(res):
    raise DataError(
      "ML-1M item map: two state movies matched the same rda item; the state files and the "
      "ratings do not belong together"
    )
  # Items no state names: by rank inside gaps whose MovieIDs are exactly as many as the items.
  n_items = int(items.max())
  keys = sorted(res)
  anchors = [(0, 0)] + [(m, res[m]) for m in keys] + [(1 << 62, n_items + 1)]
  all_movies = sorted(set(movie_ids))
  gap = 0
  for (ma, ja), (mb, jb) in zip(anchors, anchors[1:]):
    need = jb - ja - 1
    if need <= 0:
      continue
    inside = [
      m for m in all_movies[bisect.bisect_right(all_movies, ma) : bisect.bisect_left(all_movies, mb)] if m not in res
    ]
    if len(inside) == need:
      for j, m in zip(range(ja + 1, jb), inside):
        item_to_movie[j] = m
        gap += 1
  report = {
    "rda_items": n_items,
    "state_movies": len(state_triples),
    "matched_directly": direct,
    "matched_by_order": len(res) - direct,
    "state_movies_unmatched": len(state_triples) - len(res),
    "matched_by_gap": gap,
    "unknown_content": n_items - len(item_to_movie),
  }
  return item_to_movie, report


def load_melu_ml1m(data_dir: str) -> Dataset:
  root = os.path.join(data_dir, "melu-ml-1m")
  rda = os.path.join(data_dir, "ml-1m-ratings-rda", "ratings.rda")
  for folder in (root, os.path.dirname(rda)):
    if not os.path.isdir(folder):
      raise DataError(f"{folder}: directory not found. {MELU_SOURCE}")

  # Users (users.dat: UserID::Gender::Age::Occupation::Zip), MeLU's vocabularies.
  voc = {
    k: _vocab(os.path.join(root, f"m_{k}.txt"))
    for k in ("gender", "age", "occupation", "zipcode", "rate", "genre", "director", "actor")
  }
  user_path = os.path.join(root, "users.dat")
  user_rows = _read_dat(user_path, 5, "ascii")
  user_ids, ufeat = [], {k: [] for k in ("gender", "age", "occupation", "zipcode")}
  for line, (uid, gender, age, occ, zipcode) in user_rows:
    user_ids.append(_int(user_path, line, "UserID", uid))
    # MeLU keys a zip code by its first five characters (e.g. 98107-2117 -> 98107).
    for k, v in (("gender", gender), ("age", age), ("occupation", occ), ("zipcode", zipcode[:5])):
      if v not in voc[k]:
        raise DataError(f"{user_path}:{line}: field {k!r} value {v!r} is not in m_{k}.txt")
      ufeat[k].append(voc[k][v])
  user_index = {u: j for j, u in enumerate(user_ids)}

  # Movies (movies_extrainfos.dat: movie_id::title::year::rate::released::genre::director::writer::actors::...).
  movie_path = os.path.join(root, "movies_extrainfos.dat")
  movie_rows = _read_dat(movie_path, 11, "utf-8")
  movie_ids, titles, mfeat, skipped = [], [], {k: [] for k in ("rate", "genre", "director", "actor")}, 0
  years, texts = [], []
  for line, parts in movie_rows:
    movie_ids.append(_int(movie_path, line, "movie_id", parts[0]))
    titles.append(f"{parts[1]} ({parts[2]})")
    years.append(_int(movie_path, line, "year", parts[2]))
    texts.append(
      f"{parts[1]} ({parts[2]}). Genres: {parts[5]}. Director: {parts[6]}. Actors: {parts[8]}. {parts[9]}".strip()
    )
    mfeat["rate"].append(voc["rate"].get(parts[3].strip(), len(voc["rate"])))  # unknown rate: its own id
    for k, col in (("genre", 5), ("director", 6), ("actor", 8)):
      tokens = [t.strip() for t in parts[col].split(",") if t.strip()]
      ids = [voc[k][t] for t in tokens if t in voc[k]]
      skipped += len(tokens) - len(ids)
      mfeat[k].append(ids)

  # State files.
  states = {s: (_json(os.path.join(root, f"{s}.json")), _json(os.path.join(root, f"{s}_y.json"))) for s in COLD_STATES}
  warm_y = _json(os.path.join(root, "warm_state_y.json"))
  triples = collections.defaultdict(list)
  for s, (ids, ys) in states.items():
    for u, movies in ids.items():
      if len(movies) != len(ys.get(u, ())):
        raise DataError(f"{s}.json / {s}_y.json: user {u} has {len(movies)} movies but {len(ys.get(u, ()))} ratings")
      for m, y in zip(movies, ys[u]):
        triples[int(m)].append((int(u), int(y)))

  users, items, ratings = read_rda_ratings(rda)
  item_to_movie, report = map_rda_items(users, items, ratings, triples, movie_ids)
  report["actor_director_genre_tokens_not_in_vocab"] = skipped
  movie_index = {m: j for j, m in enumerate(movie_ids)}
  unknown_state = sorted(m for m in triples if m not in movie_index)
  if unknown_state:
    raise DataError(f"{root}: state movie {unknown_state[0]} is not in movies_extrainfos.dat")
  # Items: every MeLU movie, then the rda items whose MovieID is unknown (no content).
  extra = sorted(j for j in range(1, int(items.max()) + 1) if item_to_movie.get(j) not in movie_index)
  rda_to_index = {j: movie_index[m] for j, m in item_to_movie.items() if m in movie_index}
  rda_to_index.update({j: len(movie_ids) + k for k, j in enumerate(extra)})
  n_items = len(movie_ids) + len(extra)
  item_ids = np.array(movie_ids + [f"rda-item-{j}" for j in extra], dtype=object)
  lookup = np.zeros(int(items.max()) + 1, np.int64)
  for j, k in rda_to_index.items():
    lookup[j] = k
  unknown_user = np.flatnonzero(~np.isin(users, np.array(user_ids)))
  if unknown_user.size:
    raise DataError(f"{rda}: row {int(unknown_user[0]) + 1}: user {users[unknown_user[0]]} is not in {user_path}")
  uidx = np.array([user_index[u] for u in users.tolist()], np.int32)

  pad = [[] for _ in extra]
  fields = (
    FieldSpec("user/gender", "categorical", len(voc["gender"])),
    FieldSpec("user/age", "categorical", len(voc["age"])),
    FieldSpec("user/occupation", "categorical", len(voc["occupation"])),
    FieldSpec("user/zip", "categorical", len(voc["zipcode"])),
    FieldSpec("item/rate", "categorical", len(voc["rate"]) + 1),
    FieldSpec("item/genre", "multihot", len(voc["genre"])),
    FieldSpec("item/director", "multihot", len(voc["director"])),
    FieldSpec("item/actor", "multihot", len(voc["actor"])),
  )
  features = {
    "user/gender": np.array(ufeat["gender"], np.int32),
    "user/age": np.array(ufeat["age"], np.int32),
    "user/occupation": np.array(ufeat["occupation"], np.int32),
    "user/zip": np.array(ufeat["zipcode"], np.int32),
    "item/rate": np.array(mfeat["rate"] + [len(voc["rate"])] * len(extra), np.int32),
    "item/genre": multihot_table(mfeat["genre"] + pad),
    "item/director": multihot_table(mfeat["director"] + pad),
    "item/actor": multihot_table(mfeat["actor"] + pad),
  }
  # The split from the state files.
  new_users = sorted({int(u) for s in ("user_cold_state", "user_and_item_cold_state") for u in states[s][0]})
  new_movies = {
    int(m) for s in ("item_cold_state", "user_and_item_cold_state") for ms in states[s][0].values() for m in ms
  }
  new_item = np.zeros(n_items, bool)
  new_item[[movie_index[m] for m in new_movies]] = True
  warm_users = sorted(int(u) for u in warm_y)
  overlap = set(warm_users) & set(new_users)
  if overlap:
    raise DataError(f"{root}: user {min(overlap)} is both warm and new in the state files")
  ds = Dataset(
    name="ml-1m",
    users=uidx,
    items=lookup[items].astype(np.int32),
    ratings=ratings.astype(np.float32),
    timestamps=np.zeros(len(ratings), np.int64),
    user_ids=np.array(user_ids),
    item_ids=item_ids,
    fields=fields,
    features=features,
    # Release: 1 January of the year (what orders the validation new items; MeLU's own new items
    # come from the state files).
    item_release=np.concatenate([(np.array(years, np.float64) - 1970) * 365.2425 * 86400, np.full(len(extra), np.nan)]),
    item_titles=titles + [f"(unknown ML-1M movie, rda item {j})" for j in extra],
    # The text encoder's input: title, year, genres, director, actors and MeLU's plot.
    item_texts={"item/text": texts + ["" for _ in extra]},
  )
  ds.split_hint = {
    "new_item": new_item,
    "new_users": np.array([user_index[u] for u in new_users], np.int32),
    "warm_users": np.array([user_index[u] for u in warm_users], np.int32),
  }
  ds.validate()
  ds.protocol_report = {"item_map": report, **_check_states(ds, states, warm_y, user_index, movie_index)}
  return ds


def _check_states(ds, states, warm_y, user_index, movie_index) -> dict:
  """How many of each state file's (user, movie, rating) triples the rebuilt ratings contain."""
  # Each (user, item)'s rating: the ratings sorted by that key (the last of a repeated pair wins).
  keys = ds.users.astype(np.int64) * ds.n_items + ds.items
  order = np.argsort(keys, kind="stable")
  keys, have = keys[order], ds.ratings[order]
  last = np.r_[keys[1:] != keys[:-1], True]
  keys, have = keys[last], have[last]
  out = {}
  movie_of = np.full(max(movie_index) + 1, -1, np.int64)
  movie_of[list(movie_index)] = list(movie_index.values())
  for s, (ids, ys) in states.items():
    counts = [len(movies) for movies in ids.values()]
    u = np.repeat(np.array([user_index[int(x)] for x in ids], np.int64), counts)
    i = movie_of[np.array([int(m) for movies in ids.values() for m in movies], np.int64)]
    y = np.array([float(v) for x in ids for v in ys[x]], np.float64)
    q = u * ds.n_items + i
    pos = np.minimum(np.searchsorted(keys, q), max(len(keys) - 1, 0))
    hit = int(np.sum((keys[pos] == q) & (have[pos] == y))) if len(keys) else 0
    kept = sum(13 <= n <= 100 for n in counts)
    out[s] = {"users": len(ids), "users_with_13_to_100": kept, "pairs": len(q), "pairs_matched": hit}
  # warm_state.json (the movie ids) is not available: compare each warm user's rebuilt ratings
  # on existing items with warm_state_y.json as multisets of ratings (counts of each value).
  new_item = np.zeros(ds.n_items, bool)
  for s in ("item_cold_state", "user_and_item_cold_state"):
    for ms in states[s][0].values():
      new_item[[movie_index[int(m)] for m in ms]] = True
  old = ~new_item[ds.items]
  values = np.unique(np.concatenate([ds.ratings[old], [float(y) for ys in warm_y.values() for y in ys]]))
  mine = np.zeros((ds.n_users, len(values)), np.int64)
  np.add.at(mine, (ds.users[old], np.searchsorted(values, ds.ratings[old])), 1)
  same = pairs = pairs_same = 0
  for u, ys in warm_y.items():
    theirs = np.bincount(np.searchsorted(values, np.array(ys, np.float64)), minlength=len(values))
    pairs += len(ys)
    if np.array_equal(mine[user_index[int(u)]], theirs):
      same += 1
      pairs_same += len(ys)
  out["warm_state"] = {
    "users": len(warm_y),
    "users_with_13_to_100": sum(13 <= len(y) <= 100 for y in warm_y.values()),
    "pairs": pairs,
    "users_matched": same,
    "pairs_in_matched_users": pairs_same,
  }
  return out


def _read_dat(path, n_fields, encoding):
  rows = read_rows(path, sep="::", n_fields=n_fields, encoding=encoding, source=MELU_SOURCE)
  return [(line, [p.strip("\r") for p in parts]) for line, parts in rows]


def _int(path, line, field, value):
  return parse_int(path, line, field, value.strip())
