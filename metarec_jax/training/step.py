"""The pure jitted meta-train step, the epoch's task order, and `run_epoch`, the loop over
an epoch's meta-batches that the fit calls."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from metarec_jax import runtime
from metarec_jax.data.episodes import drop_item_ids, featurize_episodes, redraw_support_query
from metarec_jax.data.features import ITEM_ID_FIELD
from metarec_jax.learners import Learner
from metarec_jax.training.state import MetaTrainState


def make_train_step(
  learner: Learner,
  *,
  id_dropout: float = 0.0,
  redraw: bool = False,
  mesh=None,
  task_chunk: int = 0,
  on_trace: Callable[[], None] | None = None,
) -> Callable:
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
        raise ValueError(
          f"task_chunk={task_chunk} does not divide by the {mesh.size} devices the task axis is sharded over"
        )
      chunks = jax.lax.with_sharding_constraint(chunks, runtime.chunk_sharded(mesh))

    def body(acc, xs):
      i, chunk = xs
      (_, aux), grads = grad_fn(params, chunk, jax.random.fold_in(key, i))
      return jax.tree.map(jnp.add, acc, (aux, grads)), None

    n = B // task_chunk
    zero = jax.tree.map(
      jnp.zeros_like, jax.eval_shape(lambda: grad_fn(params, jax.tree.map(lambda a: a[0], chunks), key))
    )
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


def run_epoch(
  step_fn: Callable,
  state: MetaTrainState,
  data: dict,
  order: jnp.ndarray,
  start: int = 0,
  stop: int | None = None,
  schedule=None,
):
  """Runs one step per row `start..stop` of `order` (default: every row); returns the state and
  those rows' losses, a [rows] device array. Nothing crosses from the host per step: the
  step picks its row from `state.step`. With length buckets, `data` is the list of the buckets'
  data and `schedule` (host ints) the bucket of each row."""
  stop = order.shape[0] if stop is None else stop
  losses = []
  for r in range(start, stop):
    state, aux = step_fn(state, data if schedule is None else data[schedule[r]], order)
    losses.append(aux["loss"])
  return state, (jnp.stack(losses) if losses else jnp.zeros((0,), jnp.float32))
