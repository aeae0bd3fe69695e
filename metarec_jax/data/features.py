"""Feature tables (host) and featurisation of episodes (device, inside jit)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from metarec_jax.data.schema import VECTOR_KINDS, Dataset, FieldSpec
from metarec_jax.progress import Progress

ITEM_ID_FIELD = "item/id"


def feature_tables(
  ds: Dataset, *, known_items: np.ndarray | None = None, item_id: bool = False
) -> tuple[tuple[FieldSpec, ...], dict[str, np.ndarray]]:
  """The model's fields and their lookup tables.

  With `item_id`, an "item/id" field is added: item i gets id i + 1 if `known_items[i]`
  (it has training ratings) and the shared unknown id 0 otherwise, so new items are
  scored from their content features alone.
  """
  fields = tuple(ds.fields)
  tables = {
    spec.name: np.asarray(ds.features[spec.name], np.float32 if spec.kind in VECTOR_KINDS else np.int32)
    for spec in fields
  }
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
  when the pair's user is a training user, and takes their co-occurrence field from the fit
  without their fold (`out_of_fold_cooc`); no-op for datasets without these fields."""
  x = out_of_fold_cooc(tables, x, user)
  if POSITIVE_COUNTS not in tables or POPULARITY_FIELD not in x:
    return x
  own = tables[TRAIN_USER][user][:, None] & (labels > 0.5) & mask
  x = dict(x)
  x[POPULARITY_FIELD] = popularity_bucket(tables[POSITIVE_COUNTS][items] - own.astype(jnp.int32))
  return x


# Co-occurrence embeddings (built by train.build_setup from the meta-training pairs; on by default
# for the implicit datasets, where negatives are sampled uniformly and positives are not: an item
# that training users listen to together with the items of a user's support positives is likely
# a positive too). Positives: labels >= COOC_POSITIVE (0/1 labels: 1; ratings: the liked ones).
# An item's vector is its row of V_d S_d from the truncated SVD of the training users' 0/1
# positive matrix (so dot products approximate
# co-occurrence counts), divided by one scale so rows are O(1). Two such fits feed the models:
# - item/cooc (width `dim`): a dense item field;
# - the support similarity (width `support_dim`, helper tables): per episode, each pair gets the
#   mean dot product of its item's vector with those of the support's positives and with those of
#   its negatives (a support pair leaves itself out; 0 where there is none), the pair field
#   item/cooc_support [T, N, 2] (train.featurize_episodes -> `support_cooc`).
# A training user's own positives must not shape the vectors their pairs are featurised with,
# so the training users are split into COOC_FOLDS folds by user index (as the stacked base is):
# a training user's pairs read the fit without their fold, rotated onto the full fit (orthogonal
# Procrustes) so one learned projection reads every fit alike; everyone else reads the full fit.
COOC_FIELD = "item/cooc"
COOC_FOLD_TABLES = "_cooc_folds"  # [folds, n_items, dim]
COOC_SUPPORT_ROWS = "_cooc_support"  # [n_items, support_dim]: the full fit behind the support similarity
COOC_SUPPORT_FOLDS = "_cooc_support_folds"  # [folds, n_items, support_dim]
COOC_FOLD_OF_USER = "_cooc_fold"  # [n_users] int32: the training user's fold, -1 otherwise
COOC_POSITIVE = "_cooc_positive"  # scalar: a label at least this is a positive (binary 0.5; ratings: the threshold)
COOC_SUPPORT_FIELD = "item/cooc_support"
COOC_FOLDS = 5


