"""Every episode learner of the rating protocol (learners/registry.py) as a ranker: meta-trained
for ranking on the training users' positives with sampled negatives, then scoring the whole
catalogue for a held-out user from their folded-in items.

A ranking episode is one training user: their positives in random order, the first
round(0.8 n) (at most `support_size`) the support, the next (at most `query_size`) the query.
Negatives are drawn uniformly: the support gets as many as it has positives, from the items not
in the support (at test time nothing else is known); the query gets `QUERY_NEGATIVES` of the
user's non-positives (`--ranking_loss=bce`: as many as its positives). Labels are 1 / 0. The loss
(`--ranking_loss`) is either the multinomial log-likelihood of the positives under a softmax over
a side's items (Mult-VAE's loss over a sampled catalogue) or binary cross-entropy on logits
(the default), inside the support (MAML's inner loop, Meta-SGD's, ANIL's; read as a labelled set by the
neural process, the in-context transformer, prototypes and matching) and on the query (the
meta-objective). Episodes are drawn on the device in the jitted step, afresh every
step. A held-out user's support is their folded-in items (a random `support_size` of them when
there are more; every item with `--support_cap`) plus as many negatives, drawn from the items
not folded in by a key hashed from the folded-in set, so a user's list does not depend on the
batch they are scored in. Their scores are the adapted learner's logits over the catalogue.

The models read the item-side fields only (the catalogue's features and an id per item), since
a held-out user is nothing but their folded-in items here, as for the matrix rankers.
`pooled` (the same network trained on pooled pairs, no adaptation) is the network given the
same inputs that adaptation is measured against.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metarec_jax import runtime
from metarec_jax.data.episodes import featurize_episodes
from metarec_jax.data.features import ITEM_ID_FIELD, featurize
from metarec_jax.data.schema import VECTOR_KINDS, FieldSpec
from metarec_jax.labels import LabelSpec
from metarec_jax.learners import Batch, FitContext, create_learner, get_spec, names
from metarec_jax.ranking.baselines import RankerSpec

LABEL = LabelSpec("binary", scale=(0.0, 1.0), threshold=1.0)
SUPPORT_SIZE = 64  # support positives read at most (as many negatives again)
QUERY_SIZE = 16  # query positives per training episode
QUERY_NEGATIVES = 256  # query negatives per training episode under the softmax loss
SCORE_CHUNK = 16  # users adapted and scored at a time inside a rank chunk


def episode_learners() -> tuple[str, ...]:
  """The registered learners that rank this way: every meta-learner and the pooled network."""
  return names(lambda s: s.meta_learner or (s.trained and s.source == "train" and s.baseline))


def item_tables(data) -> tuple[tuple[FieldSpec, ...], dict[str, np.ndarray]]:
  """The model's fields and tables: the catalogue's item fields plus an id per item (1..I; 0 is
  never used, as every catalogue item has training positives)."""
  fields = tuple(data.item_fields) + (FieldSpec(ITEM_ID_FIELD, "categorical", data.n_items + 1),)
  tables = {
    f.name: np.asarray(data.item_tables[f.name], np.float32 if f.kind in VECTOR_KINDS else np.int32)
    for f in data.item_fields
  }
  tables[ITEM_ID_FIELD] = np.arange(1, data.n_items + 1, dtype=np.int32)
  return fields, tables


def _order(key, member):
  """Item indices of `member` [I] bool first, in random order (the rest after them)."""
  return jnp.argsort(jnp.where(member, jax.random.uniform(key, member.shape), 2.0))


def _draw(key, candidates, n: int, count):
  """n items drawn uniformly without replacement from `candidates` [I] bool; the first `count`
  are kept ([n] indices, [n] mask)."""
  _, idx = jax.lax.top_k(jnp.where(candidates, jax.random.uniform(key, candidates.shape), -1.0), n)
  return idx, (jnp.arange(n) < count) & candidates[idx]


def _side(pos_idx, pos_mask, neg_idx, neg_mask):
  items = jnp.concatenate([pos_idx, neg_idx])
  y = jnp.concatenate([jnp.ones(pos_idx.shape), jnp.zeros(neg_idx.shape)])
  return items, y, jnp.concatenate([pos_mask, neg_mask])


def support_arrays(key, row, support_size: int):
  """A held-out user's support from their folded-in row [I]: (items, labels, mask) [2 * size]."""
  n = row.sum().astype(jnp.int32)
  k1, k2 = jax.random.split(key)
  pos = _order(k1, row > 0)[:support_size]
  pos_mask = jnp.arange(support_size) < n
  neg, neg_mask = _draw(k2, row == 0, support_size, jnp.minimum(n, support_size))
  return _side(pos, pos_mask, neg, neg_mask)


