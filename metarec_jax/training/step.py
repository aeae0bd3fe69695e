"""The pure jitted meta-train step, the epoch's task order, and `run_epoch`, the loop over
an epoch's meta-batches that the fit calls."""

from __future__ import annotations

import os
import pathlib
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from metarec_jax import runtime, writers
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
  parts: int = 1,
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
  `parts` > 1 (with task chunks, no mesh): a `PartStep`, the chunks' gradients in that many
  calls, each of which can run on another device (`PartStep.__call__`).
  `on_trace` is called each time the step is traced (to count compiles).
  """

  def batch_of(rng, step_no, data, order):
    """The row's meta-batch (redrawn with --redraw) and the step's loss and dropout keys."""
    key = jax.random.fold_in(rng, step_no)
    loss_key, drop_key, split_key = jax.random.split(key, 3)
    idx = order[step_no % order.shape[0]]
    batch = jax.tree.map(lambda a: a[idx], data["episodes"])
    if mesh is not None:
      batch = jax.lax.with_sharding_constraint(batch, runtime.task_sharded(mesh))
    if redraw:
      batch = redraw_support_query(split_key, batch)
    return batch, loss_key, drop_key

  def featurize(data, batch, drop_key, rows=None):
    """`rows` (first, count; first may be traced): those tasks of the batch only, with the whole
    batch's id dropout."""
    n = batch["user"].shape[0]
    if rows is not None:
      batch = jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, rows[0], rows[1]), batch)
    episode = featurize_episodes(data["tables"], batch)
    if id_dropout > 0 and ITEM_ID_FIELD in data["tables"]:
      episode = drop_item_ids(drop_key, episode, id_dropout, n_tasks=n, first=0 if rows is None else rows[0])
    return episode

  grad_fn = jax.value_and_grad(learner.meta_loss, has_aux=True)

  def chunk_sums(params, episode, key, first_chunk):
    """Sums of the (aux, meta-gradient) of `episode`'s task chunks, numbered from `first_chunk`
    (each chunk's key is `key` folded with its number)."""
    B = episode.query.y.shape[0]
    chunks = jax.tree.map(lambda a: a.reshape((B // task_chunk, task_chunk) + a.shape[1:]), episode)
    if mesh is not None:
      chunks = jax.lax.with_sharding_constraint(chunks, runtime.chunk_sharded(mesh))

    def body(acc, xs):
      i, chunk = xs
      (_, aux), grads = grad_fn(params, chunk, jax.random.fold_in(key, i))
      return jax.tree.map(jnp.add, acc, (aux, grads)), None

    zero = jax.tree.map(
      jnp.zeros_like, jax.eval_shape(lambda: grad_fn(params, jax.tree.map(lambda a: a[0], chunks), key))
    )
    n = B // task_chunk
    (aux, grads), _ = jax.lax.scan(body, (zero[0][1], zero[1]), (first_chunk + jnp.arange(n), chunks))
    return aux, grads

  def loss_and_grads(params, episode, key):
    B = episode.query.y.shape[0]
    if not task_chunk or task_chunk >= B:
      (_, aux), grads = grad_fn(params, episode, key)
      return aux, grads
    if B % task_chunk:
      raise ValueError(f"meta_batch_size={B} does not divide into task chunks of {task_chunk}")
    if mesh is not None and task_chunk % mesh.size:
      raise ValueError(
        f"task_chunk={task_chunk} does not divide by the {mesh.size} devices the task axis is sharded over"
      )
    n = B // task_chunk
    aux, grads = chunk_sums(params, episode, key, 0)
    return jax.tree.map(lambda a: a / n, aux), jax.tree.map(lambda g: g / n, grads)

  def update(state, aux, grads):
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), aux

  def step(state: MetaTrainState, data: dict, order: jnp.ndarray):
    if on_trace is not None:
      on_trace()
    runtime.check_divisible(order.shape[1], mesh)
    batch, loss_key, drop_key = batch_of(state.rng, state.step, data, order)
    aux, grads = loss_and_grads(state.params, featurize(data, batch, drop_key), loss_key)
    return update(state, aux, grads)

  if parts <= 1:
    return jax.jit(step, donate_argnums=0)
  if mesh is not None:
    raise ValueError("a step in parts runs each part on one device; it does not combine with a mesh")
  if not task_chunk:
    raise ValueError(f"a step in {parts} parts needs task chunks (--task_chunk)")

  def part_sums(params, rng, step_no, data, order, part):
    """(aux, meta-gradient) sums of one part's share of the row's task chunks. `part` is traced:
    every part is one program, compiled once per shape (`PartStep`)."""
    if on_trace is not None:
      on_trace()
    B = order.shape[1]
    n = B // task_chunk if B % task_chunk == 0 else 0
    if n < parts or n % parts:
      raise ValueError(
        f"meta_batch_size={B} in task chunks of {task_chunk} does not split into {parts} equal parts of whole chunks"
      )
    per = n // parts
    batch, loss_key, drop_key = batch_of(rng, step_no, data, order)
    rows = (part * per * task_chunk, per * task_chunk)
    return chunk_sums(params, featurize(data, batch, drop_key, rows), loss_key, part * per)

  def combine(state, sums, order):
    """The update from every part's sums, added in part order (wherever each part ran)."""
    aux, grads = sums[0]
    for a, g in sums[1:]:
      aux, grads = jax.tree.map(jnp.add, aux, a), jax.tree.map(jnp.add, grads, g)
    n = order.shape[1] // task_chunk
    return update(state, jax.tree.map(lambda a: a / n, aux), jax.tree.map(lambda g: g / n, grads))

  return PartStep(part_sums, combine, parts)


class PartStep:
  """The meta-train step in `parts` calls: each sums the meta-gradients of its share of the
  meta-batch's task chunks (the same chunks, keys and id dropout as the one-call step), and one
  update adds the parts' sums in part order. Which device runs a part does not change a bit of
  the result (tested): the fit runs the parts after the first on the process's second CPU device
  (`runtime.helper_device`), side by side with the first. Against the one-call step only the
  order in which the chunks' gradients are added differs.

  Every part is one program (the part number is an argument), compiled once per shape for the
  first device and loaded on the helper (`_load_far`; compiled there where it cannot be).

  `step(state, data, order, helper=None)`: with `helper` = (device, data, order on that device),
  parts 1.. run there: the parameters, key and step count go to it each step and its sums come
  back (device-to-device copies; nothing crosses from the host).
  """

  def __init__(self, part_sums: Callable, combine: Callable, parts: int):
    self.parts = parts
    self.part_sums = jax.jit(part_sums)
    self.combine = jax.jit(combine, donate_argnums=0)
    self._far = {}  # (argument shapes, device) -> the part program there
    self._indices = {}  # (part, device) -> the part number there

  def _inputs(self, state, helper):
    """(arguments of each part's call), placed where the part runs."""
    here = (state.params, state.rng, state.step)
    if helper is None:
      return [here] * self.parts, None
    device, far_data, far_order = helper
    far = jax.device_put(here, device)
    return [here] + [far] * (self.parts - 1), (far_data, far_order)

  def _index(self, part: int, device) -> jax.Array:
    """The part number as an int32 on `device`, made once (a step sends nothing from the host)."""
    key = (part, device)
    if key not in self._indices:
      self._indices[key] = jax.device_put(np.int32(part), device)
    return self._indices[key]

  @property
  def far_compiled(self) -> int:
    """How many of the part programs run on the helper were compiled for it, not loaded."""
    return sum(fn is self.part_sums for fn in self._far.values())

  def _far_fn(self, near_args: tuple, far_args: tuple, near=None) -> Callable:
    """The part program for `near_args`' shapes (this device's arguments) on the device of
    `far_args` (the same values there); `near`: the program compiled for them here, if the
    caller has it."""
    device = runtime.device_of(far_args)
    key = (tuple((x.shape, x.dtype) for x in jax.tree.leaves(near_args)), device)
    fn = self._far.get(key)
    if fn is None:
      fn = self._far[key] = self._load_far(near_args, far_args, device, near) or self.part_sums
    return fn

  def _load_far(self, near_args, far_args, device, near):
    """This device's part program loaded on `device` (`runtime.load_on`), from the bytes kept
    beside the persistent cache (`runtime.program_path`), else serialized from `near`; None where
    neither loads and gives this device's result to the bit (part 1 of the row, run on both): the
    jit then compiles for `device`. Bytes that pass are kept for later runs."""
    here = runtime.device_of(near_args)
    lowered = self.part_sums.lower(*near_args, self._index(0, here))
    near = near or lowered.compile()
    path = runtime.program_path(lowered)
    sources = [lambda: runtime.executable_bytes(near)]
    if path is not None and os.path.exists(path):
      sources.insert(0, lambda: pathlib.Path(path).read_bytes())
    for i, source in enumerate(sources):
      blob = source()
      far = None if blob is None else runtime.load_on(blob, near, device)
      if far is None or not self._same(near_args, near, far_args, far):
        continue
      if path is not None and i == len(sources) - 1:  # not kept yet, or the kept bytes failed
        with writers.atomic_path(path) as tmp, open(tmp, "wb") as f:
          f.write(blob)
      return far
    return None

  def _same(self, near_args, near, far_args, far) -> bool:
    """Whether `far` (on the device of `far_args`) gives `near`'s bits for part 1."""
    here, there = runtime.device_of(near_args), runtime.device_of(far_args)
    try:
      want, got = near(*near_args, self._index(1, here)), far(*far_args, self._index(1, there))
      return all(jax.tree.leaves(jax.tree.map(lambda a, b: bool((np.asarray(a) == np.asarray(b)).all()), want, got)))
    except jax.errors.JaxRuntimeError as e:  # bytes without their code (a program the cache served)
      logging.info("part program: the copy on %s does not run (%s)", there, e)
      return False

  def __call__(self, state: MetaTrainState, data: dict, order: jnp.ndarray, helper=None):
    args, far = self._inputs(state, helper)
    here = runtime.device_of(order)
    # the far parts first: they run while this device computes part 0
    if far is None:
      sums = [self.part_sums(*args[p], data, order, self._index(p, here)) for p in range(1, self.parts)]
    else:
      fn = self._far_fn((*args[0], data, order), (*args[1], *far))
      sums = jax.device_put([fn(*args[p], *far, self._index(p, helper[0])) for p in range(1, self.parts)], here)
    sums = [self.part_sums(*args[0], data, order, self._index(0, here))] + sums
    return self.combine(state, sums, order)

  def compile(self, state: MetaTrainState, data: dict, order: jnp.ndarray, helper=None) -> None:
    """Compiles the calls `__call__` makes with these arguments, without running them."""
    args, far = self._inputs(state, helper)
    here = runtime.device_of(order)
    near = self.part_sums.lower(*args[0], data, order, self._index(0, here)).compile()
    if far is not None and self._far_fn((*args[0], data, order), (*args[1], *far), near) is self.part_sums:
      self.part_sums.lower(*args[1], *far, self._index(1, helper[0])).compile()  # compiled there: did not load
    self.combine.lower(state, [near.out_info] * self.parts, order).compile()


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


def bucket_helper(helper, bucket):
  """`PartStep`'s helper for one bucket's step from run_epoch's (device, data of every bucket or
  of the split, order there); `bucket` None: the split's."""
  device, far_data, far_order = helper
  return device, far_data if bucket is None else far_data[bucket], far_order


def run_epoch(
  step_fn: Callable,
  state: MetaTrainState,
  data: dict,
  order: jnp.ndarray,
  start: int = 0,
  stop: int | None = None,
  schedule=None,
  helper=None,
):
  """Runs one step per row `start..stop` of `order` (default: every row); returns the state and
  those rows' losses, a [rows] device array. Nothing crosses from the host per step: the
  step picks its row from `state.step`. With length buckets, `data` is the list of the buckets'
  data and `schedule` (host ints) the bucket of each row. `helper` = (device, its copy of
  `data`, its copy of `order`): a `PartStep` runs its far parts there."""
  stop = order.shape[0] if stop is None else stop
  losses = []
  for r in range(start, stop):
    b = None if schedule is None else schedule[r]
    d = data if b is None else data[b]
    state, aux = step_fn(state, d, order) if helper is None else step_fn(state, d, order, bucket_helper(helper, b))
    losses.append(aux["loss"])
  return state, (jnp.stack(losses) if losses else jnp.zeros((0,), jnp.float32))