def _svd_rows(pos: np.ndarray, gram: np.ndarray, keep: np.ndarray, dim: int) -> np.ndarray:
  """Rows of V_d S_d for the users `keep` of the 0/1 matrix `pos` [users, items] (via the users'
  Gram matrix: V S = pos^T A for its eigenvectors A), zero-padded to `dim` columns."""
  if not keep.any():
    return np.zeros((pos.shape[1], dim))
  w, a = np.linalg.eigh(gram[np.ix_(keep, keep)])
  top = np.argsort(w)[::-1][:dim]
  top = top[w[top] > 1e-9 * max(float(w.max()), 1.0)]
  e = pos[keep].T @ a[:, top]
  return np.pad(e, ((0, 0), (0, dim - e.shape[1])))


def _cross_fitted(pos: np.ndarray, gram: np.ndarray, fold_of: np.ndarray, folds: int, dim: int, bar=None):
  """(full fit [n_items, dim], fold fits [folds, n_items, dim]), scaled, folds rotated onto the full
  (no fold fits with folds 0). `bar` (a progress.Progress) counts the fits."""
  full = _svd_rows(pos, gram, np.ones(len(pos), bool), dim)
  if bar is not None:
    bar.update(1)
  seen = pos.sum(0) > 0
  scale = float(np.sqrt((full[seen] ** 2).sum(1).mean())) if seen.any() else 1.0
  scale = scale if scale > 0 else 1.0
  fits = []
  for f in range(folds):
    e = _svd_rows(pos, gram, fold_of != f, dim)
    p, _, qt = np.linalg.svd(e.T @ full)
    fits.append(e @ (p @ qt))
    if bar is not None:
      bar.update(1)
  fits = np.stack(fits) if fits else np.zeros((0,) + full.shape)
  return (full / scale).astype(np.float32), (fits / scale).astype(np.float32)


def cooccurrence_tables(
  users: np.ndarray,
  items: np.ndarray,
  n_users: int,
  n_items: int,
  dim: int,
  folds: int = COOC_FOLDS,
  support_dim: int = 0,
) -> dict[str, np.ndarray]:
  """From the training users' positive (user, item) pairs: the item/cooc field [n_items, dim]
  (float32; none with dim 0) and, with `support_dim`, the fit behind the support similarity,
  each with its cross-fitted fold tables (folds=0: the full fits only, e.g. for a baseline that
  never featurises training users)."""
  if dim < 0 or support_dim < 0 or dim + support_dim == 0 or folds == 1 or folds < 0:
    raise ValueError(
      f"co-occurrence embeddings need dim, support_dim >= 0 (not both 0) and folds 0 or >= 2, got "
      f"dim={dim}, support_dim={support_dim}, folds={folds}"
    )
  train, row = np.unique(users, return_inverse=True)
  pos = np.zeros((len(train), n_items), np.float64)
  pos[row, items] = 1.0
  gram = pos @ pos.T
  fold_of = train % max(folds, 1)
  fold_of_user = np.full(n_users, -1, np.int32)
  fold_of_user[train] = fold_of if folds else -1
  out = {COOC_FOLD_OF_USER: fold_of_user}
  with Progress("co-occurrence features", (folds + 1) * (bool(dim) + bool(support_dim)), "fit") as bar:
    if dim:
      out[COOC_FIELD], out[COOC_FOLD_TABLES] = _cross_fitted(pos, gram, fold_of, folds, dim, bar)
    if support_dim:
      out[COOC_SUPPORT_ROWS], out[COOC_SUPPORT_FOLDS] = _cross_fitted(pos, gram, fold_of, folds, support_dim, bar)
  return out


def add_cooccurrence(
  fields: tuple,
  tables: dict,
  users: np.ndarray,
  items: np.ndarray,
  labels: np.ndarray,
  *,
  positive: float,
  n_users: int,
  n_items: int,
  dim: int,
  support_dim: int,
) -> tuple[tuple, dict]:
  """`fields` and `tables` with the co-occurrence fits of the training pairs (users, items,
  labels [R]) whose label is at least `positive`: the item/cooc field (dim > 0) and the support
  similarity field item/cooc_support (support_dim > 0; no table, built per episode)."""
  pos = labels >= positive
  tables = dict(tables)
  tables.update(cooccurrence_tables(users[pos], items[pos], n_users, n_items, dim, support_dim=support_dim))
  tables[COOC_POSITIVE] = np.float32(positive)
  fields = tuple(fields) + ((FieldSpec(COOC_FIELD, "dense", dim),) if dim else ())
  fields += (FieldSpec(COOC_SUPPORT_FIELD, "dense", 2),) if support_dim else ()
  return fields, tables


