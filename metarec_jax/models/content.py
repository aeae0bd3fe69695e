"""MeLU-style content model: one embedding per feature field, concatenated, then an MLP."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from metarec_jax.data.schema import VECTOR_KINDS, FieldSpec

MODELS = ("content", "cf", "hybrid")
EMBED_SCOPE = "embed"


def param_name(spec: FieldSpec) -> str:
  """Name of a field's embedding table inside params['params']['embed']."""
  return spec.name.replace("/", "_")


ONE_HOT_MAX_VOCAB = 64


def embed_field(table: jnp.ndarray, spec: FieldSpec, ids: jnp.ndarray) -> jnp.ndarray:
  """Categorical: table[ids] -> [..., d]. Multi-hot ([..., k], -1 padded): mean of valid rows.
  Dense ([..., k] floats): their projection by the table (a [k, d] matrix).

  Small vocabularies (<= ONE_HOT_MAX_VOCAB rows) use a (multi-)hot weight matrix times the
  table: the same values, but the gradient is a matmul instead of a scatter-add, which is
  much faster on CPU. Larger tables gather rows; padding slots gather nothing.
  """
  table = jnp.asarray(table)
  if spec.kind in VECTOR_KINDS:
    return ids.astype(table.dtype) @ table
  vocab = table.shape[0]
  if vocab <= ONE_HOT_MAX_VOCAB:
    if spec.kind == "categorical":
      weights = jax.nn.one_hot(ids, vocab, dtype=table.dtype)
    else:
      hot = jax.nn.one_hot(ids, vocab, dtype=table.dtype).sum(-2)  # -1 padding is all zeros
      weights = hot / jnp.maximum((ids >= 0).sum(-1, keepdims=True), 1).astype(table.dtype)
    return weights @ table
  if spec.kind == "categorical":
    return table[ids]
  valid = ids >= 0
  rows = table.at[jnp.where(valid, ids, vocab)].get(mode="fill", fill_value=0)
  return rows.sum(-2) / jnp.maximum(valid.sum(-1, keepdims=True), 1)


def field_embeddings(params, specs: Sequence[FieldSpec], x, dim: int, shape, empty: float = 0.0) -> jnp.ndarray:
  """A content model's field embeddings for `specs`, each cut to `dim`, concatenated [..., F].

  `params` are the model's variables ({"params": {"embed": ...}}); with no specs the result is
  one column of `empty`, of batch shape `shape`. A model without embedding tables (the cf
  model) is a clear error.
  """
  if EMBED_SCOPE not in params.get("params", {}):
    raise ValueError("this learner reads the content model's embedding tables (--model=content or hybrid)")
  tables = params["params"][EMBED_SCOPE]
  parts = [embed_field(tables[param_name(s)], s, x[s.name])[..., :dim] for s in specs]
  return jnp.concatenate(parts, axis=-1) if parts else jnp.full(tuple(shape) + (1,), empty)


def _table_init(linear: bool):
  normal = nn.initializers.normal(stddev=0.1)

  def init(key, shape, dtype=jnp.float32):
    table = normal(key, shape, dtype)
    return table.at[:, -1].set(0.0) if linear else table

  return init


class Embeddings(nn.Module):
  """One table per field. With `linear`, each table has one extra column: a scalar bias per id.

  Returns the concatenated embeddings [..., fields * dim] and the summed biases [...]
  (zeros without `linear`). Keeping the bias inside the field's table means a task that
  adapts embeddings adapts the biases of the same gathered rows.
  """

  fields: tuple[FieldSpec, ...]
  dim: int
  linear: bool = False

  @nn.compact
  def __call__(self, x: dict[str, jnp.ndarray]) -> tuple[jnp.ndarray, jnp.ndarray]:
    width = self.dim + int(self.linear)
    vecs, bias = [], 0.0
    for spec in self.fields:
      table = self.param(param_name(spec), _table_init(self.linear), (spec.vocab_size, width))
      e = embed_field(table, spec, x[spec.name])
      vecs.append(e[..., : self.dim])
      if self.linear:
        bias = bias + e[..., self.dim]
    h = jnp.concatenate(vecs, axis=-1)
    return h, jnp.broadcast_to(jnp.asarray(bias, h.dtype), h.shape[:-1])


class ContentModel(nn.Module):
  """Predicts a rating per (user, item) pair.

  x: dict of field name -> [N] (categorical) or [N, k] (multi-hot ids); returns [N].
  The decision layers ("hidden_*", "out") are MeLU's locally updated layers. With
  `linear`, a per-id scalar bias of every field is added to the MLP output (a "wide" part:
  item and feature biases need not be squeezed through the MLP).
  """

  fields: tuple[FieldSpec, ...]
  embed_dim: int = 32
  hidden: Sequence[int] = (64, 64)
  output_bias: float = 0.0
  linear: bool = False

  # The embeddings are the only parameters before the decision layers: a learner that adapts
  # the decision layers only may encode a task once (stage="encode") and run its inner steps
  # on the encoding (stage="decode"), or on the first layer's pre-activations (stage="hidden",
  # see maml.py), which equals the full apply.
  splits_at_embeddings = True

  @nn.compact
  def __call__(self, x, stage: str = "full"):
    """stage "full": x -> [N]; "encode": x -> (h, bias), the embeddings; "decode": (h, bias)
    -> [N]; "hidden": (z, bias) -> [N], z the first decision layer's output before its ReLU."""
    start = 0
    if stage in ("decode", "hidden"):
      h, bias = x
      if stage == "hidden":
        h, start = nn.relu(h), 1
    else:
      h, bias = Embeddings(self.fields, self.embed_dim, self.linear, name=EMBED_SCOPE)(x)
      if stage == "encode":
        return h, bias
    for i, width in enumerate(self.hidden[start:], start):
      h = nn.relu(nn.Dense(width, name=f"hidden_{i}")(h))
    out = nn.Dense(1, name="out", bias_init=nn.initializers.constant(self.output_bias))(h)
    return out[..., 0] + bias


def create_model(
  name: str,
  *,
  fields: tuple[FieldSpec, ...],
  embed_dim: int = 32,
  hidden: Sequence[int] = (64, 64),
  output_bias: float = 0.0,
  linear: bool = False,
  rank: int = 32,
  alpha: float | None = None,
  adapt_alpha: bool = False,
) -> nn.Module:
  """content (MeLU-style), cf (factorisation, user vector adapted) or hybrid (their mix)."""
  if name == "content":
    return ContentModel(
      fields=tuple(fields), embed_dim=embed_dim, hidden=tuple(hidden), output_bias=output_bias, linear=linear
    )
  if name in ("cf", "hybrid"):
    from metarec_jax.models.factor import FactorModel

    if alpha is not None and not 0.0 <= alpha <= 1.0:
      raise ValueError(f"hybrid alpha must be in [0, 1] (or unset: learned), got {alpha}")
    return FactorModel(
      fields=tuple(fields),
      kind=name,
      embed_dim=embed_dim,
      rank=rank,
      hidden=tuple(hidden),
      output_bias=output_bias,
      linear=linear,
      alpha=alpha,
      adapt_alpha=adapt_alpha,
    )
  raise ValueError(f"Unsupported model: {name!r}; choose one of {', '.join(MODELS)}")
