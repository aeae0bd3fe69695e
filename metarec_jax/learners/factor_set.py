"""The set learners on the cf and hybrid models (`make_factor_set_learner`): the same four learners infer the
model's task-specific part, the user vector and bias, from the support instead of adapting
it by gradient steps. They read the support as (q_j, e_j): the item vector q_j of the
factor model and the residual e_j = y_j - r_j of the meta-learned initial user, and output a
change (dp, db) of the user vector and bias, so that a query rating is
r_i + alpha_i * (<dp, q_i> + db) (alpha_i = 1 for cf; the hybrid's weight of the CF part):

- neural_process: (q_j, e_j) -> MLP -> masked mean (plus log(1 + support size)) -> (dp, db);
  optionally through a latent z with a KL term (evaluation uses the mean).
- in_context: a transformer over the support tokens plus one learned "user" token whose
  output is read out as (dp, db).
- prototype: one prototype per rating level (the mean q_j of the support items with that
  rating); dp = M sum_l a_l [level l present] proto_l and db = sum_l c_l (share of level l), so
  a query's change is a learned similarity <M^T q_i, proto_l> to each prototype, weighted
  per level.
- matching: a kernel-weighted sum of the support residuals under a learned metric M,
  sum_j <M q_i, M q_j> e_j / (n + lambda); with this dot-product kernel the sum is exactly a
  user vector dp = M^T M sum_j q_j e_j / (n + lambda) (plus db = sum_j e_j / (n + lambda_b)).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from metarec_jax.learners.base import Batch, Episode, FitContext, Learner, concat_batches, loss_and_link
from metarec_jax.learners.set_common import RATING_LEVELS, SET_LEARNERS, _batched, _gaussian_kl, _half_gap, _masked_mean
from metarec_jax.models import init_jit


class _UserHead(nn.Module):
  """Maps a task representation to (dp [rank], db []), zero at initialisation so that
  training starts from the (warm-started) initial user."""

  rank: int

  @nn.compact
  def __call__(self, h):
    out = nn.Dense(self.rank + 1, kernel_init=nn.initializers.zeros, name="user_head")(h)
    return out[..., :-1], out[..., -1]


class FactorNP(nn.Module):
  rank: int
  width: int = 64
  latent: bool = False

  @nn.compact
  def __call__(self, q, e, mask, z=None, stats_only=False):
    s = nn.Sequential([nn.Dense(self.width), nn.relu, nn.Dense(self.width)], name="enc")(
      jnp.concatenate([q, e[..., None]], -1)
    )
    r = jnp.concatenate([_masked_mean(s, mask), jnp.log1p(mask.sum())[None]], -1)
    if self.latent:
      mu, raw = jnp.split(nn.Dense(2 * self.width, name="stats")(r), 2, -1)
      sigma = 0.1 + 0.9 * nn.sigmoid(raw)
      if stats_only:
        return mu, sigma
      r = jnp.concatenate([r, mu if z is None else z], -1)
    return _UserHead(self.rank)(r)


class FactorInContext(nn.Module):
  rank: int
  width: int = 64
  layers: int = 2
  heads: int = 4

  @nn.compact
  def __call__(self, q, e, mask):
    tokens = nn.Dense(self.width, name="token")(jnp.concatenate([q, e[..., None]], -1))
    user = self.param("user_token", nn.initializers.normal(0.02), (1, self.width))
    h = jnp.concatenate([user, tokens], 0)
    keys = jnp.concatenate([jnp.ones((1,), bool), mask])
    att_mask = keys[None, :] | jnp.eye(h.shape[0], dtype=bool)
    for i in range(self.layers):
      h = h + nn.MultiHeadDotProductAttention(num_heads=self.heads, name=f"attn_{i}")(
        nn.LayerNorm(name=f"norm1_{i}")(h), mask=att_mask[None]
      )
      h = h + nn.Sequential([nn.Dense(2 * self.width), nn.relu, nn.Dense(self.width)], name=f"mlp_{i}")(
        nn.LayerNorm(name=f"norm2_{i}")(h)
      )
    return _UserHead(self.rank)(h[0])


class FactorPrototype(nn.Module):
  rank: int
  levels: Sequence[float] = RATING_LEVELS

  @nn.compact
  def __call__(self, q, e, mask, y):
    levels = jnp.asarray(self.levels)
    member = mask[:, None] & (jnp.abs(y[:, None] - levels[None, :]) < _half_gap(self.levels))  # [S, L]
    counts = member.sum(0)
    protos = (member.T.astype(q.dtype) @ q) / jnp.maximum(counts, 1)[:, None]  # [L, rank]
    a = self.param("level_weight", nn.initializers.zeros, (len(self.levels),))
    c = self.param("level_bias", nn.initializers.zeros, (len(self.levels),))
    metric = self.param("metric", lambda k, s: jnp.eye(s[0]), (self.rank, self.rank))
    dp = metric @ ((a * (counts > 0))[:, None] * protos).sum(0)
    db = (c * counts).sum() / jnp.maximum(counts.sum(), 1)
    return dp, db


class FactorMatching(nn.Module):
  rank: int

  @nn.compact
  def __call__(self, q, e, mask):
    metric = self.param("metric", lambda k, s: 0.3 * jnp.eye(s[0]), (self.rank, self.rank))
    lam = nn.softplus(self.param("shrink", nn.initializers.constant(1.0), (2,)))
    w = mask.astype(q.dtype)
    n = w.sum()
    dp = metric.T @ (metric @ ((w * e) @ q)) / (n + lam[0])
    db = (w * e).sum() / (n + lam[1])
    return dp, db


def make_factor_set_learner(
  name: str,
  model,
  *,
  kl_weight: float = 0.1,
  latent: bool = False,
  width: int = 64,
  loss: str = "mse",
  levels: tuple[float, ...] = RATING_LEVELS,
) -> Learner:
  """A model- or metric-based learner on the cf / hybrid model: it infers the user vector and
  bias from the support (see the module docstring); meta-parameters are the factor model's
  ("model") and the set encoder's ("enc")."""
  rank = model.rank
  loss_fn, link = loss_and_link(loss)
  if name == "neural_process":
    enc = FactorNP(rank, width, latent)
  elif name == "in_context":
    enc = FactorInContext(rank, width)
  elif name == "prototype":
    enc = FactorPrototype(rank, levels=tuple(levels))
  elif name == "matching":
    enc = FactorMatching(rank)
  else:
    raise ValueError(f"Unsupported set learner: {name!r}; choose one of {', '.join(SET_LEARNERS)}")
  family = "metric" if name in ("prototype", "matching") else "model"

  def read(meta, support: Batch):
    p = model.apply(meta["model"], support.x, parts=True)
    e = jnp.where(support.mask, support.y - p["pred"], 0.0)
    return p["q"], e

  def encode(enc_params, q, e, support: Batch, **kw):
    if name == "prototype":
      return enc.apply(enc_params, q, e, support.mask, support.y)
    return enc.apply(enc_params, q, e, support.mask, **kw)

  def init(rng, example: Episode, ctx: FitContext):
    t = jax.tree.map(lambda a: a[0], example)
    k_model, k_enc = jax.random.split(rng)
    meta = {"model": init_jit(model, k_model, t.support.x)}
    q, e = read(meta, t.support)
    args = (q, e, t.support.mask) + ((t.support.y,) if name == "prototype" else ())
    meta["enc"] = enc.init(k_enc, *args)
    return meta

  def adapt(meta, support: Batch):
    q, e = read(meta, support)
    dp, db = encode(meta["enc"], q, e, support)
    return {"dp": dp, "db": db}

  def predict(meta, state, x):
    p = model.apply(meta["model"], x, parts=True)
    return p["pred"] + p["alpha"] * (p["q"] @ state["dp"] + state["db"])

  def task_loss(meta, ep: Episode, rng):
    if name == "neural_process" and latent:
      q, e = read(meta, ep.support)
      both = concat_batches(ep.support, ep.query)
      qb, eb = read(meta, both)
      mu0, s0 = encode(meta["enc"], q, e, ep.support, stats_only=True)
      mu1, s1 = encode(meta["enc"], qb, eb, both, stats_only=True)
      z = mu1 + s1 * jax.random.normal(rng, mu1.shape)
      dp, db = encode(meta["enc"], q, e, ep.support, z=z)
      pred = predict(meta, {"dp": dp, "db": db}, ep.query.x)
      kl = _gaussian_kl(mu1, s1, mu0, s0)
      return loss_fn(pred, ep.query.y, ep.query.mask) + kl_weight * kl
    return loss_fn(predict(meta, adapt(meta, ep.support), ep.query.x), ep.query.y, ep.query.mask)

  return Learner(
    name=name, family=family, init=init, adapt=adapt, predict=predict, meta_loss=_batched(task_loss), link=link
  )
