"""Meta-training and evaluation: one state pytree, pure jitted steps, device-resident episodes."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from metarec_jax import runtime, writers
from metarec_jax.labels import LABELS, LINKS, LabelSpec
from metarec_jax.checkpoint import FitCheckpoints, checkpoint_dir
from metarec_jax.data import load_dataset
from metarec_jax.data.features import (ITEM_ID_FIELD, add_cooccurrence, feature_tables, featurize, leave_own_out,
                                      support_cooc)
from metarec_jax.data.tasks import SCENARIOS, Episodes, TaskConfig, build_scenarios
from metarec_jax.learners import FitContext, Learner, create_learner
from metarec_jax.learners.baselines import TRIVIAL
from metarec_jax.learners.base import Batch, Episode
from metarec_jax.learners.foldin import FOLDIN
from metarec_jax.learners.stacked import frozen_mask, make_stacked, residual_levels, unwrap
from metarec_jax.models import create_model

BASELINES = ("global_mean", "item_mean", "support_mean", "pooled", "finetune", "bias_foldin", "als_foldin")
# Defaults that differ by dataset; a flag given on the command line wins (`with_dataset_defaults`).
# ml-1m: an epoch is 7,551 tasks (8.5x ml-100k's), so early stopping counts fewer epochs and the
# default run fits in 10 minutes on a 2-core CPU. lastfm: TaNP's cut-offs 5/7/10; no item-id
# embedding (chosen on TaNP's validation episodes: 248 training users are too few to train one);
# lastfm and hetrec-lastfm: the co-occurrence features, widths chosen on TaNP's validation episodes.
DATASET_DEFAULTS = {
    "ml-1m": {"epochs": 15, "patience": 3},
    "lastfm": {"ndcg_ks": (5, 7, 10), "item_id_feature": False, "cooc_dim": 8, "cooc_support_dim": 16},
    "hetrec-lastfm": {"ndcg_ks": (5, 7, 10), "cooc_dim": 8, "cooc_support_dim": 16},
}


def with_dataset_defaults(config: "Config", explicit=()) -> "Config":
  """`config` with its dataset's DATASET_DEFAULTS, except for the fields in `explicit`."""
  over = {k: v for k, v in DATASET_DEFAULTS.get(config.dataset, {}).items() if k not in set(explicit)}
  return dataclasses.replace(config, **over)


# Also available on request, for implicit feedback: item popularity and item neighbours in
# the co-occurrence embedding (ranking baselines).
ALL_BASELINES = BASELINES + ("popularity", "cooc_knn")
# Hyperparameter grids of the baselines, chosen on the validation users.
SELECTION_GRIDS = {
    "finetune": tuple({"inner_lr": lr, "inner_steps": steps} for lr in (0.003, 0.01, 0.03, 0.1, 0.3) for steps in (1, 5)),
    "bias_foldin": tuple({"reg_user": ru, "reg_item": ri} for ru in (1.0, 3.0, 10.0) for ri in (3.0, 10.0, 30.0)),
    "als_foldin": tuple({"rank": k, "reg": r} for k in (8, 24) for r in (3.0, 10.0, 30.0)),
    "cooc_knn": tuple({"dim": d} for d in (4, 8, 16, 32, 64)),
}
# Ranking baselines (scores, not labels) are chosen on this validation metric instead of the
# label mode's (log loss would grade the squashing, not the ranking); higher is better.
RANKING_SELECT = {"cooc_knn": "auc"}


