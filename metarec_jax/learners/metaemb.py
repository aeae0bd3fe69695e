"""MetaEmb (Pan et al., SIGIR 2019, "Warm Up Cold-start Advertisements: Improving CTR Predictions
via Learning to Learn ID Embeddings"), registered as `metaemb`.

A generator maps a new item's content (the embeddings of its feature fields, from the frozen
base network) to the item's ID embedding. It is meta-trained on simulated cold items: a training
item with at least 2 K training ratings is one task; its id is hidden and

  phi    = g(content)                        (the generated row: embedding and per-id bias)
  L_a    = loss of K of its ratings with phi (cold start)
  phi'   = phi - inner_lr * dL_a / dphi      (one warm-up step, differentiated through)
  L_b    = loss of K other ratings with phi'
  L_meta = ALPHA L_a + (1 - ALPHA) L_b       (the paper's alpha = 0.1)

Only the generator learns (the base is the pooled network, `--init=pooled`, kept frozen). At
test time an item with the unknown id (a new item) gets g(content) instead of the shared unknown
row; known items are scored exactly as by the base. The generator starts at the unknown row
(its output layer is zero), so training starts from the pooled network's predictions.

The item tasks are built from the training ratings in `init` (the learner's `FitContext`) and
drawn on the device at every step, as many as the meta-batch has user tasks; the user episodes
themselves are not read by the meta-loss. Content model only, and not stacked on a fold-in
(the item tasks' labels are ratings, not a base's residual).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from metarec_jax.data.features import ITEM_ID_FIELD, featurize, leave_own_out
from metarec_jax.learners.base import Batch, Episode, FitContext, Learner, loss_and_link
from metarec_jax.learners.maml import copy_network
from metarec_jax.learners.registry import LearnerSpec, register
from metarec_jax.models.content import EMBED_SCOPE, field_embeddings, param_name
from metarec_jax.models import init_jit

K = 10  # ratings in each of an item task's two batches
ALPHA = 0.1
KEPT = 256  # ratings of an item kept on the device (a random subset) to draw tasks from


class Generator(nn.Module):
  """content [..., F] -> the ID row's offset from the unknown row [..., width]."""

  width: int
  hidden: int = 64

  @nn.compact
  def __call__(self, h):
    h = nn.relu(nn.Dense(self.hidden, name="hidden")(h))
    return nn.Dense(self.width, kernel_init=nn.initializers.zeros, name="out")(h)


def item_tasks(ctx: FitContext, seed: int, k: int = K, kept: int = KEPT) -> dict[str, np.ndarray]:
  """The simulated cold items: every training item with >= 2k ratings; per item up to `kept` of
  its ratings (a seeded random subset): {"item" [E], "user" / "rating" [E, kept], "mask"}."""
  rng = np.random.default_rng([seed, 31])
  u, i, r = ctx.train_users, ctx.train_items, ctx.train_ratings
  order = np.lexsort((rng.random(len(i)), i))
  u, i, r = u[order], i[order], r[order]
  counts = np.bincount(i, minlength=ctx.n_items)
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  eligible = np.flatnonzero(counts >= 2 * k)
  if not len(eligible):
    raise ValueError(f"metaemb: no training item has the {2 * k} ratings an item task needs")
  n = np.minimum(counts[eligible], kept)
  pos = starts[eligible][:, None] + np.arange(kept)[None, :]
  mask = np.arange(kept)[None, :] < n[:, None]
  pos = np.where(mask, pos, 0)
  return {
    "item": eligible.astype(np.int32),
    "user": np.where(mask, u[pos], 0).astype(np.int32),
    "rating": np.where(mask, r[pos], 0).astype(np.float32),
    "mask": mask,
  }


