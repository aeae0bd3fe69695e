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

from metarec_jax import runtime
from metarec_jax.data.schema import FieldSpec
from metarec_jax.learners.base import Batch, Episode, FitContext, Learner, concat_batches, loss_and_link
from metarec_jax.learners.registry import POOLED, REUSE, LearnerSpec, register
from metarec_jax.models.content import EMBED_SCOPE, param_name
from metarec_jax.models import init_jit

ADAPT_MODES = ("head", "last", "all")
OUTPUT_SCOPE = "out"


def adapt_mask(params: Any, mode: str, head_scopes: tuple[str, ...] | None = None) -> Any:
  """Boolean pytree over `params`: True where the leaf adapts per task.

  "head": every decision layer (not the embeddings; MeLU's local update), or, for a model
  that names its task-specific scopes (`head_scopes`, e.g. the cf model's user vector),
  those scopes. "last": the output layer only. "all": every parameter.
  """
  if mode not in ADAPT_MODES:
    raise ValueError(f"Unsupported adapt mode: {mode!r}; choose one of {', '.join(ADAPT_MODES)}")
  flat = traverse_util.flatten_dict(params)
  if head_scopes is None:
    head = lambda p: EMBED_SCOPE not in p  # noqa: E731
  else:
    head = lambda p: any(s in p for s in head_scopes)  # noqa: E731
  rule = {"all": lambda p: True, "head": head, "last": lambda p: OUTPUT_SCOPE in p}[mode]
  mask = {p: rule(p) for p in flat}
  if mode == "last" and not any(mask.values()):
    raise ValueError(
      "adapt=last adapts the output layer 'out', which this model does not have; use --adapt=head or --adapt=all"
    )
  return traverse_util.unflatten_dict(mask)


@dataclasses.dataclass(frozen=True)
class _Local:
  """A field whose embedding rows are gathered per task (vocab larger than the task)."""

  spec: FieldSpec
  path: tuple[str, ...]


def _table_path(spec: FieldSpec) -> tuple[str, ...]:
  return ("params", EMBED_SCOPE, param_name(spec))


def _rows(table, uniq, vocab):
  """Rows of `table` for a task's sorted unique ids (padding entries read the last row)."""
  return table[jnp.minimum(uniq, vocab - 1)]


def _localized_fields(model, mode: str, support_x) -> list[_Local]:
  if mode != "all":
    return []
  out = []
  for spec in model.fields:
    occurrences = int(support_x[spec.name].size)
    if spec.kind in ("categorical", "multihot") and spec.vocab_size > occurrences:
      out.append(_Local(spec, _table_path(spec)))
  return out


def _gather_rows(table, ids, vocab):
  """Unique ids of one task (sorted, padded with `vocab`) and the rows they select."""
  flat = jnp.where(ids >= 0, ids, vocab).reshape(-1)
  uniq = jnp.unique(flat, size=flat.size, fill_value=vocab)
  return uniq, _rows(table, uniq, vocab)


def _local_ids(uniq, ids):
  """Positions of `ids` in the sorted `uniq`, keeping -1 padding."""
  return jnp.where(ids >= 0, jnp.searchsorted(uniq, ids), -1).astype(jnp.int32)


OBJECTIVES = ("maml", "reptile", "pooled")
_FIRST_KERNEL = ("params", "hidden_0", "kernel")
_FIRST_BIAS = ("params", "hidden_0", "bias")


