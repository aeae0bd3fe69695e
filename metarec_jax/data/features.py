"""Feature tables (host) and featurisation of episodes (device, inside jit)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from metarec_jax.data.schema import Dataset, FieldSpec

ITEM_ID_FIELD = "item/id"


def feature_tables(ds: Dataset, *, known_items: np.ndarray | None = None,
                   item_id: bool = False) -> tuple[tuple[FieldSpec, ...], dict[str, np.ndarray]]:
  """The model's fields and their lookup tables.

  With `item_id`, an "item/id" field is added: item i gets id i + 1 if `known_items[i]`
  (it has training ratings) and the shared unknown id 0 otherwise, so new items are
  scored from their content features alone.
  """
  fields = tuple(ds.fields)
  tables = {spec.name: np.asarray(ds.features[spec.name], np.int32) for spec in fields}
  tables.update({k: np.asarray(v) for k, v in ds.features.items() if k.startswith("_")})  # helper tables
  if item_id:
    known = np.ones(ds.n_items, bool) if known_items is None else np.asarray(known_items, bool)
    ids = np.arange(1, ds.n_items + 1, dtype=np.int32)
    tables[ITEM_ID_FIELD] = np.where(known, ids, 0).astype(np.int32)
    fields = fields + (FieldSpec(ITEM_ID_FIELD, "categorical", ds.n_items + 1),)
  return fields, tables


def featurize(tables: dict[str, jnp.ndarray], user: jnp.ndarray, items: jnp.ndarray) -> dict[str, jnp.ndarray]:
  """Features of (user, item) pairs.

  Args:
    tables: name -> [n] or [n, k] id table.
    user: [T] user indices.
    items: [T, N] item indices.

  Returns:
    dict with "user" [T, N], "item" [T, N] and every field name -> [T, N] or [T, N, k].
  """
  x = {"user": jnp.broadcast_to(user[:, None], items.shape), "item": items}
  for name, table in tables.items():
    if name.startswith("_"):  # helper tables (e.g. popularity counts), not fields
      continue
    if name.startswith("user/"):
      v = table[user][:, None]
      x[name] = jnp.broadcast_to(v, items.shape + v.shape[2:])
    else:
      x[name] = table[items]
  return x


# Popularity as an item feature (implicit-feedback datasets): the bucketed count of the item's
# positives in the training episodes. For a training user's own pairs the count leaves that
# user's label out (`leave_own_out`), or the feature would leak the label it is asked to predict.
POPULARITY_FIELD = "item/popularity"
POPULARITY_BUCKETS = 16
POSITIVE_COUNTS = "_positive_counts"  # [n_items] positives in the training episodes
TRAIN_USER = "_train_user"  # [n_users] bool


def popularity_bucket(counts):
  """min(floor(2 log2(1 + count)), 15): numpy or jnp."""
  xp = jnp if isinstance(counts, jnp.ndarray) else np
  return xp.minimum(xp.floor(2 * xp.log2(1.0 + counts)), POPULARITY_BUCKETS - 1).astype(xp.int32)


def leave_own_out(tables: dict, x: dict, user, items, labels, mask) -> dict:
  """Recomputes the popularity field of [T, N] pairs without the pair's own positive label
  when the pair's user is a training user (no-op for datasets without the field)."""
  if POSITIVE_COUNTS not in tables or POPULARITY_FIELD not in x:
    return x
  own = tables[TRAIN_USER][user][:, None] & (labels > 0.5) & mask
  x = dict(x)
  x[POPULARITY_FIELD] = popularity_bucket(tables[POSITIVE_COUNTS][items] - own.astype(jnp.int32))
  return x