def make_metaemb(model, *, inner_lr: float = 0.1, loss: str = "mse", seed: int = 0, hidden: int = 64, **_) -> Learner:
  loss_fn, link = loss_and_link(loss)
  fields = {s.name: s for s in model.fields}
  if ITEM_ID_FIELD not in fields:
    raise ValueError("metaemb generates item-id embeddings: it needs the item id field (--item_id_feature)")
  id_spec = fields[ITEM_ID_FIELD]
  content_specs = [s for s in model.fields if s.name.startswith("item/") and s.name != ITEM_ID_FIELD]
  width = model.embed_dim + int(model.linear)
  gen = Generator(width, hidden)
  # Set by `init` from the training context: the item tasks and the feature tables (device).
  bound: dict = {}

  def tables_of(mp):
    return mp["params"][EMBED_SCOPE]

  def content(mp, x):
    """The item's content embeddings [..., F] (frozen base tables)."""
    return field_embeddings(mp, content_specs, x, model.embed_dim, x[ITEM_ID_FIELD].shape)

  def apply_with_rows(mp, x, rows, use):
    """The base network, with pair j's item-id row replaced by rows[j] where use[j]."""
    ids = x[ITEM_ID_FIELD]
    table = tables_of(mp)[param_name(id_spec)]
    n = ids.size
    ext = jnp.concatenate([table, rows.reshape(n, -1).astype(table.dtype)])
    new_ids = jnp.where(use.reshape(-1), table.shape[0] + jnp.arange(n), ids.reshape(-1)).reshape(ids.shape)
    emb = {**tables_of(mp), param_name(id_spec): ext}
    params = {**mp, "params": {**mp["params"], EMBED_SCOPE: emb}}
    spec = dataclasses.replace(id_spec, vocab_size=table.shape[0] + n)
    m = model.clone(fields=tuple(spec if s.name == ITEM_ID_FIELD else s for s in model.fields))
    return m.apply(params, {**x, ITEM_ID_FIELD: new_ids.astype(jnp.int32)})

  def generated(meta, mp, x):
    unknown = tables_of(mp)[param_name(id_spec)][0]
    return unknown + gen.apply(meta["gen"], content(mp, x))

  def init(rng, example: Episode, ctx: FitContext):
    x = jax.tree.map(lambda a: a[0], example.support.x)
    mp = init_jit(model, rng, x)
    if EMBED_SCOPE not in mp["params"]:
      raise ValueError("metaemb needs the content model (--model=content)")
    feat = content(mp, x)
    bound["tasks"] = {k: jnp.asarray(v) for k, v in item_tasks(ctx, seed).items()}
    bound["tables"] = {k: jnp.asarray(v) for k, v in (ctx.tables or {}).items()}
    return {"model": mp, "gen": init_jit(gen, jax.random.fold_in(rng, 1), feat)}

  def adapt(meta, support: Batch):
    return {}

  def predict(meta, state, x):
    mp = meta["model"]
    return apply_with_rows(mp, x, generated(meta, mp, x), x[ITEM_ID_FIELD] == 0)

  def item_loss(meta, mp, users, ratings, item):
    """One simulated cold item: its 2K ratings [2K] -> the MetaEmb loss."""
    tables = bound["tables"]
    items = jnp.full((users.shape[0], 1), item)
    y, m = ratings[:, None], jnp.ones_like(items, bool)
    x = leave_own_out(tables, featurize(tables, users, items), users, items, y, m)
    x = {k: v[:, 0] for k, v in x.items()}
    for s in model.fields:  # per-episode fields (the support similarity): none here
      if s.name not in x:
        x[s.name] = jnp.zeros((users.shape[0], s.vocab_size), jnp.float32)
    phi = generated(meta, mp, jax.tree.map(lambda a: a[:1], x))[0]
    half = lambda a, j: a[j * K : (j + 1) * K]  # noqa: E731

    def batch_loss(row, j):
      xj = jax.tree.map(lambda a: half(a, j), x)
      pred = apply_with_rows(mp, xj, jnp.broadcast_to(row, (K, row.shape[-1])), jnp.ones(K, bool))
      return loss_fn(pred, half(ratings, j), jnp.ones(K, bool))

    la, g = jax.value_and_grad(batch_loss)(phi, 0)
    lb = batch_loss(phi - inner_lr * g, 1)
    return ALPHA * la + (1 - ALPHA) * lb

  def meta_loss(meta, episodes: Episode, rng):
    if "tasks" not in bound:
      raise RuntimeError("metaemb: call init(rng, example, ctx) first; it builds the item tasks from ctx")
    tasks = bound["tasks"]
    mp = jax.lax.stop_gradient(meta["model"])
    B = episodes.support.y.shape[0]
    k_pick, k_order = jax.random.split(rng)
    pick = jax.random.randint(k_pick, (B,), 0, tasks["item"].shape[0])
    keys = jnp.where(tasks["mask"][pick], jax.random.uniform(k_order, (B, KEPT)), 2.0)
    order = jnp.argsort(keys, axis=1)[:, : 2 * K]
    users = jnp.take_along_axis(tasks["user"][pick], order, axis=1)
    ratings = jnp.take_along_axis(tasks["rating"][pick], order, axis=1)
    losses = jax.vmap(item_loss, in_axes=(None, None, 0, 0, 0))(meta, mp, users, ratings, tasks["item"][pick])
    loss = losses.mean()
    return loss, {"loss": loss}

  return Learner(
    name="metaemb", family="optimisation", init=init, adapt=adapt, predict=predict, meta_loss=meta_loss, link=link
  )


register(
  LearnerSpec(
    name="metaemb",
    family="optimisation",
    build=make_metaemb,
    warm_start=copy_network,
    meta_learner=True,
    stackable=False,
  )
)
