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

With the cf and hybrid models (`make_factor_set_learner`) the same four learners infer the
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

from metarec_jax.data.schema import FieldSpec
from metarec_jax.learners.base import Batch, Episode, FitContext, Learner, concat_batches, loss_and_link
from metarec_jax.models.content import Embeddings

SET_LEARNERS = ("neural_process", "in_context", "prototype", "matching")
RATING_LEVELS = (1.0, 2.0, 3.0, 4.0, 5.0)  # default prototype levels (1-5 stars)


def _masked_mean(v, mask):
  w = mask.astype(v.dtype)[..., None]
  return (v * w).sum(-2) / jnp.maximum(w.sum(-2), 1.0)


def _gaussian_kl(mu_q, sigma_q, mu_p, sigma_p):
  """KL(N(mu_q, sigma_q^2) || N(mu_p, sigma_p^2)), summed over dimensions."""
  return (jnp.log(sigma_p / sigma_q) + (sigma_q ** 2 + (mu_q - mu_p) ** 2) / (2 * sigma_p ** 2) - 0.5).sum()


def _half_gap(levels) -> float:
  """A label belongs to a level within half the smallest gap between levels."""
  return 0.5 * float(min(b - a for a, b in zip(sorted(levels), sorted(levels)[1:]))) if len(levels) > 1 else 0.5


def _attend(q, k, v, mask, scale):
  logits = (q @ k.T) * scale
  logits = jnp.where(mask[None, :], logits, -1e9)
  w = jax.nn.softmax(logits, axis=-1) * (mask.any())
  return w @ v


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
    return {"r": r, "keys": self.key_proj(e), "values": s, "mask": mask, "z_mu": mu,
            "z_sigma": 0.1 + 0.9 * nn.sigmoid(raw)}

  def decode(self, state, qx, z=None):
    e, bias = self.pair(qx)
    att = _attend(self.key_proj(e), state["keys"], state["values"], state["mask"], self.width ** -0.5)
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
    self.base = nn.Sequential([nn.Dense(self.width), nn.relu, nn.Dense(1, bias_init=nn.initializers.constant(self.output_bias))])
    self.log_temp = self.param("log_temp", nn.initializers.zeros, ())

  def _baseline(self, x):
    e, bias = self.pair(x)
    return e, self.base(e)[..., 0] + bias

  def encode(self, x, y, mask):
    e, b = self._baseline(x)
    return {"keys": self.metric(e), "resid": y - b, "mask": mask}

  def decode(self, state, qx):
    e, b = self._baseline(qx)
    att = _attend(self.metric(e), state["keys"], state["resid"][:, None], state["mask"],
                  jnp.exp(self.log_temp) / jnp.sqrt(self.width))
    return b + att[:, 0]


def _batched(task_loss):
  """meta_loss: the mean of `task_loss(meta, episode, rng)` vmapped over the task axis."""

  def meta_loss(meta, episodes: Episode, rng):
    T = episodes.query.y.shape[0]
    loss = jax.vmap(task_loss, in_axes=(None, 0, 0))(meta, episodes, jax.random.split(rng, T)).mean()
    return loss, {"loss": loss}

  return meta_loss


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
        jnp.concatenate([q, e[..., None]], -1))
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
          nn.LayerNorm(name=f"norm1_{i}")(h), mask=att_mask[None])
      h = h + nn.Sequential([nn.Dense(2 * self.width), nn.relu, nn.Dense(self.width)], name=f"mlp_{i}")(
          nn.LayerNorm(name=f"norm2_{i}")(h))
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


def make_factor_set_learner(name: str, model, *, kl_weight: float = 0.1, latent: bool = False,
                            width: int = 64, loss: str = "mse",
                            levels: tuple[float, ...] = RATING_LEVELS) -> Learner:
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
    meta = {"model": model.init(k_model, t.support.x)}
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

  return Learner(name=name, family=family, init=init, adapt=adapt, predict=predict,
                 meta_loss=_batched(task_loss), link=link)


def make_set_learner(name: str, model, *, kl_weight: float = 0.1, latent: bool = False, width: int = 64,
                     loss: str = "mse", levels: tuple[float, ...] = RATING_LEVELS) -> Learner:
  """Builds a model-based or metric-based learner: on the content model's fields, or on the
  cf / hybrid model's user vector (`make_factor_set_learner`)."""
  if getattr(model, "kind", None) in ("cf", "hybrid"):
    return make_factor_set_learner(name, model, kl_weight=kl_weight, latent=latent, width=width, loss=loss,
                                   levels=levels)
  loss_fn, link = loss_and_link(loss)
  kw = dict(fields=tuple(model.fields), embed_dim=model.embed_dim, width=width)
  if name == "neural_process":
    net = NeuralProcess(latent=latent, output_bias=model.output_bias, **kw)
  elif name == "in_context":
    net = InContext(output_bias=model.output_bias, **kw)
  elif name == "prototype":
    net = Prototype(levels=tuple(levels), logit=loss == "bce", **kw)
  elif name == "matching":
    net = Matching(output_bias=model.output_bias, **kw)
  else:
    raise ValueError(f"Unsupported set learner: {name!r}; choose one of {', '.join(SET_LEARNERS)}")
  family = "metric" if name in ("prototype", "matching") else "model"

  def init(rng, example: Episode, ctx: FitContext):
    t = jax.tree.map(lambda a: a[0], example)
    return {"model": net.init(rng, t.support.x, t.support.y, t.support.mask, t.query.x)}

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

  return Learner(name=name, family=family, init=init, adapt=adapt, predict=predict,
                 meta_loss=_batched(task_loss), link=link)