def _gram_adapt(model, variables, flat, fast, support: Batch, lr, steps, task_loss_fn):
  """The inner loop with the first decision layer (W, b) kept in the span of the support.

  With the support's encodings H fixed, an SGD step on (W, b) moves the pre-activations
  Z = H W + b by -lr (H H^T + 1) dL/dZ. So the loop carries Z and A = lr * sum of dL/dZ
  (n x k) instead of W, with the Gram matrix G = H H^T + 1 computed once, and returns
  W - H^T A, b - 1^T A: the same adapted parameters (the identity is exact; tested), but each
  step costs one n x n x k product instead of two n x d x k ones (d = 256 > n here).
  `steps` may be traced (fine-tuning's validation grid).
  """
  h, bias = model.apply(variables, support.x, stage="encode")
  flat_h = h.reshape(-1, h.shape[-1])  # every support entry (any leading shape) is one row
  gram = flat_h @ flat_h.T + (1.0 if _FIRST_BIAS in fast else 0.0)
  rest = {p: v for p, v in fast.items() if p not in (_FIRST_KERNEL, _FIRST_BIAS)}
  w, b = fast[_FIRST_KERNEL], fast.get(_FIRST_BIAS, flat.get(_FIRST_BIAS))
  z = h @ w + (0.0 if b is None else b)

  def loss(z, r):
    params = traverse_util.unflatten_dict({**flat, **r})
    return task_loss_fn(model.apply(params, (z, bias), stage="hidden"), support.y, support.mask)

  def step(carry, _):
    z, r, acc = carry
    gz, gr = jax.grad(loss, argnums=(0, 1))(z, r)
    gz = gz.reshape(-1, gz.shape[-1])
    z = z - lr * (gram @ gz).reshape(z.shape)
    return (z, {p: r[p] - lr * gr[p] for p in r}, acc + lr * gz), None

  carry = (z, rest, jnp.zeros((flat_h.shape[0], z.shape[-1]), z.dtype))
  if isinstance(steps, int):
    carry, _ = jax.lax.scan(step, carry, None, length=steps, unroll=True) if steps else (carry, None)
  else:
    carry = jax.lax.fori_loop(0, steps, lambda _, c: step(c, None)[0], carry)
  _, rest, acc = carry
  out = {**rest, _FIRST_KERNEL: w - flat_h.T @ acc}
  if _FIRST_BIAS in fast:
    out[_FIRST_BIAS] = b - acc.sum(0)
  return out


