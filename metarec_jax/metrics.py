"""Masked, pure jnp metrics for a batch of query sets. Shapes: [task, query]."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _per_task_mean(values, mask):
  n = mask.sum(-1)
  return (values * mask).sum(-1) / jnp.maximum(n, 1), n > 0


def mae(pred, y, mask, *, pooled: bool = False) -> jnp.ndarray:
  """Per-task MAE averaged over tasks (MeLU), or pooled over all pairs."""
  err = jnp.abs(pred - y)
  if pooled:
    return (err * mask).sum() / jnp.maximum(mask.sum(), 1)
  per_task, valid = _per_task_mean(err, mask)
  return (per_task * valid).sum() / jnp.maximum(valid.sum(), 1)


def rmse(pred, y, mask, *, pooled: bool = False) -> jnp.ndarray:
  """Per-task RMSE averaged over tasks, or pooled sqrt(mean squared error)."""
  sq = (pred - y) ** 2
  if pooled:
    return jnp.sqrt((sq * mask).sum() / jnp.maximum(mask.sum(), 1))
  per_task, valid = _per_task_mean(sq, mask)
  return (jnp.sqrt(per_task) * valid).sum() / jnp.maximum(valid.sum(), 1)


def ndcg_per_task(scores, y, mask, k: int, *, binary_gain: bool = False):
  """nDCG@k within each task's query. Returns ([task] values, [task] valid).

  Items are ranked by score, highest first; ties keep query order (stable sort), so the
  result is deterministic. Gain is 2^y - 1 (or y with `binary_gain`), discount
  1/log2(rank + 1). A task whose ideal DCG is 0 has no defined nDCG: valid is False.
  """
  gain = jnp.where(mask, y if binary_gain else 2.0**y - 1.0, 0.0)
  masked_scores = jnp.where(mask, scores, -jnp.inf)
  order = jnp.argsort(-masked_scores, axis=-1, stable=True)
  ranked = jnp.take_along_axis(gain, order, axis=-1)
  ideal = -jnp.sort(-gain, axis=-1)
  kk = min(k, gain.shape[-1])
  disc = 1.0 / jnp.log2(jnp.arange(2, kk + 2, dtype=jnp.float32))
  dcg = (ranked[..., :kk] * disc).sum(-1)
  idcg = (ideal[..., :kk] * disc).sum(-1)
  valid = idcg > 0
  return jnp.where(valid, dcg / jnp.where(valid, idcg, 1.0), 0.0), valid


def ndcg(scores, y, mask, k: int, *, binary_gain: bool = False) -> jnp.ndarray:
  per_task, valid = ndcg_per_task(scores, y, mask, k, binary_gain=binary_gain)
  return (per_task * valid).sum() / jnp.maximum(valid.sum(), 1)


def threshold_metrics(pred, y, mask, threshold: float) -> dict[str, jnp.ndarray]:
  """Accuracy, precision, recall and F1 of `pred >= threshold` against `y >= threshold`,
  pooled over all query pairs. Precision (recall) is 0 when nothing is predicted (relevant)."""
  p = (pred >= threshold) & mask
  t = (y >= threshold) & mask
  tp = (p & t).sum()
  n = mask.sum()
  acc = ((p == t) & mask).sum() / jnp.maximum(n, 1)
  precision = tp / jnp.maximum(p.sum(), 1)
  recall = tp / jnp.maximum(t.sum(), 1)
  f1 = 2 * precision * recall / jnp.maximum(precision + recall, 1e-12)
  return {"accuracy": acc, "precision": precision, "recall": recall, "f1": f1}


def rating_metrics(
  pred, y, mask, *, ks=(1, 3, 5), threshold: float = 4.0, scale: tuple[float, float] | None = None
) -> dict[str, jnp.ndarray]:
  """Every explicit-rating metric for [task, query] predictions.

  With `scale=(lo, hi)`, error and threshold metrics use predictions clipped to the rating
  scale; rankings (nDCG) always use the raw scores, so clipping creates no ties.
  """
  scores = pred
  if scale is not None:
    pred = jnp.clip(pred, scale[0], scale[1])
  out = {
    "mae": mae(pred, y, mask),
    "rmse": rmse(pred, y, mask),
    "mae_pooled": mae(pred, y, mask, pooled=True),
    "rmse_pooled": rmse(pred, y, mask, pooled=True),
  }
  for k in ks:
    out[f"ndcg@{k}"] = ndcg(scores, y, mask, k)
  out.update(threshold_metrics(pred, y, mask, threshold))
  return out


def topk_metrics(scores, relevant, valid, k: int) -> dict[str, jnp.ndarray]:
  """Precision@k, Recall@k, HR@k and nDCG@k (binary gain) of full-catalogue rankings.

  Args:
    scores: [users, items] scores.
    relevant: [users, items] bool, the items that count as hits (e.g. held-out liked items).
    valid: [users, items] bool, the candidates (False: excluded, e.g. the user's support items).
    k: cut-off; at most the number of candidates.

  Users without a relevant candidate are left out of the means (`n_users` counts the rest).
  """
  rel = relevant & valid
  s = jnp.where(valid, scores, -jnp.inf)
  _, top = jax.lax.top_k(s, k)
  hits = jnp.take_along_axis(rel, top, axis=1).astype(jnp.float32)  # [U, k]
  n_rel = rel.sum(axis=1)
  has = n_rel > 0
  discount = 1.0 / jnp.log2(jnp.arange(2, k + 2, dtype=jnp.float32))
  dcg = (hits * discount).sum(axis=1)
  ideal = jnp.where(jnp.arange(k)[None, :] < n_rel[:, None], discount[None, :], 0.0).sum(axis=1)
  per_user = {
    f"precision@{k}": hits.sum(axis=1) / k,
    f"recall@{k}": hits.sum(axis=1) / jnp.maximum(n_rel, 1),
    f"hr@{k}": (hits.sum(axis=1) > 0).astype(jnp.float32),
    f"ndcg@{k}": dcg / jnp.where(has, ideal, 1.0),
  }
  n = has.sum()
  out = {name: jnp.where(has, v, 0.0).sum() / jnp.maximum(n, 1) for name, v in per_user.items()}
  out["n_users"] = n
  return out
