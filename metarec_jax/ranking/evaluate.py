"""Full-catalogue ranking metrics on the device: users are scored in fixed-size chunks, the
folded-in items masked, `lax.top_k` taken and every metric summed there; one transfer at the end.

Metrics (Liang et al. 2018): Recall@K = hits in the top K / min(K, held-out count); nDCG@K with
binary gain, normalised by the ideal DCG of min(K, held-out count) hits; P@10 = hits / 10;
HR@10 = at least one hit. Ties in the scores go to the lower item index (`lax.top_k`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from metarec_jax.ranking.split import UserSets

RECALL_KS = (20, 50)
NDCG_KS = (100,)
TOP_KS = (10,)  # precision and hit rate
SELECT_METRIC = "ndcg@100"  # validation criterion (higher is better)


def metric_names() -> tuple[str, ...]:
  return (
    tuple(f"recall@{k}" for k in RECALL_KS)
    + tuple(f"ndcg@{k}" for k in NDCG_KS)
    + tuple(f"{m}@{k}" for k in TOP_KS for m in ("precision", "recall", "hr", "ndcg"))
  )


def per_user_metrics(scores, support, query, top_ks=TOP_KS) -> dict[str, jnp.ndarray]:
  """[U] metrics of scores [U, I] against the held-out `query` [U, I] bool, the folded-in
  `support` [U, I] bool excluded from the ranking; P/R/HR/nDCG at each of `top_ks`."""
  n_items = scores.shape[1]
  kmax = min(max(RECALL_KS + NDCG_KS + tuple(top_ks)), n_items)
  s = jnp.where(support, -jnp.inf, scores)
  _, top = jax.lax.top_k(s, kmax)
  hits = jnp.take_along_axis(query, top, axis=1).astype(jnp.float32)  # [U, kmax]
  n_q = query.sum(1).astype(jnp.float32)
  discount = 1.0 / jnp.log2(jnp.arange(2, kmax + 2, dtype=jnp.float32))
  out = {}

  def ndcg(k):
    k = min(k, kmax)
    dcg = (hits[:, :k] * discount[:k]).sum(1)
    ideal = jnp.where(jnp.arange(k)[None, :] < n_q[:, None], discount[None, :k], 0.0).sum(1)
    return dcg / jnp.maximum(ideal, 1e-12)

  for k in RECALL_KS:
    out[f"recall@{k}"] = hits[:, :k].sum(1) / jnp.minimum(k, n_q)
  for k in NDCG_KS:
    out[f"ndcg@{k}"] = ndcg(k)
  for k in top_ks:
    h = hits[:, :k].sum(1)
    out[f"precision@{k}"] = h / k
    out[f"recall@{k}"] = h / jnp.minimum(k, n_q)
    out[f"hr@{k}"] = (h > 0).astype(jnp.float32)
    out[f"ndcg@{k}"] = ndcg(k)
  return out


def _mask(ids, n_items):
  """[U, S] item indices (-1 padded) -> [U, n_items] bool."""
  rows = jnp.repeat(jnp.arange(ids.shape[0])[:, None], ids.shape[1], axis=1)
  return jnp.zeros((ids.shape[0], n_items), bool).at[rows, jnp.maximum(ids, 0)].max(ids >= 0)


def make_rank_fn(score_fn: Callable, n_items: int, chunk: int) -> Callable:
  """rank(params, support_ids [U, S], query [U, I], valid [U], cap) -> summed metrics over the
  valid users, jitted (`cap` static); U a multiple of `chunk`, looped on the device with
  `lax.map`. The scorer is given the first `cap` support items (all with cap None); every
  support item is excluded from the ranking (a positive the user has but was not asked for is
  neither a hit nor a miss)."""

  def one_chunk(params, sup_ids, query, valid, cap):
    support = _mask(sup_ids, n_items)
    given = support if cap is None else _mask(jnp.where(jnp.arange(sup_ids.shape[1]) < cap, sup_ids, -1), n_items)
    scores = score_fn(params, given.astype(jnp.float32))
    m = per_user_metrics(scores, support, query)
    return {k: jnp.where(valid, v, 0.0).sum() for k, v in m.items()}

  def rank(params, sup_ids, query, valid, cap=None):
    U = sup_ids.shape[0]
    split = lambda a: a.reshape((U // chunk, chunk) + a.shape[1:])  # noqa: E731
    sums = jax.lax.map(lambda c: one_chunk(params, *c, cap), (split(sup_ids), split(query), split(valid)))
    return {k: v.sum() for k, v in sums.items()}

  return jax.jit(rank, static_argnames="cap")


class RankingEvaluator:
  """Uploads each user set once (every support cap reads the same arrays); one rank function
  per scorer (one compile per cap)."""

  def __init__(self, n_items: int, chunk: int = 256):
    self.n_items, self.chunk, self.device, self.fns = n_items, chunk, {}, {}

  def arrays(self, key, sets: UserSets):
    if key not in self.device:
      U = len(sets)
      pad = -(-max(U, 1) // self.chunk) * self.chunk - U
      self.device[key] = (
        jnp.asarray(np.pad(sets.support, ((0, pad), (0, 0)), constant_values=-1)),
        jnp.asarray(np.pad(sets.query, ((0, pad), (0, 0)))),
        jnp.asarray(np.arange(U + pad) < U),
      )
    return self.device[key]

  def score(self, score_fn: Callable, params, key: str, sets: UserSets, cap: int | None = None) -> dict[str, float]:
    if score_fn not in self.fns:
      self.fns[score_fn] = make_rank_fn(score_fn, self.n_items, self.chunk)
    if len(sets) == 0:
      return {"n_users": 0}
    sums = self.fns[score_fn](params, *self.arrays(key, sets), cap=cap)
    sums = jax.device_get(sums)
    out = {k: float(v) / len(sets) for k, v in sums.items()}
    out["n_users"] = len(sets)
    return out