def make_gradient_learner(
  model,
  *,
  name: str,
  objective: str,
  inner_lr: float,
  inner_steps: int,
  first_order: bool = False,
  adapt: str = "head",
  learn_inner_lr: bool = False,
  loss: str = "mse",
  traced_steps: bool = False,
  encode_once: bool = True,
) -> Learner:
  """Gradient-based learners sharing one inner loop.

  objective "maml": the query loss after adaptation, differentiated through the inner loop
  (second order unless `first_order`). "reptile": the inner loop runs on the whole task and
  the meta-gradient is (theta - theta_adapted), so Adam steps towards the adapted weights.
  "pooled": all ratings without adaptation (inner steps then apply at evaluation only, which
  is fine-tuning). `learn_inner_lr` (Meta-SGD) meta-learns one inner learning rate per
  adapted parameter entry, initialised at `inner_lr`. `loss` ("mse" or "bce" on logits) is
  used in the inner loop and the outer objective alike. `traced_steps` (fine-tuning, which is
  never differentiated through its inner loop) reads the step size and count from
  `meta["adapt_options"]` when present (`with_adapt_options`), so one compiled prediction serves
  every point of a validation grid. `encode_once` (default): when no embedding adapts and the
  model splits there (the content model), the support is encoded once per task, and with a
  fixed step size the first decision layer's steps run on its pre-activations
  (`_gram_adapt`); False runs the model whole at every step (the same values; for checks).
  """
  task_loss_fn, link = loss_and_link(loss)
  if objective not in OBJECTIVES:
    raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
  if inner_steps < 0:
    raise ValueError(f"inner_steps must be >= 0, got {inner_steps}")
  if inner_lr < 0:
    raise ValueError(f"inner_lr must be >= 0, got {inner_lr}")
  if adapt not in ADAPT_MODES:
    raise ValueError(f"Unsupported adapt mode: {adapt!r}; choose one of {', '.join(ADAPT_MODES)}")

  def init(rng, example: Episode, ctx: FitContext):
    x = jax.tree.map(lambda a: a[0], example.support.x)
    meta = {"model": init_jit(model, rng, x)}
    if learn_inner_lr:
      _, fast = split(meta["model"])
      meta["inner_lr"] = traverse_util.unflatten_dict(
        {p: jnp.full(v.shape, inner_lr, v.dtype) for p, v in fast.items()}
      )
    return meta

  def split(params):
    flat = {p: jnp.asarray(v) for p, v in traverse_util.flatten_dict(params).items()}
    mask = traverse_util.flatten_dict(adapt_mask(params, adapt, getattr(model, "head_scopes", None)))
    fast = {p: v for p, v in flat.items() if mask[p]}
    return flat, fast

  def encodes_once(fast) -> bool:
    """The model encodes its input with its embeddings alone, and none of them adapts."""
    return encode_once and getattr(model, "splits_at_embeddings", False) and not any(EMBED_SCOPE in p for p in fast)

  def gram_steps(fast) -> bool:
    """Plain SGD with one step size adapts the first decision layer, over fixed embeddings
    (second order: the first-order variant stops a different gradient)."""
    return encodes_once(fast) and not learn_inner_lr and not first_order and _FIRST_KERNEL in fast

  def adapt_fn(meta, support: Batch):
    flat, fast = split(meta["model"])
    traced = traced_steps and "adapt_options" in meta
    if learn_inner_lr:
      lrs = {p: jnp.asarray(v) for p, v in traverse_util.flatten_dict(meta["inner_lr"]).items()}
    else:
      lr = meta["adapt_options"]["inner_lr"] if traced else inner_lr
      lrs = {p: lr for p in fast}
    local = _localized_fields(model, adapt, support.x)
    x = dict(support.x)
    uniq = {}
    fields = list(model.fields)
    for loc in local:
      u, rows = _gather_rows(flat[loc.path], x[loc.spec.name], loc.spec.vocab_size)
      uniq[loc.spec.name] = u
      fast[loc.path] = rows
      if learn_inner_lr:
        lrs[loc.path] = _rows(lrs[loc.path], u, loc.spec.vocab_size)
      x[loc.spec.name] = _local_ids(u, x[loc.spec.name])
      fields[fields.index(loc.spec)] = dataclasses.replace(loc.spec, vocab_size=u.shape[0])
    local_model = model.clone(fields=tuple(fields))
    if gram_steps(fast):
      lr = meta["adapt_options"]["inner_lr"] if traced else inner_lr
      steps = meta["adapt_options"]["inner_steps"] if traced else inner_steps
      return {"fast": _gram_adapt(model, meta["model"], flat, fast, support, lr, steps, task_loss_fn), "uniq": uniq}
    if encodes_once(fast):  # the embeddings stay fixed: encode the support once, not per step
      enc = model.apply(meta["model"], x, stage="encode")

      def support_loss(f):
        params = traverse_util.unflatten_dict({**flat, **f})
        return task_loss_fn(model.apply(params, enc, stage="decode"), support.y, support.mask)

    else:

      def support_loss(f):
        params = traverse_util.unflatten_dict({**flat, **f})
        return task_loss_fn(local_model.apply(params, x), support.y, support.mask)

    def step(f, _):
      g = jax.grad(support_loss)(f)
      if first_order:
        g = jax.lax.stop_gradient(g)
      return {p: f[p] - lrs[p] * g[p] for p in f}, None

    if traced:
      fast = jax.lax.fori_loop(0, meta["adapt_options"]["inner_steps"], lambda _, f: step(f, None)[0], fast)
    elif inner_steps:
      fast, _ = jax.lax.scan(step, fast, None, length=inner_steps, unroll=True)
    return {"fast": fast, "uniq": uniq}

  def predict(meta, state, x):
    flat = {p: jnp.asarray(v) for p, v in traverse_util.flatten_dict(meta["model"]).items()}
    fast = dict(state["fast"])
    x = dict(x)
    fields = list(model.fields)
    for spec in model.fields:
      if spec.name not in state["uniq"]:
        continue
      path = _table_path(spec)
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
      return task_loss_fn(model.apply(meta["model"], both.x), both.y, both.mask)
    if objective == "reptile":
      both = concat_batches(ep.support, ep.query)
      state = jax.lax.stop_gradient(adapt_fn(meta, both))
      # Gradient of 0.5 * ||theta - theta'||^2 is theta - theta' (the Reptile direction);
      # gathered embedding rows are compared row by row, so untouched rows get zero.
      flat, fast = split(meta["model"])
      for spec in model.fields:
        if spec.name in state["uniq"]:
          fast[_table_path(spec)] = _rows(flat[_table_path(spec)], state["uniq"][spec.name], spec.vocab_size)
      dist = sum(0.5 * jnp.sum((fast[p] - state["fast"][p]) ** 2) for p in fast)
      query_loss = task_loss_fn(predict(meta, state, ep.query.x), ep.query.y, ep.query.mask)
      return dist + jax.lax.stop_gradient(query_loss - dist)  # value: query loss; gradient: Reptile's
    state = adapt_fn(meta, ep.support)
    return task_loss_fn(predict(meta, state, ep.query.x), ep.query.y, ep.query.mask)

  def meta_loss(meta, episodes: Episode, rng):
    del rng
    losses = jax.vmap(task_loss, in_axes=(None, 0))(meta, episodes)
    loss = losses.mean()
    return loss, {"loss": loss}

  family = "baseline" if objective == "pooled" else "optimisation"
  return Learner(name=name, family=family, init=init, adapt=adapt_fn, predict=predict, meta_loss=meta_loss, link=link)


