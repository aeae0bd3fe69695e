"""A user's own data: a ratings CSV plus optional user and item feature CSVs.

Ratings: a header `user,item,rating[,timestamp]`, one rating per row. Ids are any strings.
Feature files: a header whose first column is `user` (or `item`), then one column per
feature; each feature column's type is given by `columns` ("name:categorical",
"name:multihot:SEP", "name:numeric", "name:title", "name:text"):
  categorical  each distinct value is one id (an empty cell is its own "missing" id);
  multihot     the cell is split on SEP, each distinct token one id (empty cell: no token);
  numeric      bucketed into up to `numeric_buckets` quantile bins (an empty cell: own bin);
  title        an item's display name (not a feature);
  text         an item's free text, a sentence vector with --text_encoder (item side only).
A feature column without a type is an error, as is a user feature row whose user has no
rating, or a rated user/item without a feature row (when a feature file is given). An item
feature row whose item nobody has rated is a catalogue item: a new item in every split (it can
be recommended from its features).
Cold-start split: users are new by the time of their first rating and items by the time
of their first rating ("release"); without a timestamp column every timestamp is 0, users
split by file order and no rated item is new (the item-cold scenarios are then empty).
Duplicate (user, item) rows keep the last one in file order (counted in the log).
Files are read with Python's `csv` rules (`io.read_csv_rows`: quoting, a byte-order mark, CRLF,
trimmed cells, `#` comment lines, `delimiter`).
"""

from __future__ import annotations

import numpy as np
from absl import logging

from metarec_jax.data.io import dedupe_keep_last, parse_float, parse_int, read_csv_rows
from metarec_jax.data.movielens import multihot_table
from metarec_jax.data.schema import DataError, Dataset, FieldSpec

CSV_SOURCE = "Write a CSV with the header user,item,rating[,timestamp]; see `--dataset=csv` in README.md."
COLUMN_TYPES = ("categorical", "multihot", "numeric", "title", "text")


def parse_column_types(specs: tuple[str, ...] | list[str]) -> dict[str, tuple[str, str | None]]:
  """["genre:multihot:|", "age:numeric"] -> {"genre": ("multihot", "|"), "age": ("numeric", None)}."""
  out = {}
  for spec in specs:
    parts = spec.split(":", 2)
    if len(parts) < 2 or parts[1] not in COLUMN_TYPES:
      raise DataError(
        f"--csv_columns entry {spec!r}: expected name:TYPE with TYPE one of {', '.join(COLUMN_TYPES)} "
        "(multihot takes a separator: name:multihot:|)"
      )
    if parts[1] == "multihot" and (len(parts) < 3 or not parts[2]):
      raise DataError(f"--csv_columns entry {spec!r}: multihot needs a separator, e.g. {parts[0]}:multihot:|")
    out[parts[0]] = (parts[1], parts[2] if parts[1] == "multihot" else None)
  return out


def _header(path: str, rows, first: str, allowed: tuple[str, ...] | None = None) -> list[str]:
  line, cols = rows[0]
  cols = [c.strip() for c in cols]
  if cols[0] != first:
    raise DataError(f"{path}:{line}: the header's first column must be {first!r}, got {cols[0]!r}")
  if len(set(cols)) != len(cols):
    raise DataError(f"{path}:{line}: the header repeats a column name: {','.join(cols)}")
  if allowed is not None and cols != list(allowed[: len(cols)]):
    raise DataError(f"{path}:{line}: expected the header {','.join(allowed[:3])}[,timestamp], got {','.join(cols)!r}")
  return cols


