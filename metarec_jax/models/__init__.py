"""Recommender models (flax.linen, pure apply)."""

from metarec_jax.models.content import ContentModel, create_model, MODELS

__all__ = ["ContentModel", "create_model", "MODELS"]
