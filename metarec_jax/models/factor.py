"""Collaborative-filtering and hybrid recommenders (flax.linen, pure apply).

cf:      r_ui = <p_u, q_i> + b_u + b_i + mu
hybrid:  r_ui = alpha * (<p_u, q_i> + b_u) + (1 - alpha) * mlp(embeddings) + b_i + mu

Items: q_i is a projection of the item's field embeddings, which include the item-id
embedding when the run has one (known items get their own row, new items the shared
"unknown" row), so a new item's vector comes from its features. b_i is the per-id bias
column of the field tables (`linear`), i.e. the item's id bias plus its features' biases.

Users: a new user has no trained row. The task-specific part is the user vector and bias,
p_u = p_0 + W * user-feature embeddings and b_u = b_0 (+ the user features' biases), where
p_0 and b_0 live in the "user" scope: the meta-learned initialisation that optimisation-
based learners adapt per task (`head_scopes`). Without user features p_u = p_0.

hybrid: alpha is fixed (`alpha`) or learned as sigmoid of a meta-parameter in the "mix"
scope (`alpha=None`); with `adapt_alpha` it is also adapted per task.

Model- and metric-based learners do not take gradient steps: they read the support set
(item vectors q_j and the residuals y_j - r_uj of the meta-learned initial user) and output
the change of the user vector and bias (learners/set_models.py, `make_factor_set_learner`).
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from metarec_jax.data.schema import FieldSpec
from metarec_jax.models.content import EMBED_SCOPE, Embeddings

USER_SCOPE = "user"
MIX_SCOPE = "mix"


class UserVector(nn.Module):
  """The meta-learned initial user vector p_0 [rank] and bias b_0 []."""

  rank: int

  @nn.compact
  def __call__(self):
    p = self.param("p", nn.initializers.normal(stddev=0.1), (self.rank,))
    b = self.param("b", nn.initializers.zeros, ())
    return p, b


class Mix(nn.Module):
  """alpha = sigmoid(logit), initialised at `start` (hybrid models)."""

  start: float = 0.5

  @nn.compact
  def __call__(self):
    logit0 = math.log(self.start / (1.0 - self.start))
    return nn.sigmoid(self.param("logit", nn.initializers.constant(logit0), ()))


class FactorModel(nn.Module):
  fields: tuple[FieldSpec, ...]
  kind: str = "cf"  # "cf" or "hybrid"
  embed_dim: int = 32
  rank: int = 32
  hidden: Sequence[int] = (64, 64)
  output_bias: float = 0.0
  linear: bool = True
  alpha: float | None = None  # hybrid: fixed weight of the CF part; None: learned
  adapt_alpha: bool = False

  @property
  def head_scopes(self) -> tuple[str, ...]:
    """Parameter scopes that adapt per task under adapt="head"."""
    if self.kind == "cf":
      return (USER_SCOPE,)
    scopes = (USER_SCOPE,) + tuple(f"hidden_{i}" for i in range(len(self.hidden))) + ("out",)
    return scopes + ((MIX_SCOPE,) if self.adapt_alpha and self.alpha is None else ())

  @nn.compact
  def __call__(self, x: dict[str, jnp.ndarray], parts: bool = False):
    """Ratings [...]; with `parts`, also what a set learner needs to move the user vector:
    {"pred": ratings, "q": item vectors [..., rank], "alpha": weight of the CF part [...]}.
    A user-vector change (dp, db) changes the ratings by alpha * (<dp, q> + db)."""
    if self.kind not in ("cf", "hybrid"):
      raise ValueError(f"FactorModel kind must be 'cf' or 'hybrid', got {self.kind!r}")
    h, bias = Embeddings(self.fields, self.embed_dim, self.linear, name=EMBED_SCOPE)(x)
    d = self.embed_dim

    def part(user: bool):
      idx = [i for i, s in enumerate(self.fields) if s.name.startswith("user/") == user]
      return jnp.concatenate([h[..., i * d : (i + 1) * d] for i in idx], -1) if idx else None

    items, users = part(False), part(True)
    if items is None:
      raise ValueError("the cf and hybrid models need at least one item field (e.g. the item id)")
    q = nn.Dense(self.rank, name="item_proj")(items)
    p0, b0 = UserVector(self.rank, name=USER_SCOPE)()
    p = p0 + (nn.Dense(self.rank, use_bias=False, name="user_proj")(users) if users is not None else 0.0)
    r_cf = (p * q).sum(-1) + b0
    if self.kind == "cf":
      out, alpha = r_cf, 1.0
    else:
      g = h
      for i, width in enumerate(self.hidden):
        g = nn.relu(nn.Dense(width, name=f"hidden_{i}")(g))
      r_content = nn.Dense(1, name="out")(g)[..., 0]
      alpha = Mix(name=MIX_SCOPE)() if self.alpha is None else self.alpha
      out = alpha * r_cf + (1.0 - alpha) * r_content
    out = out + bias + self.output_bias
    if parts:
      return {"pred": out, "q": q, "alpha": jnp.broadcast_to(jnp.asarray(alpha, out.dtype), out.shape)}
    return out
