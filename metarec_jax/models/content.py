"""MeLU-style content model: one embedding per feature field, concatenated, then an MLP."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from metarec_jax.data.schema import FieldSpec

MODELS = ("content",)
EMBED_SCOPE = "embed"


def param_name(spec: FieldSpec) -> str:
  """Name of a field's embedding table inside params['params']['embed']."""
  return spec.name.replace("/", "_")


def embed_field(table: jnp.ndarray, spec: FieldSpec, ids: jnp.ndarray) -> jnp.ndarray:
  """Categorical: table[ids] -> [..., d]. Multi-hot ([..., k], -1 padded): mean of valid rows."""
  table = jnp.asarray(table)
  if spec.kind == "categorical":
    return table[ids]
  valid = ids >= 0
  rows = table[jnp.where(valid, ids, 0)] * valid[..., None]
  return rows.sum(-2) / jnp.maximum(valid.sum(-1, keepdims=True), 1)


class Embeddings(nn.Module):
  fields: tuple[FieldSpec, ...]
  dim: int

  @nn.compact
  def __call__(self, x: dict[str, jnp.ndarray]) -> jnp.ndarray:
    init = nn.initializers.normal(stddev=0.1)
    out = []
    for spec in self.fields:
      table = self.param(param_name(spec), init, (spec.vocab_size, self.dim))
      out.append(embed_field(table, spec, x[spec.name]))
    return jnp.concatenate(out, axis=-1)


class ContentModel(nn.Module):
  """Predicts a rating per (user, item) pair.

  x: dict of field name -> [N] (categorical) or [N, k] (multi-hot ids); returns [N].
  The decision layers ("hidden_*", "out") are MeLU's locally updated layers.
  """

  fields: tuple[FieldSpec, ...]
  embed_dim: int = 32
  hidden: Sequence[int] = (64, 64)
  output_bias: float = 0.0

  @nn.compact
  def __call__(self, x: dict[str, jnp.ndarray]) -> jnp.ndarray:
    h = Embeddings(self.fields, self.embed_dim, name=EMBED_SCOPE)(x)
    for i, width in enumerate(self.hidden):
      h = nn.relu(nn.Dense(width, name=f"hidden_{i}")(h))
    out = nn.Dense(1, name="out", bias_init=nn.initializers.constant(self.output_bias))(h)
    return out[..., 0]


def create_model(name: str, *, fields: tuple[FieldSpec, ...], embed_dim: int = 32,
                 hidden: Sequence[int] = (64, 64), output_bias: float = 0.0) -> nn.Module:
  if name == "content":
    return ContentModel(fields=tuple(fields), embed_dim=embed_dim, hidden=tuple(hidden), output_bias=output_bias)
  raise ValueError(f"Unsupported model: {name!r}; choose one of {', '.join(MODELS)}")
