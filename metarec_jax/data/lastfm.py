"""Last.fm as implicit 0/1 feedback: TaNP's `lastfm_20` and HetRec's user_artists.

lastfm (`<data_dir>/tanp-lastfm`): TaNP's processed Last.fm, `ratings_final.txt` rows
`user<TAB>item<TAB>label` (label 1: listened, 0: a sampled negative).
- protocol "episodes": TaNP's exact episodes from `episodes/{training,validation,testing}/`
  (`supp_x_N_u_m_ids.txt` / `query_x_N_u_m_ids.txt`, rows `user<TAB>item`, one user per
  episode); each pair's label is looked up in ratings_final.txt. Training 248 / validation
  35 / testing 66 episodes; the test users are new users (the user_cold scenario).
- protocol "fresh": TaNP's recipe for a new split (seeded): users with 30-200 interactions,
  a 70/10/20 user split into train/validation/test, support = 20 random interactions of the
  user, query = the rest.

hetrec-lastfm (`<data_dir>/hetrec2011-lastfm-2k/user_artists.dat`, `userID artistID
weight`): every listened (user, artist) pair is a positive; each user gets as many
negatives, drawn uniformly (seeded) from the artists the user never listened to (the MKR /
TaNP construction). Then the "fresh" protocol above. Artist names are the item titles.

Features: the item id (the model's item-id field) and one item field, the bucketed count
of the item's positives in the training episodes (`item/popularity`). Labels are binary
(train.py uses BCE and the binary metrics for implicit datasets). The co-occurrence features
(--cooc_dim, --cooc_support_dim; on by default for these datasets) are built by train.py from
the training pairs (data/features.py).
"""

from __future__ import annotations

import collections
import os

import numpy as np

from metarec_jax.data.features import (
  POPULARITY_BUCKETS,
  POPULARITY_FIELD,
  POSITIVE_COUNTS,
  TRAIN_USER,
  popularity_bucket,
)
from metarec_jax.data.io import parse_int, read_rows, require_file
from metarec_jax.data.schema import DataError, Dataset, FieldSpec

TANP_DIR = "tanp-lastfm"
HETREC_DIR = "hetrec2011-lastfm-2k"
TANP_SOURCE = (
  "Get TaNP's lastfm_20 from https://github.com/IIEdm/TaNP (data.zip, data/lastfm_20/) into "
  "<data_dir>/tanp-lastfm; see README.md, Data."
)
HETREC_SOURCE = (
  "Get hetrec2011-lastfm-2k from https://grouplens.org/datasets/hetrec-2011/ into "
  "<data_dir>/hetrec2011-lastfm-2k; see README.md, Data."
)
TANP_SPLITS = {"train": "training", "val": "validation", "user_cold": "testing"}
LASTFM_PROTOCOLS = ("episodes", "fresh")


def popularity_tables(fixed_episodes: dict, n_users: int, n_items: int) -> dict:
  """The item/popularity field and its helper tables (data/features.py): each item's positive
  count in the training episodes only (support and query), so the feature carries what the
  popularity baseline knows without looking at validation or test users; a training user's
  own pairs see the count without their own label."""
  counts = np.zeros(n_items, np.int64)
  train_user = np.zeros(n_users, bool)
  for u, si, sy, qi, qy in fixed_episodes["train"]:
    np.add.at(counts, np.concatenate([si, qi]), (np.concatenate([sy, qy]) > 0.5).astype(np.int64))
    train_user[u] = True
  return {POPULARITY_FIELD: popularity_bucket(counts), POSITIVE_COUNTS: counts.astype(np.int32), TRAIN_USER: train_user}


def _dataset(
  name,
  users,
  items,
  labels,
  n_users,
  n_items,
  user_ids,
  item_ids,
  titles=None,
  fixed_episodes=None,
  report=None,
  texts=None,
) -> Dataset:
  fields = (FieldSpec(POPULARITY_FIELD, "categorical", POPULARITY_BUCKETS),)
  ds = Dataset(
    name=name,
    users=users.astype(np.int32),
    items=items.astype(np.int32),
    ratings=labels.astype(np.float32),
    timestamps=np.zeros(len(users), np.int64),
    user_ids=np.asarray(user_ids),
    item_ids=np.asarray(item_ids),
    fields=fields,
    features=popularity_tables(fixed_episodes, n_users, n_items),
    item_release=np.full(n_items, np.nan),
    item_titles=titles,
    item_texts=texts,
    rating_scale=(0.0, 1.0),
    protocol_report=report,
    implicit=True,
    fixed_episodes=fixed_episodes,
  )
  ds.validate()
  return ds


