"""Episodes on the device: featurise padded index arrays, re-draw support/query splits,
hide item ids, and upload a split once."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from metarec_jax.data.features import (
  COOC_FIELD,
  COOC_SUPPORT_FIELD,
  ITEM_ID_FIELD,
  featurize,
  leave_own_out,
  support_cooc,
)
from metarec_jax.data.tasks import Episodes
from metarec_jax.learners.base import Batch, Episode


def featurize_episodes(tables: dict, ep: dict) -> Episode:
  """Padded index arrays ([task, S] / [task, Q]) -> featurised Episode."""

  def side(p):
    items, ratings, mask = ep[f"{p}_item"], ep[f"{p}_rating"], ep[f"{p}_mask"]
    return leave_own_out(tables, featurize(tables, ep["user"], items), ep["user"], items, ratings, mask)

  sx, qx = support_cooc(tables, ep, side("support"), side("query"))
  return Episode(Batch(sx, ep["support_rating"], ep["support_mask"]), Batch(qx, ep["query_rating"], ep["query_mask"]))


def drop_item_ids(rng, episode: Episode, rate: float, *, n_tasks: int | None = None, first: int = 0) -> Episode:
  """Replaces item ids by the unknown id with probability `rate` (cold-item training). A hidden
  item's co-occurrence features (made from training positives) are zeroed too, so that it looks
  like a new item, whose co-occurrence vector is zero, in every field.

  `episode` may be the tasks `first..` of a batch of `n_tasks`: they get the draws the whole
  batch's would (a step in parts hides the ids the one-call step hides)."""

  def drop(key, batch):
    ids = batch.x[ITEM_ID_FIELD]
    n = ids.shape[0] if n_tasks is None else n_tasks
    if isinstance(first, int) and not 0 <= first <= n - ids.shape[0]:
      raise ValueError(f"tasks {first}..{first + ids.shape[0] - 1} are not in a batch of {n}")
    hide = jax.random.bernoulli(key, rate, (n,) + ids.shape[1:])
    hide = jax.lax.dynamic_slice_in_dim(hide, first, ids.shape[0])  # `first` may be traced
    x = dict(batch.x)
    x[ITEM_ID_FIELD] = jnp.where(hide, 0, ids)
    for name in (COOC_FIELD, COOC_SUPPORT_FIELD):
      if name in x:
        x[name] = jnp.where(hide[..., None], 0.0, x[name])
    return batch._replace(x=x)

  k1, k2 = jax.random.split(rng)
  return Episode(drop(k1, episode.support), drop(k2, episode.query))


def redraw_support_query(rng, ep: dict) -> dict:
  """Re-splits each task's ratings into a fresh random query (of the task's own query size)
  and support.

  Fixed shapes: the pooled [task, Q + S] ratings are ordered by random keys (padding
  last); the first n_q (the task's query count) become the query, the next the support.
  """
  Q, S = ep["query_item"].shape[1], ep["support_item"].shape[1]
  n_q = ep["query_mask"].sum(1, keepdims=True)
  pool = {k: jnp.concatenate([ep[f"query_{k}"], ep[f"support_{k}"]], axis=1) for k in ("item", "rating", "mask")}
  keys = jnp.where(pool["mask"], jax.random.uniform(rng, pool["mask"].shape), 2.0)
  order = jnp.argsort(keys, axis=1)
  pool = {k: jnp.take_along_axis(v, order, axis=1) for k, v in pool.items()}
  in_query = jnp.arange(Q)[None, :] < n_q
  support_idx = jnp.minimum(n_q + jnp.arange(S)[None, :], Q + S - 1)
  in_support = (n_q + jnp.arange(S)[None, :]) < Q + S
  out = dict(ep)
  for k, v in pool.items():
    q, sup = v[:, :Q], jnp.take_along_axis(v, support_idx, axis=1)
    if k == "mask":
      q, sup = q & in_query, sup & in_support
    out[f"query_{k}"], out[f"support_{k}"] = q, sup
  return out


def device_episodes(episodes: Episodes, chunk: int, devices=None) -> list[dict]:
  """The episodes in chunks of `chunk` tasks (the last padded by repeating the first tasks),
  each chunk on the device (`devices`: chunk c on devices[c % len(devices)]). Sliced on the
  host: a device-side slice per chunk and array is one dispatch each, and one compile per
  distinct offset."""
  n_chunks = -(-len(episodes) // chunk)
  idx = np.arange(n_chunks * chunk) % len(episodes)
  arrays = episodes.arrays()
  chunks = [{k: v[idx[c * chunk : (c + 1) * chunk]] for k, v in arrays.items()} for c in range(n_chunks)]
  # placed, not `jnp.asarray`'d: that compiles a copy program per shape and dtype of a host array
  return [jax.device_put(c, None if devices is None else devices[i % len(devices)]) for i, c in enumerate(chunks)]


def device_data(episodes: Episodes, tables: dict) -> dict:
  """{"episodes", "tables"} as device arrays (placed, as `device_episodes`): what the train step
  reads."""
  return {"episodes": jax.device_put(episodes.arrays()), "tables": jax.device_put(dict(tables))}
