"""Model-based and metric-based learners: the support set is read, never trained on.

Each is a flax.linen module with two methods, `encode(support_x, y, mask) -> task_state`
and `decode(task_state, query_x) -> [Q] ratings`, so the learner's `adapt` and `predict`
are two pure `apply` calls. Every (user, item) pair is first embedded by the content
model's field embeddings, so these learners see the same features as MAML.

- neural_process (TaNP-style): pairs (pair embedding, rating) -> MLP -> masked mean (the
  task representation r) plus query-specific dot-product attention over the support;
  optional latent z ~ N(mu(r), sigma(r)) with a KL term (posterior from support+query,
  prior from the support; evaluation uses the mean); the decoder is FiLM-modulated by r.
- in_context: a small transformer over [support tokens; query tokens]. A support token is
  the pair embedding plus a rating embedding; a query token carries a learned "unknown
  rating" vector. Every token attends to the valid support tokens and to itself.
- prototype: one prototype per rating level (mean embedding of the support pairs with that
  rating, falling back to a learned prototype when the level is absent); the query's
  prediction is the softmax(-distance)-weighted mean of the levels.
- matching: the query's prediction is a learned per-pair baseline plus an attention-weighted
  average of the support's residuals under a learned metric.

On the cf and hybrid models the same four learners are in learners/factor_set.py.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from metarec_jax import runtime
from metarec_jax.data.schema import FieldSpec
from metarec_jax.learners.base import Batch, Episode, FitContext, Learner, concat_batches, loss_and_link
from metarec_jax.learners.factor_set import make_factor_set_learner
from metarec_jax.learners.registry import LearnerSpec, register
from metarec_jax.learners.set_common import (  # noqa: F401 (RATING_LEVELS, SET_LEARNERS re-exported)
  RATING_LEVELS,
  SET_LEARNERS,
  _attend,
  _batched,
  _gaussian_kl,
  _half_gap,
  _masked_mean,
)
from metarec_jax.models.content import Embeddings
from metarec_jax.models import init_jit


class SetModel(nn.Module):
  """Base of the set learners' networks: `encode` the support, `decode` a query."""

  def encode(self, x, y, mask):
    raise NotImplementedError

  def decode(self, state, qx):
    raise NotImplementedError

  def __call__(self, x, y, mask, qx):
    return self.decode(self.encode(x, y, mask), qx)


class PairEncoder(nn.Module):
  """(user, item) features -> [..., width] via the field embeddings and one dense layer."""

  fields: tuple[FieldSpec, ...]
  embed_dim: int
  width: int

  @nn.compact
  def __call__(self, x):
    h, bias = Embeddings(self.fields, self.embed_dim, linear=True, name="embed")(x)
    return nn.relu(nn.Dense(self.width, name="pair")(h)), bias


class NeuralProcess(SetModel):
  fields: tuple[FieldSpec, ...]
  embed_dim: int = 32
  width: int = 64
  latent: bool = False
  output_bias: float = 0.0

  def setup(self):
    self.pair = PairEncoder(self.fields, self.embed_dim, self.width)
    self.enc = nn.Sequential([nn.Dense(self.width), nn.relu, nn.Dense(self.width)])
    self.key_proj = nn.Dense(self.width)
    self.stats = nn.Dense(2 * self.width)
    self.film = nn.Dense(2 * self.width)
    self.dec_in = nn.Dense(self.width)
    self.dec_out = nn.Dense(1, bias_init=nn.initializers.constant(self.output_bias))

  def encode(self, x, y, mask):
    e, _ = self.pair(x)
    s = self.enc(jnp.concatenate([e, (y[..., None] - self.output_bias)], -1))
    r = _masked_mean(s, mask)
    mu, raw = jnp.split(self.stats(r), 2, -1)
    return {
      "r": r,
      "keys": self.key_proj(e),
      "values": s,
      "mask": mask,
      "z_mu": mu,
      "z_sigma": 0.1 + 0.9 * nn.sigmoid(raw),
    }

  def decode(self, state, qx, z=None):
    e, bias = self.pair(qx)
    att = _attend(self.key_proj(e), state["keys"], state["values"], state["mask"], self.width**-0.5)
    task = state["r"] + (state["z_mu"] if z is None else z) if self.latent else state["r"]
    gamma, beta = jnp.split(self.film(task), 2, -1)
    h = nn.relu(self.dec_in(jnp.concatenate([e, att], -1)))
    h = h * (1.0 + gamma) + beta
    return self.dec_out(nn.relu(h))[..., 0] + bias