def copy_network(params, pooled):
  """--init=pooled for gradient learners: the whole pooled network (extra meta-parameters
  such as Meta-SGD's rates stay as initialised)."""
  return {**params, "model": runtime.copy_tree(pooled["model"])}


def _gradient_spec(name: str, objective: str, reference: str | None = None, **fixed) -> LearnerSpec:
  def build(model, *, inner_lr=0.1, inner_steps=1, adapt="head", first_order=False, loss="mse", **_):
    opts = dict(inner_lr=inner_lr, inner_steps=inner_steps, adapt=adapt, first_order=first_order, loss=loss)
    opts.update(fixed)
    return make_gradient_learner(model, name=name, objective=objective, **opts)

  return LearnerSpec(
    name=name,
    family="optimisation",
    build=build,
    warm_start=copy_network,
    inner_loop=True,
    meta_learner=True,
    first_order=fixed.get("first_order", False),
    reference=reference,
  )


# anil: MeLU's local update, the decision layers only (--adapt=last adapts the output layer only).
# The PyTorch reference (metarec_jax/torch_reference.py) implements MAML's objective with a fixed inner rate.
for _spec in (
  _gradient_spec("maml", "maml", "torch_maml"),
  _gradient_spec("fomaml", "maml", "torch_maml", first_order=True),
  _gradient_spec("metasgd", "maml", learn_inner_lr=True),
  _gradient_spec("anil", "maml", "torch_maml", adapt="head"),
  _gradient_spec("reptile", "reptile"),
):
  register(_spec)

register(
  LearnerSpec(
    name=POOLED,
    family="baseline",
    baseline=True,
    default_baseline=True,
    build=lambda model, *, adapt="head", loss="mse", **_: make_gradient_learner(
      model, name=POOLED, objective="pooled", inner_lr=0.0, inner_steps=0, adapt=adapt, loss=loss
    ),
  )
)


def with_adapt_options(params, options: dict):
  """Fine-tuning's step size and count as traced parameters (see `traced_steps`)."""
  return {
    **params,
    "adapt_options": {"inner_lr": jnp.float32(options["inner_lr"]), "inner_steps": jnp.int32(options["inner_steps"])},
  }


# The pooled network + SGD on the support, its step size and count chosen on validation.
register(
  LearnerSpec(
    name="finetune",
    family="baseline",
    baseline=True,
    default_baseline=True,
    source=REUSE,
    params_from=POOLED,
    grid=tuple({"inner_lr": lr, "inner_steps": steps} for lr in (0.003, 0.01, 0.03, 0.1, 0.3) for steps in (1, 5)),
    grid_traced=True,
    attach=with_adapt_options,
    build=lambda model, *, inner_lr=0.1, inner_steps=1, adapt="head", loss="mse", **_: make_gradient_learner(
      model,
      name="finetune",
      objective="pooled",
      inner_lr=inner_lr,
      inner_steps=inner_steps,
      adapt=adapt,
      loss=loss,
      traced_steps=True,
    ),
  )
)
