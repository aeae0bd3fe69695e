"""Trivial, non-learned baselines: global mean, item mean, the user's support mean, and item
popularity (the item's number of positive training labels when the labels are 0/1, else
its number of training ratings, divided by the largest count so that it lies in [0, 1]).
Popularity is a ranking baseline: its values are not ratings."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from metarec_jax.learners.base import Batch, FitContext, Learner

TRIVIAL = ("global_mean", "item_mean", "support_mean", "popularity")


def _means(ctx: FitContext):
  mu = ctx.global_mean
  sums = np.bincount(ctx.train_items, weights=ctx.train_ratings, minlength=ctx.n_items)
  counts = np.bincount(ctx.train_items, minlength=ctx.n_items)
  item_mean = np.where(counts > 0, sums / np.maximum(counts, 1), mu)
  positive = ctx.train_ratings > 0.5 if ctx.binary_labels else np.ones(len(ctx.train_ratings), bool)
  pop = np.bincount(ctx.train_items[positive], minlength=ctx.n_items).astype(np.float64)
  return {"mu": jnp.asarray(mu, jnp.float32), "item_mean": jnp.asarray(item_mean, jnp.float32),
          "popularity": jnp.asarray(pop / max(pop.max(), 1.0), jnp.float32)}


def make_trivial(name: str) -> Learner:
  if name not in TRIVIAL:
    raise ValueError(f"Unsupported baseline: {name!r}; choose one of {', '.join(TRIVIAL)}")

  def init(rng, example, ctx: FitContext):
    del rng, example
    return _means(ctx)

  def adapt(params, support: Batch):
    n = support.mask.sum()
    mean = jnp.sum(support.y * support.mask) / jnp.maximum(n, 1)
    return {"support_mean": jnp.where(n > 0, mean, params["mu"])}

  def predict(params, state, x):
    items = x["item"]
    if name == "global_mean":
      return jnp.full(items.shape, params["mu"])
    if name == "item_mean":
      return params["item_mean"][items]
    if name == "popularity":
      return params["popularity"][items]
    return jnp.full(items.shape, state["support_mean"])

  return Learner(name=name, family="baseline", init=init, adapt=adapt, predict=predict, meta_loss=None)
