"""Recommender models (flax.linen, pure apply)."""

import functools

import jax

from metarec_jax.models.content import ContentModel, create_model, MODELS


@functools.partial(jax.jit, static_argnums=0)
def init_jit(module, rng, *args):
  """`module.init(rng, *args)` as one compiled computation. Run eagerly, an init compiles
  each of its ops apart (seconds for the content model), and none of those reach the
  persistent compilation cache."""
  return module.init(rng, *args)


__all__ = ["ContentModel", "create_model", "init_jit", "MODELS"]