def train_episode(key, row, support_size: int, query_size: int, cap: int | None, query_negatives: int | None = None):
  """One training user's ranking episode from their positives row [I] (module docstring)."""
  n = row.sum().astype(jnp.int32)
  k1, k2, k3 = jax.random.split(key, 3)
  order = _order(k1, row > 0)
  n_s = jnp.clip(jnp.round(0.8 * n).astype(jnp.int32), 1, support_size if cap is None else min(cap, support_size))
  n_q = jnp.clip(n - n_s, 0, query_size)
  s_pos = order[:support_size]
  s_mask = jnp.arange(support_size) < n_s
  q_pos = jnp.take(order, n_s + jnp.arange(query_size), mode="clip")
  q_mask = jnp.arange(query_size) < n_q
  in_support = jnp.zeros(row.shape, bool).at[s_pos].max(s_mask)
  s_neg, s_neg_mask = _draw(k2, ~in_support, support_size, n_s)
  if query_negatives is None:
    q_neg, q_neg_mask = _draw(k3, row == 0, query_size, n_q)
  else:
    q_neg, q_neg_mask = _draw(k3, row == 0, query_negatives, query_negatives)
  return _side(s_pos, s_mask, s_neg, s_neg_mask), _side(q_pos, q_mask, q_neg, q_neg_mask)


def _row_key(key, row):
  """A key that depends only on the set of items in `row` [I] (uint32 hash of their indices)."""
  h = jnp.where(row > 0, jnp.arange(row.shape[0], dtype=jnp.uint32) * jnp.uint32(2654435761), jnp.uint32(0))
  return jax.random.fold_in(key, jnp.sum(h, dtype=jnp.uint32))