def load_csv(
  ratings_path: str,
  *,
  user_features: str | None = None,
  item_features: str | None = None,
  columns: tuple[str, ...] = (),
  numeric_buckets: int = 10,
  name: str = "csv",
  rating_scale: tuple[float, float] | None = None,
  delimiter: str = ",",
) -> Dataset:
  types = parse_column_types(columns)
  rows = read_csv_rows(ratings_path, delimiter=delimiter, source=CSV_SOURCE)
  n_cols = len(rows[0][1])
  if n_cols not in (3, 4):
    raise DataError(
      f"{ratings_path}:{rows[0][0]}: expected the header user,item,rating[,timestamp] (3 or 4 columns separated "
      f"by {delimiter!r}), found {n_cols}: {delimiter.join(rows[0][1])[:80]!r}"
    )
  _header(ratings_path, rows, "user", ("user", "item", "rating", "timestamp"))
  if len(rows) == 1:
    raise DataError(f"{ratings_path}: no ratings after the header")
  user_index, item_index = {}, {}
  users, items, ratings, stamps = [], [], [], []
  for line, parts in rows[1:]:
    u, i, r = parts[0].strip(), parts[1].strip(), parts[2].strip()
    if not u or not i:
      raise DataError(f"{ratings_path}:{line}: field {'user' if not u else 'item'!r} is empty")
    users.append(user_index.setdefault(u, len(user_index)))
    items.append(item_index.setdefault(i, len(item_index)))
    ratings.append(parse_float(ratings_path, line, "rating", r))
    stamps.append(parse_int(ratings_path, line, "timestamp", parts[3].strip()) if n_cols == 4 else 0)
  ratings = np.array(ratings, np.float32)
  lo, hi = rating_scale or (float(ratings.min()), float(ratings.max()))
  if rating_scale is not None:
    bad = np.flatnonzero((ratings < lo) | (ratings > hi))
    if bad.size:
      line = rows[1 + int(bad[0])][0]
      raise DataError(f"{ratings_path}:{line}: field 'rating' must be in [{lo:g}, {hi:g}], got {ratings[bad[0]]:g}")
  users, items = np.array(users, np.int32), np.array(items, np.int32)
  stamps = np.array(stamps, np.int64)
  users, items, ratings, stamps = dedupe_keep_last(users, items, ratings, stamps, path=ratings_path)

  fields, features, titles, texts = [], {}, None, {}
  for path, side, index in ((user_features, "user", user_index), (item_features, "item", item_index)):
    if not path:
      continue
    f_fields, f_tables, f_titles, f_texts = _read_features(path, side, index, types, numeric_buckets, delimiter)
    texts.update(f_texts)
    fields += f_fields
    features.update(f_tables)
    if side == "item" and f_titles is not None:
      titles = f_titles
  n_rated = int(items.max()) + 1 if len(items) else 0  # catalogue-only items come after the rated ones
  if len(item_index) > n_rated:
    logging.info(
      "%s: %d catalogue items have no rating yet; they are new items", item_features, len(item_index) - n_rated
    )
  release = np.full(len(item_index), np.nan)
  if n_cols == 4:
    first_seen = np.full(len(item_index), np.iinfo(np.int64).max)
    np.minimum.at(first_seen, items, stamps)
    release = first_seen.astype(np.float64)
    release[n_rated:] = np.inf  # unrated: released after every rated item
  ds = Dataset(
    name=name,
    users=users,
    items=items,
    ratings=ratings,
    timestamps=stamps,
    user_ids=np.array(list(user_index), dtype=object),
    item_ids=np.array(list(item_index), dtype=object),
    fields=tuple(fields),
    features=features,
    item_release=release,
    item_titles=titles,
    item_texts=texts or None,
    rating_scale=(float(lo), float(hi)),
  )
  ds.validate()
  return ds


def _read_features(path, side, index, types, numeric_buckets, delimiter=","):
  rows = read_csv_rows(path, delimiter=delimiter, source=f"A {side} feature CSV: header {side},<feature columns>.")
  cols = _header(path, rows, side)
  if len(cols) < 2:
    raise DataError(f"{path}:1: no feature columns after {side!r}")
  for c in cols[1:]:
    if c not in types:
      raise DataError(
        f"{path}:1: column {c!r} has no type; give it with --csv_columns={c}:TYPE "
        f"(TYPE one of {', '.join(COLUMN_TYPES)})"
      )
  seen = {}
  for line, parts in rows[1:]:
    rid = parts[0].strip()
    if rid in seen:
      raise DataError(f"{path}:{line}: {side} {rid!r} repeats line {seen[rid]}")
    if rid not in index:
      if side == "user":
        raise DataError(f"{path}:{line}: user {rid!r} has no rating in the ratings file (a user needs ratings)")
      index[rid] = len(index)  # a catalogue item nobody has rated yet: a new item
    seen[rid] = line
  values = {c: [None] * len(index) for c in cols[1:]}
  for _, parts in rows[1:]:
    for c, v in zip(cols[1:], parts[1:]):
      values[c][index[parts[0].strip()]] = v.strip()
  missing = [rid for rid in index if rid not in seen]
  if missing:
    raise DataError(f"{path}: {len(missing)} rated {side}(s) have no feature row, e.g. {missing[0]!r}")
  fields, tables, titles, texts = [], {}, None, {}
  for c in cols[1:]:
    kind, sep = types[c]
    col = values[c]
    name = f"{side}/{c}"
    if kind == "title":
      titles = list(col)
    elif kind == "text":
      if side != "item":
        raise DataError(f"{path}:1: column {c!r} is of type text, which only item features take")
      texts[name] = list(col)
    elif kind == "categorical":
      vocab = {v: j for j, v in enumerate(sorted(set(col)))}
      tables[name] = np.array([vocab[v] for v in col], np.int32)
      fields.append(FieldSpec(name, "categorical", max(len(vocab), 1)))
    elif kind == "multihot":
      tokens = [[t.strip() for t in v.split(sep) if t.strip()] if v else [] for v in col]
      vocab = {t: j for j, t in enumerate(sorted({t for ts in tokens for t in ts}))}
      tables[name] = multihot_table([[vocab[t] for t in ts] for ts in tokens])
      fields.append(FieldSpec(name, "multihot", max(len(vocab), 1)))
    else:  # numeric -> quantile buckets, empty cells in their own bucket 0
      nums = np.full(len(col), np.nan)
      for rid, j in index.items():
        if col[j]:
          nums[j] = parse_float(path, seen[rid], c, col[j])
      ok = ~np.isnan(nums)
      edges = np.unique(np.quantile(nums[ok], np.linspace(0, 1, numeric_buckets + 1)[1:-1])) if ok.any() else []
      tables[name] = np.where(ok, np.digitize(np.nan_to_num(nums), edges) + 1, 0).astype(np.int32)
      fields.append(FieldSpec(name, "categorical", len(edges) + 2))
  return fields, tables, titles, texts
