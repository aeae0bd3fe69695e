"""The one interface every learner implements.

A learner is a bundle of pure functions over a featurised episode:

  init(rng, example: Episode, ctx: FitContext) -> meta_params
  adapt(meta_params, support: Batch) -> task_state          # one task
  predict(meta_params, task_state, x) -> [N] scores          # one task
  meta_loss(meta_params, episodes: Episode, rng) -> (loss, aux)   # [task]-batched

`meta_loss` is None for learners with nothing to meta-train (they are fitted in `init`).
`predict` takes the meta-parameters as well as the task state so that shared weights are
never copied per task under vmap.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from metarec_jax.data.schema import FieldSpec
from metarec_jax.labels import masked_bce


class Batch(NamedTuple):
  """Rated (user, item) pairs of one task ([N]) or of a task batch ([T, N]): features `x`
  (field -> [..., N] ids, [..., N, k] multi-hot ids or dense rows), labels `y` [..., N] and
  `mask` [..., N] (False: padding)."""

  x: dict[str, jnp.ndarray]  # field -> [..., N] or [..., N, k]
  y: jnp.ndarray  # [..., N]
  mask: jnp.ndarray  # [..., N] bool


class Episode(NamedTuple):
  """A task's support (adapted to) and query (scored) Batches: [S] / [Q], or [T, S] / [T, Q]."""

  support: Batch
  query: Batch


@dataclasses.dataclass(frozen=True)
class FitContext:
  """What a learner may know about the training data."""

  model: nn.Module
  fields: tuple[FieldSpec, ...]
  n_items: int
  train_users: np.ndarray  # [R] ratings seen in meta-training
  train_items: np.ndarray
  train_ratings: np.ndarray
  tables: dict[str, np.ndarray] | None = None  # feature tables (host), for closed-form learners
  binary_labels: bool = False  # labels are 0/1 (--label=binary or implicit feedback)
  # Derived matrices that several learners built from this context share (e.g. the fold-ins'
  # content regression across a validation grid); filled on first use.
  memo: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

  @classmethod
  def of(cls, model, fields, n_items: int, train_ratings: tuple, **kw) -> "FitContext":
    """The context of the (users, items, ratings) arrays of meta-training (`Scenarios.train_ratings`)."""
    users, items, ratings = train_ratings
    return cls(
      model=model, fields=fields, n_items=n_items, train_users=users, train_items=items, train_ratings=ratings, **kw
    )

  @property
  def global_mean(self) -> float:
    return float(self.train_ratings.mean()) if len(self.train_ratings) else 0.0


@dataclasses.dataclass(frozen=True)
class Learner:
  """A learner's pure functions (module docstring): `init(rng, example: Episode [T, ...], ctx)`
  -> params; `adapt(params, support: Batch [S])` -> task state; `predict(params, state, x [N])`
  -> [N] scores; `meta_loss(params, episodes: Episode [T, ...], rng)` -> (scalar loss, aux),
  None for learners fitted in `init`. `link` maps scores to label space."""

  name: str
  family: str  # "optimisation", "model", "metric" or "baseline"
  init: Callable[..., Any]
  adapt: Callable[..., Any]
  predict: Callable[..., jnp.ndarray]
  meta_loss: Callable[..., Any] | None = None
  # What maps `predict`'s output to label space: "identity", or "sigmoid" for learners that
  # output logits (binary labels). make_predict_fn applies it.
  link: str = "identity"


def masked_mse(pred: jnp.ndarray, y: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """Mean squared error over the unmasked entries: pred, y, mask [..., N] -> scalar."""
  return jnp.sum(mask * (pred - y) ** 2) / jnp.maximum(mask.sum(), 1)


def masked_softmax_nll(logits: jnp.ndarray, y: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """Multinomial log-likelihood of the positives (y = 1) under a softmax over the unmasked items
  of each row (Mult-VAE's loss, over a task's items): logits, y, mask [..., N] -> scalar, the mean
  over the positives of -log softmax."""
  logp = jax.nn.log_softmax(jnp.where(mask, logits, -1e30), axis=-1)
  pos = mask & (y > 0.5)
  return -jnp.sum(jnp.where(pos, logp, 0.0)) / jnp.maximum(pos.sum(), 1)


# Training losses by name (--label: rating/scaled use mse, binary bce on logits; the ranking
# protocol's episode learners softmax or bce) and the link that turns the learner's output into
# label space ("identity" for softmax: a score, ranked, not a label).
LOSSES = {"mse": (masked_mse, "identity"), "bce": (masked_bce, "sigmoid"), "softmax": (masked_softmax_nll, "identity")}


def loss_and_link(loss: str):
  if loss not in LOSSES:
    raise ValueError(f"Unsupported loss: {loss!r}; choose one of {', '.join(LOSSES)}")
  return LOSSES[loss]


def concat_batches(a: Batch, b: Batch) -> Batch:
  """Joins two batches along the item axis (the last axis of y)."""
  axis = a.y.ndim - 1
  x = {k: jnp.concatenate([a.x[k], b.x[k]], axis=axis) for k in a.x}
  return Batch(x, jnp.concatenate([a.y, b.y], axis), jnp.concatenate([a.mask, b.mask], axis))