def out_of_fold_rows(tables: dict, full: str, fold_tables: str, user, items):
  """Rows of the fit `full` for [T, N] items, from `fold_tables` (the fit without the user's
  fold) where the task's user is a training user."""
  fold = tables[COOC_FOLD_OF_USER][user]  # [T]
  rows = tables[fold_tables][jnp.maximum(fold, 0)[:, None], items]  # [T, N, d]
  return jnp.where((fold >= 0)[:, None, None], rows, tables[full][items])


def out_of_fold_cooc(tables: dict, x: dict, user) -> dict:
  """The item/cooc field of [T, N] pairs from the fit without the user's fold when the user is a
  training user (no-op for datasets without the field)."""
  if COOC_FOLD_TABLES not in tables or COOC_FIELD not in x:
    return x
  x = dict(x)
  x[COOC_FIELD] = out_of_fold_rows(tables, COOC_FIELD, COOC_FOLD_TABLES, user, x["item"])
  return x


def _similarity(e, e_support, weight, leave_out=None):
  """Mean <e, e_j> over the support items j with weight 1 ([T, N] from e [T, N, d], e_support
  [T, S, d], weight [T, S]); with `leave_out` [T, N] (support pairs: their own weight), the pair's
  own item is left out of its mean."""
  total = jnp.einsum("tnd,td->tn", e, jnp.einsum("tsd,ts->td", e_support, weight))
  count = jnp.broadcast_to(weight.sum(-1, keepdims=True), total.shape)
  if leave_out is not None:
    total = total - leave_out * (e * e).sum(-1)
    count = count - leave_out
  return jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0)


def support_similarity(es, s_labels, s_mask, eq, positive=0.5):
  """([T, S, 2], [T, Q, 2]): the mean similarity of each support (leaving itself out) and query
  pair to the support's positives (label >= `positive`) and to its negatives, from item vectors
  es [T, S, d], eq [T, Q, d]."""
  pos = (s_mask & (s_labels >= positive)).astype(es.dtype)
  neg = (s_mask & (s_labels < positive)).astype(es.dtype)
  s = jnp.stack([_similarity(es, es, pos, pos), _similarity(es, es, neg, neg)], -1)
  q = jnp.stack([_similarity(eq, es, pos), _similarity(eq, es, neg)], -1)
  return s, q


def support_cooc(tables: dict, ep: dict, sx: dict, qx: dict) -> tuple[dict, dict]:
  """Adds the COOC_SUPPORT_FIELD to an episode's support and query features (no-op without the
  support fit); training users read their out-of-fold rows."""
  if COOC_SUPPORT_ROWS not in tables:
    return sx, qx
  es = out_of_fold_rows(tables, COOC_SUPPORT_ROWS, COOC_SUPPORT_FOLDS, ep["user"], ep["support_item"])
  eq = out_of_fold_rows(tables, COOC_SUPPORT_ROWS, COOC_SUPPORT_FOLDS, ep["user"], ep["query_item"])
  s, q = support_similarity(es, ep["support_rating"], ep["support_mask"], eq, tables[COOC_POSITIVE])
  return dict(sx, **{COOC_SUPPORT_FIELD: s}), dict(qx, **{COOC_SUPPORT_FIELD: q})


# Per-user helper tables and the value a user outside the training users has in them (the row
# recommend.py appends for a new user).
NEW_USER_HELPER_VALUES = {TRAIN_USER: False, COOC_FOLD_OF_USER: -1}