@dataclasses.dataclass(frozen=True)
class Config:
  """Every option of a run; experiments/train.py maps its flags onto these fields."""

  dataset: str = "synthetic"
  data_dir: str | None = None
  synthetic_users: int = 600
  synthetic_items: int = 800
  csv_ratings: str | None = None  # --dataset=csv: ratings file user,item,rating[,timestamp]
  csv_user_features: str | None = None
  csv_item_features: str | None = None
  csv_columns: tuple[str, ...] = ()  # feature column types, "name:categorical|multihot:SEP|numeric|title"
  csv_rating_scale: tuple[float, ...] | None = None  # (lo, hi); default: the observed range
  lastfm_protocol: str = "episodes"  # --dataset=lastfm: TaNP's exact episodes, or "fresh" (its split recipe)
  # Co-occurrence features (data/features.py): widths of the item/cooc field and of the fit behind
  # the per-episode support similarity; 0: none (the implicit datasets' defaults: 8 and 16).
  cooc_dim: int = 0
  cooc_support_dim: int = 0
  label: str | None = None  # rating | scaled | binary (None: binary for implicit-feedback data, else rating)
  label_threshold: float = 4.0  # binary labels: rating >= threshold is positive
  model: str = "content"
  rank: int = 32  # cf / hybrid: size of the user and item vectors
  hybrid_alpha: float | None = None  # hybrid: fixed weight of the CF part (None: learned)
  adapt_alpha: bool = False  # hybrid: adapt the learned alpha per task too
  # Stacking: meta-learn the residual of a fold-in baseline ("" none, "als_foldin",
  # "bias_foldin"; its options chosen on validation), cross-fitted over `base_folds` folds of
  # the training users (learners/stacked.py).
  base: str = ""
  base_folds: int = 5
  learner: str = "maml"
  inner_steps: int = 5
  inner_lr: float = 0.1
  outer_lr: float = 1e-3
  meta_batch_size: int = 32
  epochs: int = 40
  patience: int = 10
  adapt: str = "head"
  first_order: bool = False
  seed: int = 0
  embed_dim: int = 32
  hidden: tuple[int, ...] = (64, 64)
  item_id_feature: bool = True
  linear: bool = True
  id_dropout: float = 0.1
  init: str = "pooled"  # "pooled": meta-train from the pooled network; "scratch": from random init
  redraw: bool = True  # re-draw each training task's support/query split every step
  weight_decay: float = 0.0
  query_size: int = 10
  min_ratings: int = 13
  max_ratings: int = 100
  max_support: int | None = None
  val_user_frac: float = 0.15
  baselines: tuple[str, ...] = BASELINES
  eval_chunk: int = 128
  ndcg_ks: tuple[int, ...] = (1, 3, 5)
  few_shot_ks: tuple[int, ...] = ()  # support capped at each k at evaluation (few-shot curve)
  few_shot_scenarios: tuple[str, ...] = ("user_cold",)  # scenarios of the few-shot curve
  devices: int = 1  # devices the task axis of a meta-batch is sharded over (0: all)
  task_chunk: int = 0  # vmap over chunks of this many tasks inside a scan (0: the whole meta-batch)
  checkpoints: bool = True  # orbax checkpoints of every fit under <workdir>/checkpoints/<learner>
  checkpoint_every: int = 0  # steps between checkpoints (0: after every epoch)
  keep_checkpoints: int = 3  # the latest k are kept, plus the best on validation

  @classmethod
  def from_dict(cls, d: dict, source: str = "config") -> "Config":
    """The inverse of dataclasses.asdict after a JSON round trip (lists back to tuples)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
      raise ValueError(f"{source}: unknown field(s) {', '.join(unknown)}; expected fields of Config")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

  def task_config(self) -> TaskConfig:
    return TaskConfig(query_size=self.query_size, min_ratings=self.min_ratings, max_ratings=self.max_ratings,
                      max_support=self.max_support, val_user_frac=self.val_user_frac)

  def validate(self) -> None:
    checks = [
        (self.inner_steps >= 0, f"inner_steps must be >= 0, got {self.inner_steps}"),
        (self.cooc_dim >= 0, f"cooc_dim must be >= 0 (0: no co-occurrence field), got {self.cooc_dim}"),
        (self.cooc_support_dim >= 0, f"cooc_support_dim must be >= 0 (0: no support similarity), got "
                                     f"{self.cooc_support_dim}"),
        (self.inner_lr >= 0, f"inner_lr must be >= 0, got {self.inner_lr}"),
        (self.outer_lr > 0, f"outer_lr must be > 0, got {self.outer_lr}"),
        (self.meta_batch_size > 0, f"meta_batch_size must be > 0, got {self.meta_batch_size}"),
        (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
        (0 <= self.id_dropout < 1, f"id_dropout must be in [0, 1), got {self.id_dropout}"),
        (self.eval_chunk > 0, f"eval_chunk must be > 0, got {self.eval_chunk}"),
        (self.init in ("pooled", "scratch"), f"init must be 'pooled' or 'scratch', got {self.init!r}"),
        (self.label is None or self.label in LABELS, f"label must be one of {', '.join(LABELS)}, got {self.label!r}"),
        (self.devices >= 0, f"devices must be >= 0 (0: all), got {self.devices}"),
        (self.task_chunk >= 0, f"task_chunk must be >= 0, got {self.task_chunk}"),
        (self.base in ("",) + FOLDIN, f"base must be one of {', '.join(FOLDIN)} (or empty: none), got {self.base!r}"),
        (self.base_folds >= 2, f"base_folds must be >= 2, got {self.base_folds}"),
        (self.patience >= 1, f"patience must be >= 1, got {self.patience}"),
        (self.rank >= 1, f"rank must be >= 1, got {self.rank}"),
        (self.csv_rating_scale is None or (len(self.csv_rating_scale) == 2
                                           and self.csv_rating_scale[0] < self.csv_rating_scale[1]),
         f"csv_rating_scale must be two numbers lo,hi with lo < hi, got {self.csv_rating_scale}"),
        (self.hybrid_alpha is None or 0.0 <= self.hybrid_alpha <= 1.0,
         f"hybrid_alpha must be in [0, 1] (unset: learned), got {self.hybrid_alpha}"),
        (self.checkpoint_every >= 0, f"checkpoint_every must be >= 0 (0: every epoch), got {self.checkpoint_every}"),
        (self.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}"),
        (all(k <= self.query_size for k in self.ndcg_ks),
         f"nDCG cut-offs {self.ndcg_ks} must not exceed the query size {self.query_size}"),
        (not self.task_chunk or self.meta_batch_size % self.task_chunk == 0,
         f"meta_batch_size={self.meta_batch_size} does not divide into task chunks of {self.task_chunk}"),
    ]
    for ok, msg in checks:
      if not ok:
        raise ValueError(msg)
    for s in self.few_shot_scenarios:
      if s not in SCENARIOS:
        raise ValueError(f"Unsupported few-shot scenario: {s!r}; choose from {', '.join(SCENARIOS)}")
    for k in self.few_shot_ks:
      if k < 1:
        raise ValueError(f"few-shot support sizes must be >= 1, got {k}")
    for b in self.baselines:
      if b not in ALL_BASELINES:
        raise ValueError(f"Unsupported baseline: {b!r}; choose from {', '.join(ALL_BASELINES)}")
    self.task_config()


class MetaTrainState(flax.struct.PyTreeNode):
  step: jnp.ndarray
  params: Any
  opt_state: Any
  rng: jnp.ndarray
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


def create_train_state(rng, params, tx) -> MetaTrainState:
  return MetaTrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng, tx=tx)


def featurize_episodes(tables: dict, ep: dict) -> Episode:
  """Padded index arrays ([task, S] / [task, Q]) -> featurised Episode."""
  sx = leave_own_out(tables, featurize(tables, ep["user"], ep["support_item"]), ep["user"], ep["support_item"],
                     ep["support_rating"], ep["support_mask"])
  qx = leave_own_out(tables, featurize(tables, ep["user"], ep["query_item"]), ep["user"], ep["query_item"],
                     ep["query_rating"], ep["query_mask"])
  sx, qx = support_cooc(tables, ep, sx, qx)
  return Episode(Batch(sx, ep["support_rating"], ep["support_mask"]),
                 Batch(qx, ep["query_rating"], ep["query_mask"]))


def drop_item_ids(rng, episode: Episode, rate: float) -> Episode:
  """Replaces item ids by the unknown id with probability `rate` (cold-item training)."""
  def drop(key, batch):
    ids = batch.x[ITEM_ID_FIELD]
    x = dict(batch.x)
    x[ITEM_ID_FIELD] = jnp.where(jax.random.bernoulli(key, rate, ids.shape), 0, ids)
    return batch._replace(x=x)
  k1, k2 = jax.random.split(rng)
  return Episode(drop(k1, episode.support), drop(k2, episode.query))


def redraw_support_query(rng, ep: dict) -> dict:
  """Re-splits each task's ratings into a fresh random query (of the task's own query size)
  and support.

  Fixed shapes: the pooled [task, Q + S] ratings are ordered by random keys (padding
  last); the first n_q (the task's query count) become the query, the next the support.
  """
  Q, S = ep["query_item"].shape[1], ep["support_item"].shape[1]
  n_q = ep["query_mask"].sum(1, keepdims=True)
  pool = {k: jnp.concatenate([ep[f"query_{k}"], ep[f"support_{k}"]], axis=1) for k in ("item", "rating", "mask")}
  keys = jnp.where(pool["mask"], jax.random.uniform(rng, pool["mask"].shape), 2.0)
  order = jnp.argsort(keys, axis=1)
  pool = {k: jnp.take_along_axis(v, order, axis=1) for k, v in pool.items()}
  in_query = jnp.arange(Q)[None, :] < n_q
  support_idx = jnp.minimum(n_q + jnp.arange(S)[None, :], Q + S - 1)
  in_support = (n_q + jnp.arange(S)[None, :]) < Q + S
  out = dict(ep)
  for k, v in pool.items():
    q, sup = v[:, :Q], jnp.take_along_axis(v, support_idx, axis=1)
    if k == "mask":
      q, sup = q & in_query, sup & in_support
    out[f"query_{k}"], out[f"support_{k}"] = q, sup
  return out


def make_train_step(learner: Learner, *, id_dropout: float = 0.0, redraw: bool = False, mesh=None,
                    task_chunk: int = 0, on_trace: Callable[[], None] | None = None) -> Callable:
  """meta_train_step(state, data, order) -> (state, aux), jitted once, state donated.

  data = {"episodes", "tables"}: the split's padded episodes and the feature tables, on
  the device. order: [n_batches, meta_batch] task indices of the current epoch (made on
  the device by `epoch_order`); the step takes row `state.step % n_batches`, so the loop
  passes the same three device arrays every step and nothing crosses from the host.
  With `mesh`, the meta-batch's task axis is sharded over the mesh's devices.
  `task_chunk` (0: the whole meta-batch at once) vmaps over chunks of that many tasks
  inside a `lax.scan` and averages their meta-gradients: the same update (every chunk
  has the same size), with smaller batched matmuls, which is faster on CPU.
  `on_trace` is called each time the step is traced (to count compiles).
  """

  def loss_and_grads(params, episode, key):
    grad_fn = jax.value_and_grad(learner.meta_loss, has_aux=True)
    B = episode.query.y.shape[0]
    if not task_chunk or task_chunk >= B:
      (_, aux), grads = grad_fn(params, episode, key)
      return aux, grads
    if B % task_chunk:
      raise ValueError(f"meta_batch_size={B} does not divide into task chunks of {task_chunk}")
    chunks = jax.tree.map(lambda a: a.reshape((B // task_chunk, task_chunk) + a.shape[1:]), episode)
    if mesh is not None:
      if task_chunk % mesh.size:
        raise ValueError(f"task_chunk={task_chunk} does not divide by the {mesh.size} devices the task axis is "
                         "sharded over")
      chunks = jax.lax.with_sharding_constraint(chunks, runtime.chunk_sharded(mesh))

    def body(acc, xs):
      i, chunk = xs
      (_, aux), grads = grad_fn(params, chunk, jax.random.fold_in(key, i))
      return jax.tree.map(jnp.add, acc, (aux, grads)), None

    n = B // task_chunk
    zero = jax.tree.map(jnp.zeros_like, jax.eval_shape(lambda: grad_fn(params, jax.tree.map(lambda a: a[0], chunks), key)))
    (aux, grads), _ = jax.lax.scan(body, (zero[0][1], zero[1]), (jnp.arange(n), chunks))
    return jax.tree.map(lambda a: a / n, aux), jax.tree.map(lambda g: g / n, grads)

  def step(state: MetaTrainState, data: dict, order: jnp.ndarray):
    if on_trace is not None:
      on_trace()
    runtime.check_divisible(order.shape[1], mesh)
    key = jax.random.fold_in(state.rng, state.step)
    loss_key, drop_key, split_key = jax.random.split(key, 3)
    idx = order[state.step % order.shape[0]]
    batch = jax.tree.map(lambda a: a[idx], data["episodes"])
    if mesh is not None:
      batch = jax.lax.with_sharding_constraint(batch, runtime.task_sharded(mesh))
    if redraw:
      batch = redraw_support_query(split_key, batch)
    episode = featurize_episodes(data["tables"], batch)
    if id_dropout > 0 and ITEM_ID_FIELD in data["tables"]:
      episode = drop_item_ids(drop_key, episode, id_dropout)
    aux, grads = loss_and_grads(state.params, episode, loss_key)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), aux

  return jax.jit(step, donate_argnums=0)


def make_epoch_order(n_tasks: int, meta_batch_size: int, mesh=None) -> Callable:
  """order(key) -> (next_key, [n_batches, meta_batch] indices): a fresh permutation per
  epoch, made on the device; the last batch wraps around to the permutation's start."""
  n_batches = -(-n_tasks // meta_batch_size)

  def order(key):
    key, sub = jax.random.split(key)
    perm = jax.random.permutation(sub, n_tasks)
    perm = jnp.concatenate([perm, perm[: n_batches * meta_batch_size - n_tasks]])
    return key, perm.reshape(n_batches, meta_batch_size).astype(jnp.int32)

  return jax.jit(order, out_shardings=runtime.replicated(mesh))


def run_epoch(step_fn: Callable, state: MetaTrainState, data: dict, order: jnp.ndarray):
  """Runs one step per row of `order`; returns the state and the [n_batches] losses (on device)."""
  losses = []
  for _ in range(order.shape[0]):
    state, aux = step_fn(state, data, order)
    losses.append(aux["loss"])
  return state, jnp.stack(losses)


def make_predict_fn(learner: Learner) -> Callable:
  """predict(params, tables, episodes) -> [task, Q] query predictions in label space (through
  the learner's link: probabilities for binary labels), vmapped and jitted."""

  link = LINKS[learner.link]

  def run(params, tables, ep):
    episode = featurize_episodes(tables, ep)

    def one(support, qx):
      return link(learner.predict(params, learner.adapt(params, support), qx))

    return jax.vmap(one)(episode.support, episode.query.x)

  return jax.jit(run)


def device_episodes(episodes: Episodes, chunk: int) -> dict:
  """The episodes padded to a multiple of `chunk` tasks (repeating the first ones), on the device."""
  n_chunks = -(-len(episodes) // chunk)
  idx = np.arange(n_chunks * chunk) % len(episodes)
  return {k: jnp.asarray(v[idx]) for k, v in episodes.arrays().items()}


def device_data(episodes: Episodes, tables: dict) -> dict:
  """{"episodes", "tables"} as device arrays: what the train step reads."""
  return {"episodes": {k: jnp.asarray(v) for k, v in episodes.arrays().items()},
          "tables": {k: jnp.asarray(v) for k, v in tables.items()}}


def predict_episodes(predict_fn, params, tables, episodes: Episodes, chunk: int, arrays: dict | None = None) -> np.ndarray:
  """Predicts every task in fixed-size chunks (padding the last), so one compile serves all.

  The padded episodes go to the device once (pass `arrays` from `device_episodes` to reuse
  them across calls); each chunk is a device-side slice.
  """
  T = len(episodes)
  if T == 0:
    return np.zeros((0, episodes.query_item.shape[1]), np.float32)
  if arrays is None:
    arrays = device_episodes(episodes, chunk)
  outs = [predict_fn(params, tables, {k: v[c * chunk:(c + 1) * chunk] for k, v in arrays.items()})
          for c in range(-(-T // chunk))]
  return np.asarray(jnp.concatenate(outs))[:T]


def score(pred: np.ndarray, episodes: Episodes, ks=(1, 3, 5), label: LabelSpec | None = None) -> dict[str, float]:
  """Query metrics of [task, Q] label-space predictions (labels.LabelSpec.score; default:
  ratings on the 1-5 scale, errors of predictions clipped to it)."""
  if len(episodes) == 0:
    return {"n_tasks": 0}
  label = label or LabelSpec()
  m = label.score(jnp.asarray(pred), jnp.asarray(episodes.query_rating), jnp.asarray(episodes.query_mask), ks=ks)
  out = {k: float(v) for k, v in m.items()}
  out["n_tasks"] = len(episodes)
  return out


def warm_start(learner: Learner, params, pooled):
  """Starts a learner from the network trained on pooled ratings (`--init=pooled`).

  Optimisation-based learners take the whole network (extra meta-parameters such as
  Meta-SGD's rates stay as initialised), and so do the model- and metric-based learners on
  the cf / hybrid models (their "model" is that network; the set encoder stays as
  initialised, which outputs no change of the user vector). On the content model they embed
  a (user, item) pair with the same field tables, so they take its embedding tables.
  Baselines are returned unchanged. A stacked learner (`--base`) warm-starts its wrapped
  learner from the pooled network of the same stack; its base stays as fitted.
  """
  if unwrap(params) is not params:
    return {**params, "learner": warm_start(learner, unwrap(params), unwrap(pooled))}
  same_network = ("model" in params and jax.tree.structure(params["model"]) == jax.tree.structure(pooled["model"])
                  and jax.tree.map(jnp.shape, params["model"]) == jax.tree.map(jnp.shape, pooled["model"]))
  if learner.family == "optimisation" or (learner.family in ("model", "metric") and same_network):
    return {**params, "model": jax.tree.map(jnp.copy, pooled["model"])}
  if learner.family not in ("model", "metric"):
    return params
  src = pooled["model"]["params"]["embed"]
  dst = params["model"]["params"]["pair"]["embed"]
  if jax.tree.map(jnp.shape, src) != jax.tree.map(jnp.shape, dst):
    raise ValueError("pooled embeddings do not match the pair encoder's tables (is --linear on?)")
  inner = {**params["model"]["params"], "pair": {**params["model"]["params"]["pair"], "embed": jax.tree.map(jnp.copy, src)}}
  return {**params, "model": {**params["model"], "params": inner}}


def _all_finite(tree) -> bool:
  return bool(jax.tree.reduce(lambda a, b: a & b, jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)), tree),
                              jnp.array(True)))


def fit(learner: Learner, params, data: dict, scen, config: Config, *, log: writers.MetricsLog | None,
        predict_fn: Callable, ckpt: FitCheckpoints | None = None, resume: bool = False,
        exit_at_step: int | None = None) -> tuple[Any, dict]:
  """Meta-trains `learner` (see `_fit`); closes the checkpoint manager however the fit ends."""
  try:
    return _fit(learner, params, data, scen, config, log=log, predict_fn=predict_fn, ckpt=ckpt, resume=resume,
                exit_at_step=exit_at_step)
  finally:
    if ckpt is not None:
      ckpt.close()


def _fit(learner: Learner, params, data: dict, scen, config: Config, *, log: writers.MetricsLog | None,
         predict_fn: Callable, ckpt: FitCheckpoints | None = None, resume: bool = False,
         exit_at_step: int | None = None) -> tuple[Any, dict]:
  """Meta-trains `learner` with Adam; returns the params that are best on validation MAE
  (the label mode's `select_metric`: log loss for binary labels; the "val_mae" fields of the
  loop state hold that criterion).

  With `ckpt`, the whole train state is saved after every `ckpt.every` steps (0: after
  every epoch), after every epoch whose validation MAE is the best so far, and at the end;
  the returned params are restored from the best checkpoint. With `resume`, training
  continues from the latest checkpoint and reaches the same result as an uninterrupted run
  (same order of epochs and steps, same keys). `exit_at_step` ends the process right after
  that step, as a kill would (tests only).
  """
  tx = optax.adamw(config.outer_lr, weight_decay=config.weight_decay) if config.weight_decay else optax.adam(config.outer_lr)
  labels = frozen_mask(params)
  if labels is not None:  # a stacked learner's base is fitted in closed form, never updated
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  T, B = len(scen.train), config.meta_batch_size
  mesh = runtime.task_mesh(config.devices)
  runtime.check_divisible(B, mesh)
  data = runtime.replicate(data, mesh)
  state = runtime.replicate(create_train_state(jax.random.key(config.seed + 1), params, tx), mesh)
  step_fn = make_train_step(learner, id_dropout=config.id_dropout, redraw=config.redraw, mesh=mesh,
                            task_chunk=config.task_chunk)
  order_fn = make_epoch_order(T, B, mesh)
  n_batches = -(-T // B)
  val_arrays = device_episodes(scen.val, config.eval_chunk) if len(scen.val) else None
  select = scen.label.select_metric

  def val_score(p):
    return score(predict_episodes(predict_fn, p, data["tables"], scen.val, config.eval_chunk, val_arrays),
                 scen.val, label=scen.label)

  def train_tree(st, key):
    return {"step": st.step, "opt_state": st.opt_state, "rng": jax.random.key_data(st.rng),
            "epoch_key": jax.random.key_data(key)}

  order_key = runtime.replicate(jax.random.key(config.seed + 2), mesh)
  # Everything the loop carries besides the arrays, as JSON (saved in every checkpoint).
  loop = {"epoch": 1, "row": 0, "losses": [], "best": {"val_mae": None, "epoch": 0, "step": 0},
          "bad_epochs": 0, "train_time": 0.0, "last_finite": None, "last_val_mae": None, "records": []}
  if resume and ckpt is not None and ckpt.latest_step() is not None:
    done = ckpt.done()
    if done is not None:  # this fit had finished: its best params and summary
      logging.info("%s: finished before; restoring its best checkpoint (step %d)", learner.name, done["best_step"])
      if log:
        log.replace(learner.name, done["records"])
      return ckpt.restore_params(done["best_step"], state.params), done["info"]
    step0 = ckpt.latest_step()
    p, tr, loop = ckpt.restore(step0, state.params, train_tree(state, order_key))
    state = state.replace(params=p, opt_state=tr["opt_state"], step=tr["step"], rng=jax.random.wrap_key_data(tr["rng"]))
    order_key = jax.random.wrap_key_data(tr["epoch_key"])
    state, order_key = runtime.replicate((state, order_key), mesh)
    if log:
      log.replace(learner.name, loop["records"])
    best_params = ckpt.restore_params(loop["best"]["step"], state.params)
    logging.info("%s: resumed from step %d (epoch %d, batch %d)", learner.name, step0, loop["epoch"], loop["row"])
  else:
    if config.epochs and len(scen.val):
      loop["best"]["val_mae"] = val_score(params)[select]
    best_params = jax.tree.map(jnp.copy, params)
    if ckpt is not None:
      ckpt.save(0, state.params, train_tree(state, order_key), loop, loop["best"]["val_mae"])

  def fail(step, epoch, what, last_loss):
    kept = f"; the last good checkpoint is step {ckpt.latest_step()} in {ckpt.directory}" if ckpt else ""
    raise FloatingPointError(
        f"{learner.name}: non-finite {what} at step {step} (epoch {epoch}); last finite training loss {last_loss}, "
        f"last validation MAE {loop['last_val_mae']}{kept}; lower --outer_lr or --inner_lr")

  def check_losses(losses, epoch):
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
      last = float(losses[bad[0] - 1]) if bad[0] > 0 else loop["last_finite"]
      fail((epoch - 1) * n_batches + int(bad[0]) + 1, epoch, "training loss", last)

  def save(step, st, key, lp, val_mae=None):
    if not _all_finite(st.params):
      fail(step, lp["epoch"] if lp["row"] else lp["epoch"] - 1, "parameters", lp["losses"][-1] if lp["losses"] else lp["last_finite"])
    ckpt.save(step, st.params, train_tree(st, key), lp, val_mae)

  epoch = loop["epoch"]
  while epoch <= config.epochs and loop["bad_epochs"] < config.patience:
    t0 = time.perf_counter()
    epoch_key = order_key
    next_key, order = order_fn(order_key)
    done_losses, dev_losses = list(loop["losses"]), []
    for row in range(loop["row"], n_batches):
      state, aux = step_fn(state, data, order)
      dev_losses.append(aux["loss"])
      step = (epoch - 1) * n_batches + row + 1
      if exit_at_step is not None and step == exit_at_step:
        logging.warning("exit at step %d (--exit_at_step)", step)
        logging.flush()
        os._exit(75)
      if ckpt is not None and ckpt.every and step % ckpt.every == 0 and row < n_batches - 1:
        so_far = done_losses + [float(x) for x in np.asarray(jnp.stack(dev_losses))]
        check_losses(np.array(so_far), epoch)
        save(step, state, epoch_key, {**loop, "epoch": epoch, "row": row + 1, "losses": so_far,
                                      "train_time": loop["train_time"] + time.perf_counter() - t0})
    losses = np.array(done_losses + ([float(x) for x in np.asarray(jnp.stack(dev_losses))] if dev_losses else []))
    epoch_time = time.perf_counter() - t0
    check_losses(losses, epoch)
    val = val_score(state.params)
    record = {"learner": learner.name, "epoch": epoch, "step": int(epoch * n_batches),
              "train/loss": float(losses.mean()), "time/epoch_s": epoch_time,
              "time/tasks_per_s": (n_batches - loop["row"]) * B / epoch_time}
    record.update({f"val/{k}": v for k, v in val.items() if k in ("mae", "rmse", "ndcg@3", "logloss", "auc", "ndcg@5")})
    if log:
      log.write(record)
    logging.info("%s epoch %d: train loss %.4f, val %s %.4f, val nDCG@3 %.4f (%.1fs)", learner.name, epoch,
                 record["train/loss"], select, val.get(select, float("nan")), val.get("ndcg@3", float("nan")), epoch_time)
    step = epoch * n_batches
    best = dict(loop["best"])
    improved = val.get(select) is not None and (best["val_mae"] is None or val[select] < best["val_mae"])
    if improved:
      best = {"val_mae": val[select], "epoch": epoch, "step": step}
      best_params = jax.tree.map(jnp.copy, state.params)
    loop = {"epoch": epoch + 1, "row": 0, "losses": [], "best": best,
            "bad_epochs": 0 if improved else loop["bad_epochs"] + 1, "train_time": loop["train_time"] + epoch_time,
            "last_finite": float(losses[-1]), "last_val_mae": val.get(select), "records": loop["records"] + [record]}
    order_key = next_key
    if ckpt is not None and (improved or not ckpt.every or step % ckpt.every == 0):
      save(step, state, order_key, loop, val.get(select))
    epoch += 1
  steps = int(state.step)
  train_time = loop["train_time"]
  info = {"best_epoch": loop["best"]["epoch"],
          "best_val_mae": loop["best"]["val_mae"] if loop["best"]["val_mae"] is not None else float("inf"),
          "epochs_run": loop["epoch"] - 1, "steps": steps, "train_time_s": train_time,
          "tasks_per_s": steps * B / train_time if train_time else None}
  if ckpt is not None:
    save(steps, state, order_key, loop)  # the end (a no-op when this step is saved already)
    ckpt.mark_done({"best_step": loop["best"]["step"], "info": info, "records": loop["records"]})
    best_params = ckpt.restore_params(loop["best"]["step"], state.params)
  return best_params, info


@dataclasses.dataclass
class Setup:
  """What a run builds before training: data, scenarios, features, model and a learner factory."""

  config: Config
  ds: Any
  scen: Any
  fields: tuple
  tables: dict  # host feature tables
  model: Any
  ctx: FitContext
  data: dict  # {"episodes", "tables"} of the meta-training split, on the device
  example: Episode
  selected: dict = dataclasses.field(default_factory=dict)  # fold-in name -> its validation pick

  def make(self, name: str, **kw) -> Learner:
    """The learner `name` with the run's options; with `--base`, every meta-trained learner
    predicts the residual of the base fold-in (chosen on validation)."""
    c = self.config
    label = self.scen.label
    opts = dict(inner_lr=c.inner_lr, inner_steps=c.inner_steps, adapt=c.adapt, first_order=c.first_order,
                loss=label.loss, levels=residual_levels(label.levels()) if c.base else label.levels())
    opts.update(kw)
    learner = create_learner(name, self.model, **opts)
    if c.base and learner.meta_loss is not None:
      learner = make_stacked(learner, self.select_foldin(c.base)["learner"], folds=c.base_folds)
    return learner

  def select_on_validation(self, name: str, candidate: Callable[[dict], tuple[Learner, Any]]) -> dict:
    """The options of SELECTION_GRIDS[name] whose candidate (`candidate(options)` -> (learner,
    params)) scores best on the validation tasks (the label mode's select_metric, lower is
    better; a ranking baseline's RANKING_SELECT metric, higher is better):
    {"learner", "params", "options", "val", "predict_fn"}."""
    best = None
    metric = RANKING_SELECT.get(name, self.scen.label.select_metric)
    sign = -1.0 if name in RANKING_SELECT else 1.0
    for options in SELECTION_GRIDS[name]:
      cand, cand_params = candidate(options)
      fn = make_predict_fn(cand)
      val = score(predict_episodes(fn, cand_params, self.data["tables"], self.scen.val, self.config.eval_chunk),
                  self.scen.val, label=self.scen.label)[metric]
      if best is None or sign * val < sign * best["val"]:
        best = {"learner": cand, "params": cand_params, "options": options, "val": val, "predict_fn": fn}
    return best

  def select_foldin(self, name: str, recorded: dict | None = None) -> dict:
    """The fold-in baseline `name` chosen on validation (`select_on_validation`), memoised:
    the baseline row and a stacked learner's base are the same fit. `recorded` (a finished
    run's choice, final_metrics.json's "base": {"selected", "val_mae"}) skips the grid and fits
    only the recorded options."""
    if name not in self.selected:
      def candidate(options):
        cand = create_learner(name, self.model, seed=self.config.seed, **options)
        return cand, self.init_params(cand)
      if recorded is None:
        self.selected[name] = self.select_on_validation(name, candidate)
      else:
        cand, cand_params = candidate(dict(recorded["selected"]))
        self.selected[name] = {"learner": cand, "params": cand_params, "options": dict(recorded["selected"]),
                               "val": recorded.get("val_mae"), "predict_fn": make_predict_fn(cand)}
    return self.selected[name]

  def init_params(self, learner: Learner):
    return learner.init(jax.random.key(self.config.seed), self.example, self.ctx)


def label_spec(config: Config, ds) -> LabelSpec:
  """The run's label mode: --label, or binary for implicit-feedback (0/1) datasets."""
  if ds.implicit:
    if config.label not in (None, "binary"):
      raise ValueError(f"--label={config.label} does not apply to {ds.name}: it is implicit 0/1 feedback, "
                       "so its labels are binary (use --label=binary or leave --label unset)")
    return LabelSpec("binary", scale=(0.0, 1.0), threshold=1.0)
  return LabelSpec(config.label or "rating", scale=tuple(ds.rating_scale), threshold=config.label_threshold)


def build_setup(config: Config) -> Setup:
  """Loads the dataset and builds everything a run (or `recommend`) needs; deterministic in the seed."""
  ds = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed,
                    synthetic_users=config.synthetic_users, synthetic_items=config.synthetic_items,
                    csv_ratings=config.csv_ratings, csv_user_features=config.csv_user_features,
                    csv_item_features=config.csv_item_features, csv_columns=config.csv_columns,
                    csv_rating_scale=config.csv_rating_scale, lastfm_protocol=config.lastfm_protocol)
  label = label_spec(config, ds)
  if config.base and label.binary:
    raise ValueError(f"--base={config.base} needs squared-error labels (--label=rating or scaled); {ds.name} has "
                     "binary labels here, and a residual of a 0/1 label is not a label")
  fixed = ds.fixed_episodes and {k: [(u, si, label.encode(sy), qi, label.encode(qy)) for u, si, sy, qi, qy in v]
                                 for k, v in ds.fixed_episodes.items()}
  ds = dataclasses.replace(ds, ratings=label.encode(ds.ratings), fixed_episodes=fixed)
  scen = dataclasses.replace(build_scenarios(ds, config.task_config(), config.seed), label=label)
  if len(scen.train) == 0:
    raise ValueError(f"{config.dataset}: no meta-training tasks survive the {config.min_ratings}-"
                     f"{config.max_ratings} ratings filter")
  known = np.zeros(ds.n_items, bool)
  known[scen.train_ratings[1]] = True
  fields, tables = feature_tables(ds, known_items=known, item_id=config.item_id_feature)
  if config.cooc_dim or config.cooc_support_dim:  # from the training pairs only (cross-fitted)
    positive = 0.5 if label.binary else float(label.encode(np.array([config.label_threshold]))[0])
    fields, tables = add_cooccurrence(fields, tables, *scen.train_ratings, positive=positive, n_users=ds.n_users,
                                      n_items=ds.n_items, dim=config.cooc_dim, support_dim=config.cooc_support_dim)
  ctx_ratings = scen.train_ratings
  global_mean = float(ctx_ratings[2].mean())
  model = create_model(config.model, fields=fields, embed_dim=config.embed_dim, hidden=config.hidden,
                       output_bias=0.0 if config.base else label.output_bias(global_mean), linear=config.linear, rank=config.rank, alpha=config.hybrid_alpha,
                       adapt_alpha=config.adapt_alpha)
  ctx = FitContext(model=model, fields=fields, n_items=ds.n_items, train_users=ctx_ratings[0],
                   train_items=ctx_ratings[1], train_ratings=ctx_ratings[2], tables=tables,
                   binary_labels=label.binary)
  data = device_data(scen.train, tables)
  example = featurize_episodes(data["tables"], jax.tree.map(lambda a: a[:1], data["episodes"]))
  return Setup(config=config, ds=ds, scen=scen, fields=fields, tables=tables, model=model, ctx=ctx, data=data,
               example=example)


# Config fields that do not change a run's results: a resumed run may differ in them.
RESUME_FREE_FIELDS = ("data_dir", "devices", "task_chunk", "checkpoints", "checkpoint_every", "keep_checkpoints",
                      "eval_chunk")


def check_resumable(config: Config, workdir: str) -> None:
  """Raises ValueError naming the first field where `config` differs from the run saved in `workdir`."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    return
  with open(path) as f:
    saved = json.load(f)
  now = writers.to_jsonable(dataclasses.asdict(config))
  for k in sorted(set(saved) | set(now)):
    if k not in RESUME_FREE_FIELDS and saved.get(k) != now.get(k):
      raise ValueError(f"--resume: {path} has {k}={saved.get(k)!r} but this run has {k}={now.get(k)!r}; "
                       "resume with the same flags or use a new --workdir")


def train_and_evaluate(config: Config, workdir: str, *, resume: bool = False, exit_at_step: int | None = None) -> dict:
  """Loads data, meta-trains the learner and the baselines, evaluates the four scenarios.

  With `config.checkpoints`, every fit (the pooled network and the learner) is checkpointed
  under <workdir>/checkpoints/<name>; `resume` continues each from its latest checkpoint.
  """
  config.validate()
  t_start = time.perf_counter()
  if resume:
    if not config.checkpoints:
      raise ValueError("--resume needs checkpoints (--checkpoints)")
    check_resumable(config, workdir)
  elif config.checkpoints:
    earlier = os.path.join(workdir, "checkpoints")
    if os.path.isdir(earlier) and os.listdir(earlier):
      # A fresh run must not mix its checkpoints with an earlier run's (saving skips a step that
      # exists, and the best step could restore the earlier run's parameters).
      raise ValueError(f"{earlier}: holds checkpoints of an earlier run; continue it with --resume, or use a new "
                       "--workdir (or --out), or delete that folder")
  os.makedirs(workdir, exist_ok=True)
  writers.write_json_atomic(os.path.join(workdir, "config.json"), dataclasses.asdict(config))
  log = writers.MetricsLog(workdir, append=resume)

  def checkpoints_for(name):
    if not config.checkpoints:
      return None
    return FitCheckpoints(checkpoint_dir(workdir, name), keep=config.keep_checkpoints, every=config.checkpoint_every)

  st = build_setup(config)
  ds, scen, ctx, data, example, make = st.ds, st.scen, st.ctx, st.data, st.example, st.make
  if ds.protocol_report:
    logging.info("%s protocol checks: %s", ds.name, json.dumps(ds.protocol_report, sort_keys=True))
  logging.info("%s tasks: train %d, validation %d, test %s", ds.name, len(scen.train), len(scen.val),
               {s: len(e) for s, e in scen.test.items()})
  t_data = time.perf_counter() - t_start

  few_shot = {}

  def evaluate_all(learner, params, *, predict_fn=None, few_shot_curve=True):
    predict_fn = predict_fn or make_predict_fn(learner)
    families[learner.name] = learner.family
    preds = {s: predict_episodes(predict_fn, params, data["tables"], scen.test[s], config.eval_chunk)
             for s in SCENARIOS}
    if config.few_shot_ks and few_shot_curve:
      for s in config.few_shot_scenarios:
        curve = few_shot.setdefault(s, {}).setdefault(learner.name, {})
        for k in config.few_shot_ks:
          capped = scen.test[s].cap_support(k)
          curve[str(k)] = score(predict_episodes(predict_fn, params, data["tables"], capped, config.eval_chunk),
                                capped, config.ndcg_ks, scen.label)
    return preds, {s: score(preds[s], scen.test[s], config.ndcg_ks, scen.label) for s in SCENARIOS}

  results, training, timing, families = {}, {}, {"data_s": t_data}, {}
  init_rng = jax.random.key(config.seed)
  pooled_cache = {}

  def pooled_params():
    """The network trained on pooled ratings (no adaptation), trained once per run."""
    if "params" not in pooled_cache:
      t0 = time.perf_counter()
      pooled = make("pooled")
      pooled_cache["params"], training["pooled"] = fit(pooled, pooled.init(init_rng, example, ctx), data, scen,
                                                       config, log=log, predict_fn=make_predict_fn(pooled),
                                                       ckpt=checkpoints_for("pooled"), resume=resume)
      timing["pooled_training"] = time.perf_counter() - t0
    return pooled_cache["params"]

  # The learner under study.
  learner = make(config.learner)
  t0 = time.perf_counter()
  params = learner.init(init_rng, example, ctx)
  predict_fn = make_predict_fn(learner)
  if learner.meta_loss is not None:
    if config.init == "pooled":
      params = warm_start(learner, params, pooled_params())
      t0 = time.perf_counter()  # the pooled network's training is timed on its own
    params, training[learner.name] = fit(learner, params, data, scen, config, log=log, predict_fn=predict_fn,
                                         ckpt=checkpoints_for(learner.name), resume=resume, exit_at_step=exit_at_step)
  preds, results[learner.name] = evaluate_all(learner, params, predict_fn=predict_fn)
  timing[learner.name] = time.perf_counter() - t0
  base_info = None
  if config.base:  # which fit of the base the stacked learners predict the residual of
    base = st.select_foldin(config.base)
    base_info = {"name": config.base, "selected": base["options"], "val_mae": base["val"], "folds": config.base_folds}
  adaptation = {}
  if learner.family == "optimisation" and config.inner_steps > 0:
    frozen = make(config.learner, inner_steps=0)
    preds0, res0 = evaluate_all(frozen, params, few_shot_curve=False)
    for s in SCENARIOS:
      m = scen.test[s].query_mask
      delta = float(np.abs(preds[s] - preds0[s])[m].mean()) if m.any() else None
      adaptation[s] = {"mean_abs_change": delta, "mae_without_adaptation": res0[s].get("mae")}

  # Baselines on the same splits.
  for name in config.baselines:
    if name == config.learner:
      continue
    t0 = time.perf_counter()
    if name in TRIVIAL and name not in SELECTION_GRIDS:
      b = make(name)
      _, results[name] = evaluate_all(b, b.init(init_rng, example, ctx))
    elif name == "pooled":
      _, results[name] = evaluate_all(make("pooled"), pooled_params())
    else:  # options chosen on validation: the fold-ins (shared with --base), finetune, cooc_knn
      if name in FOLDIN:
        best = st.select_foldin(name)
      elif name == "finetune":  # the pooled network + SGD on the support
        best = st.select_on_validation(name, lambda options: (make("finetune", **options), pooled_params()))
      else:  # a trivial baseline with options (cooc_knn)
        def candidate(options, name=name):
          b = make(name, **options)
          return b, b.init(init_rng, example, ctx)

        best = st.select_on_validation(name, candidate)
      training[name] = {"selected": best["options"], f"val_{RANKING_SELECT.get(name, 'mae')}": best["val"]}
      _, results[name] = evaluate_all(best["learner"], best["params"], predict_fn=best["predict_fn"])
    timing[name] = time.perf_counter() - t0

  timing["total_s"] = time.perf_counter() - t_start
  final = {
      "dataset": {"name": ds.name, "n_users": ds.n_users, "n_items": ds.n_items, "n_ratings": ds.n_ratings,
                  "n_train_tasks": len(scen.train), "n_val_tasks": len(scen.val),
                  "n_test_tasks": {s: len(scen.test[s]) for s in SCENARIOS},
                  "n_new_items": int(scen.split.new_item.sum()),
                  **({"protocol": ds.protocol_report} if ds.protocol_report else {})},
      "learner": config.learner,
      "base": base_info,  # --base: the fold-in every meta-trained learner was stacked on
      "families": families,
      "results": results,
      "adaptation": adaptation,
      "few_shot": few_shot,  # {scenario: {learner: {k: metrics}}}
      "few_shot_user_cold": few_shot.get("user_cold", {}),
      "training": {k: {kk: vv for kk, vv in v.items() if kk not in ("train_time_s", "tasks_per_s")}
                   for k, v in training.items()},
      "timing": {**timing, "training": {k: {"train_time_s": v.get("train_time_s"), "tasks_per_s": v.get("tasks_per_s")}
                                        for k, v in training.items()}},
  }
  writers.write_json_atomic(os.path.join(workdir, "final_metrics.json"), final)
  return final
