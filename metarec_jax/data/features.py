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
    if name.startswith("user/"):
      v = table[user][:, None]
      x[name] = jnp.broadcast_to(v, items.shape + v.shape[2:])
    else:
      x[name] = table[items]
  return x