@dataclasses.dataclass
class EpisodicRanker:
  """Learner `name` bound to a run's Config and ranking data: `spec()` is its RankerSpec."""

  name: str
  config: object
  data: object

  def __post_init__(self):
    from metarec_jax.setup import learner_options, model_of

    c = self.config
    self.fields, tables = item_tables(self.data)
    self.tables = {k: jnp.asarray(v) for k, v in tables.items()}
    self.model = model_of(c, self.fields, 0.0)  # balanced positives and negatives: logit 0
    self.learner = create_learner(self.name, self.model, **learner_options(c, c.ranking_loss, LABEL.levels()))
    n = self.data.n_items
    self.all_items = jax.tree.map(lambda a: a[0], featurize(self.tables, jnp.zeros(1, jnp.int32), jnp.arange(n)[None]))
    self.score_key = jax.random.key(c.seed + 7919)
    # a small catalogue: at most half of it positives on a side, so there are negatives to draw
    self.support_size, self.query_size = min(SUPPORT_SIZE, n // 2), max(1, min(QUERY_SIZE, n // 4))
    self.query_negatives = None if c.ranking_loss == "bce" else min(QUERY_NEGATIVES, n // 2)

  def episodes(self, key, rows, cap=None):
    """Featurised ranking episodes of training rows [B, I]."""
    keys = jax.random.split(key, rows.shape[0])
    (si, sy, sm), (qi, qy, qm) = jax.vmap(
      lambda k, r: train_episode(k, r, self.support_size, self.query_size, cap, self.query_negatives)
    )(keys, rows)
    ep = {
      "user": jnp.zeros(rows.shape[0], jnp.int32),
      "support_item": si,
      "support_rating": sy,
      "support_mask": sm,
      "query_item": qi,
      "query_rating": qy,
      "query_mask": qm,
    }
    return featurize_episodes(self.tables, ep)

  def example(self, rows):
    return self.episodes(jax.random.key(0), jnp.asarray(rows))

  def init(self, x: np.ndarray):
    c = self.config
    users, items = np.nonzero(x)
    ctx = FitContext.of(
      self.model,
      self.fields,
      self.data.n_items,
      (users.astype(np.int32), items.astype(np.int32), np.ones(len(users), np.float32)),
      tables={k: np.asarray(v) for k, v in self.tables.items()},
      binary_labels=True,
    )
    return self.learner.init(jax.random.key(c.seed), self.example(x[: min(len(x), 8)]), ctx)

  def score(self, params, s):
    """Logits [U, I] of folded-in rows s [U, I]: each user adapted to their support."""
    learner, all_items = self.learner, self.all_items

    def one(row):
      items, y, mask = support_arrays(_row_key(self.score_key, row), row, self.support_size)
      x = jax.tree.map(lambda t: t[items], all_items)
      state = learner.adapt(params, Batch(x, y, mask))
      return learner.predict(params, state, all_items)

    U = s.shape[0]
    c = SCORE_CHUNK if U % SCORE_CHUNK == 0 else 1
    out = jax.lax.map(jax.vmap(one), s.reshape(U // c, c, -1))
    return out.reshape(U, -1)

  def fit(self, x, options, val=None):
    """Adam (--outer_lr) on meta-batches of --meta_batch_size training users, `epochs` epochs,
    validation nDCG@100 every `val_every` epochs (the best parameters kept; --patience epochs
    without a gain stop it)."""
    c = self.config
    x = np.asarray(x, np.float32)
    cap = options.get("support_cap")
    params = self.init(x)
    opt = optax.adam(c.outer_lr)
    state = opt.init(params)
    xd = jnp.asarray(x)
    learner = self.learner

    @jax.jit
    def step(params, state, idx, key):
      k1, k2 = jax.random.split(key)
      ep = self.episodes(k1, xd[idx], cap)
      (loss, _), grads = jax.value_and_grad(learner.meta_loss, has_aux=True)(params, ep, k2)
      updates, state = opt.update(grads, state, params)
      return optax.apply_updates(params, updates), state, loss

    n_users = len(x)
    batch = min(c.meta_batch_size, n_users)
    rng = np.random.default_rng([c.seed, 53])
    key = jax.random.key(c.seed + 3)
    best, best_val, bad = params, -np.inf, 0
    epochs, every = options.get("epochs", c.epochs), options.get("val_every", 2)
    for epoch in range(1, epochs + 1):
      perm = rng.permutation(n_users)
      for b in range(n_users // batch):
        key, sub = jax.random.split(key)
        params, state, _ = step(params, state, jnp.asarray(perm[b * batch : (b + 1) * batch]), sub)
      if val is not None and (epoch % every == 0 or epoch == epochs):
        v = val(params)
        if v > best_val:
          best, best_val, bad = runtime.copy_tree(params), v, 0
        else:
          bad += 1
          if bad * every >= c.patience:
            break
    return best if val is not None else params

  def spec(self) -> RankerSpec:
    unadapted = None
    if get_spec(self.name).inner_loop and self.config.inner_steps > 0:
      unadapted = EpisodicRanker(self.name, dataclasses.replace(self.config, inner_steps=0), self.data).score
    link = "sigmoid" if self.config.ranking_loss == "bce" else "softmax"
    return RankerSpec(self.name, get_spec(self.name).family, self.fit, self.score, link=link, unadapted=unadapted)