def fresh_episodes(
  users: np.ndarray,
  items: np.ndarray,
  labels: np.ndarray,
  seed: int,
  *,
  min_inter: int = 30,
  max_inter: int = 200,
  support: int = 20,
  fractions=(0.7, 0.1, 0.2),
) -> dict:
  """TaNP's split recipe: users with min_inter..max_inter interactions, split 70/10/20 at
  random (seeded) into train / val / user_cold; per user `support` random interactions are
  the support and the rest the query."""
  rng = np.random.default_rng([seed, 11])
  order = np.lexsort((items, users))
  users, items, labels = users[order], items[order], labels[order]
  uniq, start, count = np.unique(users, return_index=True, return_counts=True)
  keep = (count >= min_inter) & (count <= max_inter)
  chosen = rng.permutation(np.flatnonzero(keep))
  n_train = int(round(fractions[0] * len(chosen)))
  n_val = int(round(fractions[1] * len(chosen)))
  parts = {"train": chosen[:n_train], "val": chosen[n_train : n_train + n_val], "user_cold": chosen[n_train + n_val :]}
  out = {}
  for key, idx in parts.items():
    tasks = []
    for j in np.sort(idx):
      sl = slice(start[j], start[j] + count[j])
      perm = rng.permutation(count[j])
      it, lb = items[sl][perm], labels[sl][perm]
      tasks.append((int(uniq[j]), it[:support], lb[:support], it[support:], lb[support:]))
    out[key] = tasks
  return out


def _read_pairs(path: str, n_fields: int, names: tuple[str, ...], source: str):
  rows = read_rows(path, sep="\t", n_fields=n_fields, source=source)
  out = np.array(
    [[parse_int(path, line, name, v) for name, v in zip(names, parts)] for line, parts in rows], np.int64
  ).reshape(-1, n_fields)
  lines = np.array([line for line, _ in rows])
  return out, lines


def load_tanp_lastfm(data_dir: str, *, protocol: str = "episodes", seed: int = 0) -> Dataset:
  if protocol not in LASTFM_PROTOCOLS:
    raise ValueError(f"lastfm protocol must be one of {', '.join(LASTFM_PROTOCOLS)}, got {protocol!r}")
  root = os.path.join(data_dir, TANP_DIR)
  path = os.path.join(root, "ratings_final.txt")
  rows, lines = _read_pairs(path, 3, ("user", "item", "label"), TANP_SOURCE)
  for col, name in ((0, "user"), (1, "item")):
    bad = np.flatnonzero(rows[:, col] < 0)
    if len(bad):
      raise DataError(f"{path}:{lines[bad[0]]}: field {name!r} must be a non-negative id, got {rows[bad[0], col]}")
  bad = np.flatnonzero(~np.isin(rows[:, 2], (0, 1)))
  if len(bad):
    raise DataError(f"{path}:{lines[bad[0]]}: field 'label' must be 0 or 1, got {rows[bad[0], 2]}")
  label_of = {}
  for (u, i, y), line in zip(rows.tolist(), lines.tolist()):
    if label_of.get((u, i), y) != y:
      raise DataError(f"{path}:{line}: pair (user {u}, item {i}) has conflicting labels 0 and 1")
    label_of[(u, i)] = y
  n_users, n_items = int(rows[:, 0].max()) + 1, int(rows[:, 1].max()) + 1
  users, items, labels = rows[:, 0], rows[:, 1], rows[:, 2].astype(np.float32)
  report = {"interactions": len(rows), "positives": int(labels.sum()), "protocol": protocol}
  if protocol == "fresh":
    episodes = fresh_episodes(users, items, labels, seed)
  else:
    episodes = {}
    for key, folder in TANP_SPLITS.items():
      episodes[key] = _tanp_split(os.path.join(root, "episodes", folder), label_of, n_users, n_items)
  report["episodes"] = {k: len(v) for k, v in episodes.items()}
  return _dataset(
    "lastfm",
    users,
    items,
    labels,
    n_users,
    n_items,
    np.arange(n_users),
    np.arange(n_items),
    fixed_episodes=episodes,
    report=report,
  )


def _tanp_split(folder: str, label_of: dict, n_users: int, n_items: int) -> list:
  require_file(os.path.join(folder, "supp_x_0_u_m_ids.txt"), source=TANP_SOURCE)
  n = 0
  while os.path.isfile(os.path.join(folder, f"supp_x_{n}_u_m_ids.txt")):
    n += 1
  tasks = []
  for e in range(n):
    sets = []
    for part in ("supp", "query"):
      path = os.path.join(folder, f"{part}_x_{e}_u_m_ids.txt")
      pairs, lines = _read_pairs(path, 2, ("user", "item"), TANP_SOURCE)
      if len(np.unique(pairs[:, 0])) != 1:
        raise DataError(
          f"{path}:{lines[np.flatnonzero(pairs[:, 0] != pairs[0, 0])[0]]}: an episode holds one user's "
          f"pairs; expected user {pairs[0, 0]}"
        )
      y = []
      for (u, i), line in zip(pairs.tolist(), lines.tolist()):
        if not (0 <= u < n_users and 0 <= i < n_items) or (u, i) not in label_of:
          raise DataError(f"{path}:{line}: pair (user {u}, item {i}) is not in ratings_final.txt")
        y.append(label_of[(u, i)])
      sets.append((int(pairs[0, 0]), pairs[:, 1].astype(np.int32), np.array(y, np.float32)))
    (u_s, si, sy), (u_q, qi, qy) = sets
    if u_s != u_q:
      raise DataError(f"{folder}: episode {e}: support user {u_s} differs from query user {u_q}")
    tasks.append((u_s, si, sy, qi, qy))
  return tasks


