"""Trivial, non-learned baselines: global mean, item mean, the user's support mean, and item
popularity (the item's number of positive training labels when the labels are 0/1, else
its number of training ratings, divided by the largest count so that it lies in [0, 1]).
Popularity is a ranking baseline: its values are not ratings.

cooc_knn (0/1 labels; data/features.py): item-based
neighbours in the co-occurrence embedding, score(i) = <e_i, sum of e_j over the support's
positives j>, i.e. approximately the number of training users' co-occurrences of i with the
user's positives; squashed monotonically into (0, 1), so it too is a ranking baseline. With
`dim`, the embedding is its own truncated SVD of that width of the training positives (the
experiments choose it on validation); without, the item/cooc feature table."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from metarec_jax.data.features import COOC_FIELD, cooccurrence_tables
from metarec_jax.learners.base import Batch, FitContext, Learner
from metarec_jax.learners.registry import FIT, LearnerSpec, register

TRIVIAL = ("global_mean", "item_mean", "support_mean", "popularity", "cooc_knn")


def _means(ctx: FitContext):
  mu = ctx.global_mean
  sums = np.bincount(ctx.train_items, weights=ctx.train_ratings, minlength=ctx.n_items)
  counts = np.bincount(ctx.train_items, minlength=ctx.n_items)
  item_mean = np.where(counts > 0, sums / np.maximum(counts, 1), mu)
  positive = ctx.train_ratings > 0.5 if ctx.binary_labels else np.ones(len(ctx.train_ratings), bool)
  pop = np.bincount(ctx.train_items[positive], minlength=ctx.n_items).astype(np.float64)
  return {
    "mu": jnp.asarray(mu, jnp.float32),
    "item_mean": jnp.asarray(item_mean, jnp.float32),
    "popularity": jnp.asarray(pop / max(pop.max(), 1.0), jnp.float32),
  }


def make_trivial(name: str, dim: int | None = None) -> Learner:
  if name not in TRIVIAL:
    raise ValueError(f"Unsupported baseline: {name!r}; choose one of {', '.join(TRIVIAL)}")
  if dim is not None and name != "cooc_knn":
    raise ValueError(f"the {name} baseline takes no options (dim is cooc_knn's)")

  def init(rng, example, ctx: FitContext):
    del rng, example
    params = _means(ctx)
    if name == "cooc_knn":
      if not ctx.binary_labels or (dim is None and COOC_FIELD not in (ctx.tables or {})):
        raise ValueError(
          "the cooc_knn baseline needs 0/1 labels (implicit feedback or --label=binary) and a width "
          "(its `dim` option, or the item/cooc field of --cooc_dim > 0)"
        )
      if dim is None:
        e = np.asarray(ctx.tables[COOC_FIELD], np.float32)
      else:
        positive = ctx.train_ratings > 0.5
        e = cooccurrence_tables(
          ctx.train_users[positive],
          ctx.train_items[positive],
          int(ctx.train_users.max()) + 1,
          ctx.n_items,
          dim,
          folds=0,
        )[COOC_FIELD]  # it never featurises training users
      seen = np.abs(e).sum(1) > 0
      params["cooc"] = jnp.asarray(e)
      params["cooc_mean"] = jnp.asarray(e[seen].mean(0) if seen.any() else np.zeros(e.shape[1], np.float32))
    return params

  def adapt(params, support: Batch):
    n = support.mask.sum()
    mean = jnp.sum(support.y * support.mask) / jnp.maximum(n, 1)
    state = {"support_mean": jnp.where(n > 0, mean, params["mu"])}
    if name == "cooc_knn":
      pos = support.mask * (support.y > 0.5)
      v = (params["cooc"][support.x["item"]] * pos[..., None]).sum(-2)
      state["cooc_user"] = jnp.where(pos.sum() > 0, v, params["cooc_mean"])
    return state

  def predict(params, state, x):
    items = x["item"]
    if name == "global_mean":
      return jnp.full(items.shape, params["mu"])
    if name == "item_mean":
      return params["item_mean"][items]
    if name == "popularity":
      return params["popularity"][items]
    if name == "cooc_knn":
      score = params["cooc"][items] @ state["cooc_user"]
      return 0.5 + 0.5 * score / (1.0 + jnp.abs(score))
    return jnp.full(items.shape, state["support_mean"])

  return Learner(name=name, family="baseline", init=init, adapt=adapt, predict=predict, meta_loss=None)


for _name in TRIVIAL[:-1]:
  register(
    LearnerSpec(
      name=_name,
      family="baseline",
      source=FIT,
      baseline=True,
      default_baseline=_name in ("global_mean", "item_mean", "support_mean"),
      build=lambda model, *, dim=None, _name=_name, **_: make_trivial(_name, dim=dim),
    )
  )
# Item neighbours in the co-occurrence embedding: its SVD width chosen on validation AUC.
register(
  LearnerSpec(
    name="cooc_knn",
    family="baseline",
    source=FIT,
    baseline=True,
    select_metric="auc",
    grid=tuple({"dim": d} for d in (4, 8, 16, 32, 64)),
    grid_traced=True,
    build=lambda model, *, dim=None, **_: make_trivial("cooc_knn", dim=dim),
  )
)