class InContext(SetModel):
  fields: tuple[FieldSpec, ...]
  embed_dim: int = 32
  width: int = 64
  layers: int = 2
  heads: int = 4
  output_bias: float = 0.0

  def setup(self):
    self.pair = PairEncoder(self.fields, self.embed_dim, self.width)
    self.rating = nn.Dense(self.width)
    self.unknown = self.param("unknown_rating", nn.initializers.normal(0.02), (self.width,))
    self.attn = [nn.MultiHeadDotProductAttention(num_heads=self.heads) for _ in range(self.layers)]
    self.mlp = [nn.Sequential([nn.Dense(2 * self.width), nn.relu, nn.Dense(self.width)]) for _ in range(self.layers)]
    self.norm1 = [nn.LayerNorm() for _ in range(self.layers)]
    self.norm2 = [nn.LayerNorm() for _ in range(self.layers)]
    self.out = nn.Dense(1, bias_init=nn.initializers.constant(self.output_bias))

  def encode(self, x, y, mask):
    e, _ = self.pair(x)
    return {"tokens": e + self.rating((y[..., None] - self.output_bias)), "mask": mask}

  def decode(self, state, qx):
    e, bias = self.pair(qx)
    S, Q = state["tokens"].shape[0], e.shape[0]
    h = jnp.concatenate([state["tokens"], e + self.unknown], 0)
    keys_ok = jnp.concatenate([state["mask"], jnp.zeros((Q,), bool)])
    mask = keys_ok[None, :] | jnp.eye(S + Q, dtype=bool)
    for attn, mlp, n1, n2 in zip(self.attn, self.mlp, self.norm1, self.norm2):
      h = h + attn(n1(h), mask=mask[None])
      h = h + mlp(n2(h))
    return self.out(h[S:])[..., 0] + bias


class Prototype(SetModel):
  fields: tuple[FieldSpec, ...]
  embed_dim: int = 32
  width: int = 64
  levels: Sequence[float] = RATING_LEVELS
  logit: bool = False  # binary labels (levels 0, 1): output the logit of level 1

  def setup(self):
    self.pair = PairEncoder(self.fields, self.embed_dim, self.width)
    self.proj = nn.Dense(self.width)
    self.fallback = self.param("fallback", nn.initializers.normal(0.1), (len(self.levels), self.width))
    self.log_temp = self.param("log_temp", nn.initializers.zeros, ())

  def encode(self, x, y, mask):
    f = self.proj(self.pair(x)[0])
    levels = jnp.asarray(self.levels)
    member = mask[:, None] & (jnp.abs(y[:, None] - levels[None, :]) < _half_gap(self.levels))  # [S, L]
    counts = member.sum(0)
    protos = (member.T.astype(f.dtype) @ f) / jnp.maximum(counts, 1)[:, None]
    return {"protos": jnp.where(counts[:, None] > 0, protos, self.fallback)}

  def decode(self, state, qx):
    f = self.proj(self.pair(qx)[0])
    d = ((f[:, None, :] - state["protos"][None]) ** 2).sum(-1)
    if self.logit:  # log p(level 1) - log p(level 0) of the softmax below
      return (d[:, 0] - d[:, 1]) * jnp.exp(self.log_temp)
    w = jax.nn.softmax(-d * jnp.exp(self.log_temp), axis=-1)
    return w @ jnp.asarray(self.levels)


class Matching(SetModel):
  fields: tuple[FieldSpec, ...]
  embed_dim: int = 32
  width: int = 64
  output_bias: float = 0.0

  def setup(self):
    self.pair = PairEncoder(self.fields, self.embed_dim, self.width)
    self.metric = nn.Dense(self.width)
    self.base = nn.Sequential(
      [nn.Dense(self.width), nn.relu, nn.Dense(1, bias_init=nn.initializers.constant(self.output_bias))]
    )
    self.log_temp = self.param("log_temp", nn.initializers.zeros, ())

  def _baseline(self, x):
    e, bias = self.pair(x)
    return e, self.base(e)[..., 0] + bias

  def encode(self, x, y, mask):
    e, b = self._baseline(x)
    return {"keys": self.metric(e), "resid": y - b, "mask": mask}

  def decode(self, state, qx):
    e, b = self._baseline(qx)
    att = _attend(
      self.metric(e),
      state["keys"],
      state["resid"][:, None],
      state["mask"],
      jnp.exp(self.log_temp) / jnp.sqrt(self.width),
    )
    return b + att[:, 0]


