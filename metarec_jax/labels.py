"""Label modes (`--label`): what a rating becomes, the loss, and the metrics.

- rating: the raw rating (e.g. 1-5), MSE; metrics: MAE, RMSE, nDCG@k (gain 2^r - 1),
  threshold accuracy/precision/recall/F1.
- scaled: (r - lo) / (hi - lo) in [0, 1], MSE; predictions and labels are mapped back to the
  rating scale for the metrics, so they are reported in the original scale.
- binary: 1 if r >= threshold else 0; the model outputs a logit (the learner's predictions
  go through a sigmoid), binary cross-entropy; metrics: log loss, accuracy, precision,
  recall and F1 at p >= 0.5, AUC, and within each task's query P@k, R@k and nDCG@k with
  binary gain. Implicit-feedback datasets (0/1 labels) are always binary.

Model selection (early stopping, baseline grids) minimises `select_metric` on validation:
MAE for rating and scaled, log loss for binary.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metarec_jax import metrics as metrics_lib

LABELS = ("rating", "scaled", "binary")
_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class LabelSpec:
  mode: str = "rating"
  scale: tuple[float, float] = (1.0, 5.0)  # the dataset's rating scale
  threshold: float = 4.0  # binary: a rating >= threshold is positive

  def __post_init__(self):
    if self.mode not in LABELS:
      raise ValueError(f"label must be one of {', '.join(LABELS)}, got {self.mode!r}")
    if self.mode == "binary" and not self.scale[0] < self.threshold <= self.scale[1]:
      raise ValueError(
        f"label_threshold must be in ({self.scale[0]}, {self.scale[1]}] for this dataset's rating "
        f"scale, got {self.threshold}"
      )

  @property
  def binary(self) -> bool:
    return self.mode == "binary"

  @property
  def loss(self) -> str:
    return "bce" if self.binary else "mse"

  @property
  def select_metric(self) -> str:
    return "logloss" if self.binary else "mae"

  def encode(self, ratings: np.ndarray) -> np.ndarray:
    r = np.asarray(ratings, np.float32)
    lo, hi = self.scale
    if self.mode == "scaled":
      return ((r - lo) / (hi - lo)).astype(np.float32)
    if self.mode == "binary":
      return (r >= self.threshold).astype(np.float32)
    return r

  def decode(self, values):
    """Label-space values back to the rating scale (scaled mode; identity otherwise)."""
    if self.mode != "scaled":
      return values
    lo, hi = self.scale
    return values * (hi - lo) + lo

  def levels(self) -> tuple[float, ...]:
    """The distinct label values (prototype learners build one prototype per level)."""
    if self.binary:
      return (0.0, 1.0)
    lo, hi = self.scale
    steps = np.arange(np.ceil(lo), np.floor(hi) + 1)
    return tuple(float(v) for v in self.encode(steps))

  def output_bias(self, mean_label: float) -> float:
    """The model's initial output: the mean label (its logit in binary mode)."""
    if self.binary:
      p = min(max(mean_label, 1e-3), 1 - 1e-3)
      return float(np.log(p / (1 - p)))
    return float(mean_label)

  def score(self, pred, y, mask, ks=(1, 3, 5)) -> dict[str, jnp.ndarray]:
    """Metrics of [task, Q] label-space predictions (probabilities in binary mode)."""
    if self.binary:
      return binary_metrics(pred, y, mask, ks)
    return metrics_lib.rating_metrics(
      self.decode(pred), self.decode(y), mask, ks=ks, threshold=self.threshold, scale=self.scale
    )


def auc_per_task(scores, y, mask):
  """ROC AUC within each task (ties count 1/2). Returns ([task] AUC, [task] valid): a task
  needs at least one positive and one negative."""
  pos = mask & (y > 0.5)
  neg = mask & (y <= 0.5)
  diff = scores[..., :, None] - scores[..., None, :]  # [T, Q(pos), Q(neg)]
  wins = (diff > 0) + 0.5 * (diff == 0)
  pairs = pos[..., :, None] & neg[..., None, :]
  n = pairs.sum((-1, -2))
  valid = n > 0
  return jnp.where(valid, (wins * pairs).sum((-1, -2)) / jnp.maximum(n, 1), 0.0), valid


def precision_recall_at_k(scores, y, mask, k: int):
  """Within each task's query: rank by score (stable), take the top min(k, |query|) items.
  Precision = positives among them / their number (by item, not by label value);
  recall = positives among them / all positives. Returns per-task values and validity."""
  s = jnp.where(mask, scores, -jnp.inf)
  order = jnp.argsort(-s, axis=-1, stable=True)
  ranked_pos = jnp.take_along_axis(mask & (y > 0.5), order, axis=-1)
  kk = min(k, y.shape[-1])
  n_valid = mask.sum(-1)
  cut = jnp.minimum(n_valid, k)
  hits = (ranked_pos[..., :kk] & (jnp.arange(kk) < cut[..., None])).sum(-1)
  n_pos = (mask & (y > 0.5)).sum(-1)
  precision = hits / jnp.maximum(cut, 1)
  recall = hits / jnp.maximum(n_pos, 1)
  return precision, n_valid > 0, recall, n_pos > 0


def _mean_valid(v, valid):
  return (v * valid).sum() / jnp.maximum(valid.sum(), 1)


def binary_metrics(prob, y, mask, ks=(5, 7, 10)) -> dict[str, jnp.ndarray]:
  p = jnp.clip(prob, _EPS, 1 - _EPS)
  n = jnp.maximum(mask.sum(), 1)
  logloss = -(mask * (y * jnp.log(p) + (1 - y) * jnp.log1p(-p))).sum() / n
  out = dict(metrics_lib.threshold_metrics(prob, y, mask, 0.5))
  auc, valid = auc_per_task(prob, y, mask)
  out.update(logloss=logloss, auc=_mean_valid(auc, valid), auc_tasks=valid.sum())
  for k in ks:
    precision, pv, recall, rv = precision_recall_at_k(prob, y, mask, k)
    out[f"precision@{k}"] = _mean_valid(precision, pv)
    out[f"recall@{k}"] = _mean_valid(recall, rv)
    out[f"ndcg@{k}"] = metrics_lib.ndcg(prob, y, mask, k, binary_gain=True)
  return out


def masked_bce(logits, y, mask):
  """Mean binary cross-entropy of logits over the valid entries."""
  per = optax.sigmoid_binary_cross_entropy(logits, y)  # via log_sigmoid: exact gradient p - y everywhere
  return jnp.sum(mask * per) / jnp.maximum(mask.sum(), 1)


LINKS = {"identity": lambda v: v, "sigmoid": jax.nn.sigmoid}
