"""Gradient-based adaptation: MAML (second order by default), first-order MAML, and the
pooled / fine-tuned non-meta baselines that share the same inner loop.

Which parameters adapt is a boolean mask over parameter paths: "head" adapts the
decision layers only (MeLU's local update), "all" adapts the embeddings too. Embedding
tables are never adapted whole: a task gathers the rows its support uses, adapts
those, and looks its query up in them (rows the support never touched keep the
meta-learned value, exactly as a whole-table update would leave them).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

from metarec_jax.data.schema import FieldSpec
from metarec_jax.learners.base import Batch, Episode, FitContext, Learner, concat_batches, masked_mse
from metarec_jax.models.content import EMBED_SCOPE, param_name

ADAPT_MODES = ("head", "last", "all")
OUTPUT_SCOPE = "out"


def adapt_mask(params: Any, mode: str) -> Any:
  """Boolean pytree over `params`: True where the leaf adapts per task.

  "head": every decision layer (not the embeddings; MeLU's local update).
  "last": the output layer only. "all": every parameter.
  """
  if mode not in ADAPT_MODES:
    raise ValueError(f"Unsupported adapt mode: {mode!r}; choose one of {', '.join(ADAPT_MODES)}")
  flat = traverse_util.flatten_dict(params)
  rule = {"all": lambda p: True, "head": lambda p: EMBED_SCOPE not in p, "last": lambda p: OUTPUT_SCOPE in p}[mode]
  return traverse_util.unflatten_dict({p: rule(p) for p in flat})


@dataclasses.dataclass(frozen=True)
class _Local:
  """A field whose embedding rows are gathered per task (vocab larger than the task)."""

  spec: FieldSpec
  path: tuple[str, ...]


def _localized_fields(model, params, mode: str, support_x) -> list[_Local]:
  if mode != "all":
    return []
  out = []
  for spec in model.fields:
    occurrences = int(support_x[spec.name].size)
    if spec.vocab_size > occurrences:
      out.append(_Local(spec, ("params", EMBED_SCOPE, param_name(spec))))
  return out


def _gather_rows(table, ids, vocab):
  """Unique ids of one task (sorted, padded with `vocab`) and the rows they select."""
  flat = jnp.where(ids >= 0, ids, vocab).reshape(-1)
  uniq = jnp.unique(flat, size=flat.size, fill_value=vocab)
  return uniq, table[jnp.minimum(uniq, vocab - 1)]


def _local_ids(uniq, ids):
  """Positions of `ids` in the sorted `uniq`, keeping -1 padding."""
  return jnp.where(ids >= 0, jnp.searchsorted(uniq, ids), -1).astype(jnp.int32)


def make_gradient_learner(model, *, name: str, objective: str, inner_lr: float, inner_steps: int,
                          first_order: bool = False, adapt: str = "head") -> Learner:
  """objective "maml": meta-train through the inner loop. "pooled": train on all ratings
  without adaptation (inner steps then only apply at evaluation, i.e. fine-tuning)."""
  if objective not in ("maml", "pooled"):
    raise ValueError(f"objective must be 'maml' or 'pooled', got {objective!r}")
  if inner_steps < 0:
    raise ValueError(f"inner_steps must be >= 0, got {inner_steps}")
  if inner_lr < 0:
    raise ValueError(f"inner_lr must be >= 0, got {inner_lr}")
  if adapt not in ADAPT_MODES:
    raise ValueError(f"Unsupported adapt mode: {adapt!r}; choose one of {', '.join(ADAPT_MODES)}")

  def init(rng, example: Episode, ctx: FitContext):
    x = jax.tree.map(lambda a: a[0], example.support.x)
    return {"model": model.init(rng, x)}

  def split(params):
    flat = {p: jnp.asarray(v) for p, v in traverse_util.flatten_dict(params).items()}
    mask = traverse_util.flatten_dict(adapt_mask(params, adapt))
    fast = {p: v for p, v in flat.items() if mask[p]}
    return flat, fast

  def adapt_fn(meta, support: Batch):
    flat, fast = split(meta["model"])
    local = _localized_fields(model, meta["model"], adapt, support.x)
    x = dict(support.x)
    uniq = {}
    fields = list(model.fields)
    for loc in local:
      u, rows = _gather_rows(flat[loc.path], x[loc.spec.name], loc.spec.vocab_size)
      uniq[loc.spec.name] = u
      fast[loc.path] = rows
      x[loc.spec.name] = _local_ids(u, x[loc.spec.name])
      fields[fields.index(loc.spec)] = dataclasses.replace(loc.spec, vocab_size=u.shape[0])
    local_model = model.clone(fields=tuple(fields))

    def support_loss(f):
      params = traverse_util.unflatten_dict({**flat, **f})
      return masked_mse(local_model.apply(params, x), support.y, support.mask)

    def step(f, _):
      g = jax.grad(support_loss)(f)
      if first_order:
        g = jax.lax.stop_gradient(g)
      return jax.tree.map(lambda p, d: p - inner_lr * d, f, g), None

    if inner_steps:
      fast, _ = jax.lax.scan(step, fast, None, length=inner_steps)
    return {"fast": fast, "uniq": uniq}

  def predict(meta, state, x):
    flat = {p: jnp.asarray(v) for p, v in traverse_util.flatten_dict(meta["model"]).items()}
    fast = dict(state["fast"])
    x = dict(x)
    fields = list(model.fields)
    for spec in model.fields:
      if spec.name not in state["uniq"]:
        continue
      path = ("params", EMBED_SCOPE, param_name(spec))
      u = state["uniq"][spec.name]
      ids = x[spec.name]
      flat_ids = jnp.where(ids >= 0, ids, 0).reshape(-1)
      pos = jnp.minimum(jnp.searchsorted(u, flat_ids), u.shape[0] - 1)
      hit = u[pos] == flat_ids
      fast[path] = jnp.where(hit[:, None], fast[path][pos], flat[path][flat_ids])
      x[spec.name] = jnp.where(ids >= 0, jnp.arange(ids.size).reshape(ids.shape), -1).astype(jnp.int32)
      fields[fields.index(spec)] = dataclasses.replace(spec, vocab_size=ids.size)
    params = traverse_util.unflatten_dict({**flat, **fast})
    return model.clone(fields=tuple(fields)).apply(params, x)

  def task_loss(meta, ep: Episode):
    if objective == "pooled":
      both = concat_batches(ep.support, ep.query)
      return masked_mse(model.apply(meta["model"], both.x), both.y, both.mask)
    state = adapt_fn(meta, ep.support)
    return masked_mse(predict(meta, state, ep.query.x), ep.query.y, ep.query.mask)

  def meta_loss(meta, episodes: Episode, rng):
    del rng
    losses = jax.vmap(task_loss, in_axes=(None, 0))(meta, episodes)
    loss = losses.mean()
    return loss, {"loss": loss}

  family = "optimisation" if objective == "maml" else "baseline"
  return Learner(name=name, family=family, init=init, adapt=adapt_fn, predict=predict, meta_loss=meta_loss)