def load_hetrec_lastfm(data_dir: str, *, seed: int = 0) -> Dataset:
  root = os.path.join(data_dir, HETREC_DIR)
  path = os.path.join(root, "user_artists.dat")
  rows = read_rows(path, sep="\t", n_fields=3, skip_header=True, source=HETREC_SOURCE)
  ua = np.array(
    [
      [
        parse_int(path, line, "userID", p[0]),
        parse_int(path, line, "artistID", p[1]),
        parse_int(path, line, "weight", p[2]),
      ]
      for line, p in rows
    ],
    np.int64,
  )
  lines = np.array([line for line, _ in rows])
  bad = np.flatnonzero(ua[:, 2] <= 0)
  if len(bad):
    raise DataError(f"{path}:{lines[bad[0]]}: field 'weight' must be a positive listening count, got {ua[bad[0], 2]}")
  titles = {}
  art = os.path.join(root, "artists.dat")
  if os.path.isfile(art):
    for line, p in read_rows(art, sep="\t", n_fields=4, skip_header=True, source=HETREC_SOURCE):
      titles[parse_int(art, line, "id", p[0])] = p[1]
  user_ids, u = np.unique(ua[:, 0], return_inverse=True)
  item_ids, i = np.unique(ua[:, 1], return_inverse=True)
  key = u * len(item_ids) + i
  if len(np.unique(key)) != len(key):
    first = np.flatnonzero(np.diff(np.sort(key)) == 0)[0]
    raise DataError(f"{path}: (user, artist) pair {np.sort(key)[first]} appears twice; expected one row per pair")
  rng = np.random.default_rng([seed, 13])
  neg_u, neg_i = [], []
  order = np.argsort(u, kind="stable")
  bounds = np.searchsorted(u[order], np.arange(len(user_ids) + 1))
  for user in range(len(user_ids)):
    listened = i[order[bounds[user] : bounds[user + 1]]]
    pool = np.setdiff1d(np.arange(len(item_ids)), listened)
    pick = rng.choice(pool, size=min(len(listened), len(pool)), replace=False)
    neg_u.append(np.full(len(pick), user))
    neg_i.append(pick)
  users = np.concatenate([u] + neg_u)
  items = np.concatenate([i] + neg_i)
  labels = np.concatenate([np.ones(len(u)), np.zeros(sum(len(x) for x in neg_i))]).astype(np.float32)
  episodes = fresh_episodes(users, items, labels, seed)
  report = {
    "interactions": len(users),
    "positives": int(labels.sum()),
    "protocol": "fresh",
    "episodes": {k: len(v) for k, v in episodes.items()},
  }
  names = [titles.get(int(a), str(a)) for a in item_ids]
  tags = _top_tags(root, item_ids)
  return _dataset(
    "hetrec-lastfm",
    users,
    items,
    labels,
    len(user_ids),
    len(item_ids),
    user_ids,
    item_ids,
    titles=names,
    fixed_episodes=episodes,
    report=report,
    texts={"item/text": [f"{n}. Tags: {', '.join(t)}." if t else f"{n}." for n, t in zip(names, tags)]},
  )


def _top_tags(root: str, item_ids: np.ndarray, top: int = 10) -> list[list[str]]:
  """Each artist's `top` most used tags (user_taggedartists.dat, names from tags.dat; ties by
  tag id); empty lists when the tag files are absent."""
  tag_path, use_path = os.path.join(root, "tags.dat"), os.path.join(root, "user_taggedartists.dat")
  if not (os.path.isfile(tag_path) and os.path.isfile(use_path)):
    return [[] for _ in item_ids]
  name = {
    parse_int(tag_path, line, "tagID", p[0]): p[1].strip()
    for line, p in read_rows(tag_path, sep="\t", n_fields=2, skip_header=True, encoding="latin-1", source=HETREC_SOURCE)
  }
  index = {int(a): j for j, a in enumerate(item_ids)}
  counts = [collections.Counter() for _ in item_ids]
  for line, p in read_rows(use_path, sep="\t", n_fields=6, skip_header=True, source=HETREC_SOURCE):
    j = index.get(parse_int(use_path, line, "artistID", p[1]))
    tag = parse_int(use_path, line, "tagID", p[2])
    if tag not in name:
      raise DataError(f"{use_path}:{line}: field 'tagID' value {tag} is not in {tag_path}")
    if j is not None:
      counts[j][tag] += 1
  return [[name[t] for t, _ in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[:top]] for c in counts]