def make_set_learner(
  name: str,
  model,
  *,
  kl_weight: float = 0.1,
  latent: bool = False,
  width: int = 64,
  loss: str = "mse",
  levels: tuple[float, ...] = RATING_LEVELS,
) -> Learner:
  """Builds a model-based or metric-based learner: on the content model's fields, or on the
  cf / hybrid model's user vector (`make_factor_set_learner`)."""
  if getattr(model, "kind", None) in ("cf", "hybrid"):
    return make_factor_set_learner(
      name, model, kl_weight=kl_weight, latent=latent, width=width, loss=loss, levels=levels
    )
  loss_fn, link = loss_and_link(loss)
  kw = dict(fields=tuple(model.fields), embed_dim=model.embed_dim, width=width)
  if name == "neural_process":
    net = NeuralProcess(latent=latent, output_bias=model.output_bias, **kw)
  elif name == "in_context":
    net = InContext(output_bias=model.output_bias, **kw)
  elif name == "prototype":
    net = Prototype(levels=tuple(levels), logit=loss in ("bce", "softmax"), **kw)
  elif name == "matching":
    net = Matching(output_bias=model.output_bias, **kw)
  else:
    raise ValueError(f"Unsupported set learner: {name!r}; choose one of {', '.join(SET_LEARNERS)}")
  family = "metric" if name in ("prototype", "matching") else "model"

  def init(rng, example: Episode, ctx: FitContext):
    t = jax.tree.map(lambda a: a[0], example)
    return {"model": init_jit(net, rng, t.support.x, t.support.y, t.support.mask, t.query.x)}

  def adapt(meta, support: Batch):
    return net.apply(meta["model"], support.x, support.y, support.mask, method="encode")

  def predict(meta, state, x):
    return net.apply(meta["model"], state, x, method="decode")

  def task_loss(meta, ep: Episode, rng):
    if name == "neural_process" and latent:
      prior = adapt(meta, ep.support)
      post = adapt(meta, concat_batches(ep.support, ep.query))
      z = post["z_mu"] + post["z_sigma"] * jax.random.normal(rng, post["z_mu"].shape)
      pred = net.apply(meta["model"], prior, ep.query.x, z, method="decode")
      kl = _gaussian_kl(post["z_mu"], post["z_sigma"], prior["z_mu"], prior["z_sigma"])
      return loss_fn(pred, ep.query.y, ep.query.mask) + kl_weight * kl
    return loss_fn(predict(meta, adapt(meta, ep.support), ep.query.x), ep.query.y, ep.query.mask)

  return Learner(
    name=name, family=family, init=init, adapt=adapt, predict=predict, meta_loss=_batched(task_loss), link=link
  )


def warm_start_set(params, pooled):
  """--init=pooled for the set learners. On the cf / hybrid models their "model" is the pooled
  network itself, which they take whole (the set encoder stays as initialised: no change of
  the user vector). On the content model they embed a (user, item) pair with the same field
  tables, so they take its embedding tables."""
  same_network = jax.tree.structure(params["model"]) == jax.tree.structure(pooled["model"]) and jax.tree.map(
    jnp.shape, params["model"]
  ) == jax.tree.map(jnp.shape, pooled["model"])
  if same_network:
    return {**params, "model": runtime.copy_tree(pooled["model"])}
  src = pooled["model"]["params"]["embed"]
  dst = params["model"]["params"]["pair"]["embed"]
  if jax.tree.map(jnp.shape, src) != jax.tree.map(jnp.shape, dst):
    raise ValueError("pooled embeddings do not match the pair encoder's tables (is --linear on?)")
  inner = {
    **params["model"]["params"],
    "pair": {**params["model"]["params"]["pair"], "embed": runtime.copy_tree(src)},
  }
  return {**params, "model": {**params["model"], "params": inner}}


for _name in SET_LEARNERS:
  register(
    LearnerSpec(
      name=_name,
      family="metric" if _name in ("prototype", "matching") else "model",
      warm_start=warm_start_set,
      meta_learner=True,
      build=lambda model, *, loss="mse", levels=RATING_LEVELS, kl_weight=0.1, latent=False, width=64, _name=_name, **_: (
        make_set_learner(_name, model, loss=loss, levels=levels, kl_weight=kl_weight, latent=latent, width=width)
      ),
    )
  )
