"""The fit loop: epochs of `run_epoch`, early stopping on the validation criterion, the NaN
guard, and checkpoints of the one `FitState` (resume restores it and reaches the same result)."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from metarec_jax import progress as progress_lib
from metarec_jax import runtime, writers
from metarec_jax.checkpoint import FitCheckpoints
from metarec_jax.learners import Learner
from metarec_jax.learners.registry import names
from metarec_jax.learners.stacked import frozen_mask
from metarec_jax.training.state import FitState, Progress, create_train_state
from metarec_jax.training.step import PartStep, bucket_helper, make_epoch_order, make_train_step, run_epoch

INNER_LOOP = names(lambda s: s.inner_loop)  # learners whose step adapts every task by gradient steps
# Validation metrics copied into each epoch's metrics.jsonl line.
LOGGED_VAL = ("mae", "rmse", "ndcg@3", "logloss", "auc", "ndcg@5")


def make_optimizer(config, params) -> optax.GradientTransformation:
  """Adam (AdamW with --weight_decay); a stacked learner's base is frozen (fitted in closed form)."""
  if config.weight_decay:
    tx = optax.adamw(config.outer_lr, weight_decay=config.weight_decay)
  else:
    tx = optax.adam(config.outer_lr)
  labels = frozen_mask(params)
  if labels is not None:
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  return tx


@jax.jit
def _finite(tree) -> jax.Array:
  return jax.tree.reduce(lambda a, b: a & b, jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)), tree), jnp.array(True))


def _all_finite(tree) -> bool:
  """Whether every entry of `tree` is finite: one compiled call (op by op, each leaf's shape
  would compile its own programs)."""
  return bool(_finite(tree))


def fit(
  learner: Learner,
  params,
  data: dict,
  config,
  *,
  n_tasks: int,
  val_score: Callable[[Any], dict] | None,
  select: str,
  log: writers.MetricsLog | None = None,
  ckpt: FitCheckpoints | None = None,
  resume: bool = False,
  exit_at_step: int | None = None,
  steps: TrainSteps | None = None,
  on_epoch: Callable[[int], None] | None = None,
) -> tuple[Any, dict]:
  """Meta-trains `learner` with Adam on `data` (n_tasks training tasks) and returns the params
  that are best on `val_score(params)[select]` (lower is better) and a summary.

  With `ckpt`, the FitState is saved after every `ckpt.every` steps (0: after every epoch),
  after every epoch whose validation criterion is the best so far, and at the end. With
  `resume`, training continues from the latest checkpoint and reaches the same result as an
  uninterrupted run (same order of epochs and steps, same keys). `exit_at_step` ends the
  process right after that step, as a kill would (tests only). The checkpoint manager is
  closed however the fit ends. `steps`: from `make_steps` for this learner, data and config
  (default: made here). `on_epoch(epoch)` is called after each epoch's validation.
  """
  try:
    return _fit(
      learner,
      params,
      data,
      config,
      n_tasks=n_tasks,
      val_score=val_score,
      select=select,
      log=log,
      ckpt=ckpt,
      resume=resume,
      exit_at_step=exit_at_step,
      steps=steps,
      on_epoch=on_epoch,
    )
  finally:
    if ckpt is not None:
      ckpt.close()


@dataclasses.dataclass
class TrainSteps:
  """What a fit steps with: the jitted step, the epoch's order (key -> (next key, order, the
  bucket of each row or None)), the data of each bucket (a list) or of the split, the
  meta-batches per epoch, the mesh, the optimiser (one object: the step is traced for it), and
  for a step in parts (`step.PartStep`) the device its far parts may run on."""

  step_fn: Callable
  order_fn: Callable
  step_data: Any
  n_batches: int
  mesh: Any
  tx: optax.GradientTransformation
  helper: Any = None
  _far_data: Any = None

  def helper_args(self, order):
    """run_epoch's `helper` for an epoch of `order`: (the helper device, `step_data` there,
    copied once, and `order` there); None without a helper."""
    if self.helper is None:
      return None
    if self._far_data is None:
      self._far_data = data_on(self.step_data, self.helper)
    return self.helper, self._far_data, jax.device_put(order, self.helper)


def data_on(step_data, device):
  """A fit's step data (the list of the buckets' or one split's) on `device`; the buckets share
  one copy of the tables."""
  if isinstance(step_data, list):
    tables = jax.device_put(step_data[0]["tables"], device)
    return [{"episodes": jax.device_put(d["episodes"], device), "tables": tables} for d in step_data]
  return jax.device_put(step_data, device)


def make_steps(learner: Learner, data: dict, config, n_tasks: int, params) -> TrainSteps:
  B = config.meta_batch_size
  mesh = runtime.task_mesh(config.devices)
  runtime.check_divisible(B, mesh)
  data = runtime.replicate(data, mesh)
  tx = make_optimizer(config, params)
  chunk = runtime.task_chunk(config.task_chunk, B, mesh)
  parts = runtime.step_parts(config.step_parts, B, chunk, mesh, inner_loop=learner.name in INNER_LOOP)
  step_fn = make_train_step(
    learner,
    id_dropout=config.id_dropout,
    redraw=config.redraw,
    mesh=mesh,
    task_chunk=chunk,
    parts=parts,
  )
  helper = runtime.helper_device() if parts > 1 else None
  if data.get("buckets"):  # --length_buckets: each meta-batch from one bucket, its own padding
    from metarec_jax.data.buckets import make_bucket_order

    counts = [int(e["user"].shape[0]) for e in data["buckets"]]
    order_fn = make_bucket_order(counts, B, mesh)  # (key, order, bucket of each row)
    step_data = [{"episodes": e, "tables": data["tables"]} for e in data["buckets"]]
    return TrainSteps(step_fn, order_fn, step_data, sum(-(-c // B) for c in counts), mesh, tx, helper)
  plain_order = make_epoch_order(n_tasks, B, mesh)
  order_fn = lambda key: (*plain_order(key), None)  # noqa: E731
  return TrainSteps(step_fn, order_fn, data, -(-n_tasks // B), mesh, tx, helper)


def _start_state(steps: TrainSteps, params, config):
  state = create_train_state(jax.random.key(config.seed + 1), params, steps.tx)
  if steps.mesh is None:  # committed where the data is, as every later step's state is: one compile
    data = steps.step_data[0] if isinstance(steps.step_data, list) else steps.step_data
    state = jax.device_put(state, runtime.device_of(data))
  return state


def compile_steps(steps: TrainSteps, params, config) -> None:
  """Traces, lowers and compiles the step of every bucket for `params`' shapes (a step in parts:
  on both of its devices), so that a fit with these `steps` starts stepping at once (a thread can
  do this while another fit runs)."""
  train = runtime.replicate(_start_state(steps, params, config), steps.mesh)
  _, order, _ = steps.order_fn(jax.random.key(config.seed + 2))
  buckets = list(range(len(steps.step_data))) if isinstance(steps.step_data, list) else [None]
  helper = steps.helper_args(order)
  for b in buckets:
    d = steps.step_data if b is None else steps.step_data[b]
    if not isinstance(steps.step_fn, PartStep):
      steps.step_fn.lower(train, d, order).compile()
    else:
      steps.step_fn.compile(train, d, order, None if helper is None else bucket_helper(helper, b))


def _fit(
  learner, params, data, config, *, n_tasks, val_score, select, log, ckpt, resume, exit_at_step, steps, on_epoch
):
  B = config.meta_batch_size
  steps = steps or make_steps(learner, data, config, n_tasks, params)
  step_fn, order_fn, step_data, n_batches, mesh = (
    steps.step_fn,
    steps.order_fn,
    steps.step_data,
    steps.n_batches,
    steps.mesh,
  )
  state = runtime.replicate(
    FitState(
      train=_start_state(steps, params, config),
      epoch_key=jax.random.key(config.seed + 2),
      best_params=runtime.copy_tree(params),
      progress=Progress(),
    ),
    mesh,
  )

  # Started before the first validation score (its compile is part of the phase).
  bar = progress_lib.Progress(
    f"{learner.name}: meta-training", config.epochs, "epoch", every_s=float("inf")
  ).__enter__()
  if resume and ckpt is not None and ckpt.latest_step() is not None:
    done = ckpt.done()
    if done is not None:  # this fit had finished: its best params and summary
      logging.info("%s: finished before; restoring its best checkpoint (step %d)", learner.name, done["best_step"])
      bar.__exit__(None, None, None)
      if log:
        log.replace(learner.name, done["records"])
      return ckpt.restore_params(done["best_step"], params), done["info"]
    state = runtime.replicate(ckpt.restore(ckpt.latest_step(), state), mesh)
    if log:
      log.replace(learner.name, list(state.progress.records))
    logging.info(
      "%s: resumed from step %d (epoch %d, batch %d)",
      learner.name,
      int(state.train.step),
      state.progress.epoch,
      state.progress.row,
    )
  else:
    if config.epochs and val_score is not None:
      state = state.replace(progress=Progress(best_val=val_score(params)[select]))
    if ckpt is not None:
      ckpt.save(0, state, state.progress.best_val)

  def fail(step, epoch, what, last_loss):
    kept = f"; the last good checkpoint is step {ckpt.latest_step()} in {ckpt.directory}" if ckpt else ""
    raise FloatingPointError(
      f"{learner.name}: non-finite {what} at step {step} (epoch {epoch}); last finite training loss {last_loss}, "
      f"last validation {select} {state.progress.last_val}{kept}; lower --outer_lr or --inner_lr"
    )

  def check_losses(losses, epoch):
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
      last = float(losses[bad[0] - 1]) if bad[0] > 0 else state.progress.last_finite
      fail((epoch - 1) * n_batches + int(bad[0]) + 1, epoch, "training loss", last)

  def save(step, st, val=None):
    p = st.progress
    if not _all_finite(st.train.params):
      fail(step, p.epoch if p.row else p.epoch - 1, "parameters", p.losses[-1] if p.losses else p.last_finite)
    ckpt.save(step, st, val)

  bar.done = bar_start = state.progress.epoch - 1  # a resumed fit continues the count
  while state.progress.epoch <= config.epochs and state.progress.bad_epochs < config.patience:
    prog = state.progress
    epoch, t0 = prog.epoch, time.perf_counter()
    next_key, order, schedule = order_fn(state.epoch_key)
    schedule = None if schedule is None else np.asarray(schedule)  # one transfer an epoch
    helper = steps.helper_args(order)
    losses, row = list(prog.losses), prog.row
    while row < n_batches:  # segments between mid-epoch checkpoints (and the testing exit)
      first = (epoch - 1) * n_batches + row  # steps done before this segment
      stop = n_batches
      if ckpt is not None and ckpt.every:
        stop = min(stop, (first // ckpt.every + 1) * ckpt.every - (epoch - 1) * n_batches)
      if exit_at_step is not None and first < exit_at_step:
        stop = min(stop, exit_at_step - (epoch - 1) * n_batches)
      train, seg = run_epoch(step_fn, state.train, step_data, order, row, stop, schedule, helper)
      state, row = state.replace(train=train), stop
      losses += [float(x) for x in np.asarray(seg)]
      step = (epoch - 1) * n_batches + row
      if exit_at_step is not None and step == exit_at_step:
        logging.warning("exit at step %d (METAREC_EXIT_AT_STEP)", step)
        logging.flush()
        os._exit(75)
      if ckpt is not None and ckpt.every and step % ckpt.every == 0 and row < n_batches:
        check_losses(np.array(losses), epoch)
        state = state.replace(
          progress=dataclasses.replace(
            prog, row=row, losses=tuple(losses), train_time=prog.train_time + time.perf_counter() - t0
          )
        )
        save(step, state)
    losses = np.array(losses)
    epoch_time = time.perf_counter() - t0
    check_losses(losses, epoch)
    val = val_score(state.train.params) if val_score is not None else {}
    record = {
      "learner": learner.name,
      "epoch": epoch,
      "step": int(epoch * n_batches),
      "train/loss": float(losses.mean()),
      "time/epoch_s": epoch_time,
      "time/tasks_per_s": (n_batches - prog.row) * B / epoch_time,
    }
    record.update({f"val/{k}": v for k, v in val.items() if k.rpartition("/")[2] in LOGGED_VAL})
    if log:
      log.write(record)
    bar.update(1, note=f"val {select} {val.get(select, float('nan')):.4f}")
    left = progress_lib.eta(epoch - bar_start, config.epochs - bar_start, time.perf_counter() - bar.t0)
    logging.info(
      "%s epoch %d/%d: train loss %.4f, val %s %.4f, val nDCG@3 %.4f (%.1fs%s)",
      learner.name,
      epoch,
      config.epochs,
      record["train/loss"],
      select,
      val.get(select, float("nan")),
      val.get("ndcg@3", float("nan")),
      epoch_time,
      f"; {left} at most" if left else "",
    )
    step = epoch * n_batches
    improved = val.get(select) is not None and (prog.best_val is None or val[select] < prog.best_val)
    best = dict(best_val=val[select], best_epoch=epoch, best_step=step) if improved else {}
    state = state.replace(
      epoch_key=next_key,
      best_params=runtime.copy_tree(state.train.params) if improved else state.best_params,
      progress=dataclasses.replace(
        prog,
        epoch=epoch + 1,
        row=0,
        losses=(),
        bad_epochs=0 if improved else prog.bad_epochs + 1,
        train_time=prog.train_time + epoch_time,
        last_finite=float(losses[-1]),
        last_val=val.get(select),
        records=prog.records + (record,),
        **best,
      ),
    )
    if ckpt is not None and (improved or not ckpt.every or step % ckpt.every == 0):
      save(step, state, val.get(select))
    if on_epoch is not None:
      on_epoch(epoch)
  bar.__exit__(None, None, None)
  prog = state.progress
  n_steps = int(state.train.step)
  info = {
    "best_epoch": prog.best_epoch,
    f"best_val/{select}": prog.best_val if prog.best_val is not None else float("inf"),
    "epochs_run": prog.epoch - 1,
    "steps": n_steps,
    "train_time_s": prog.train_time,
    "tasks_per_s": n_steps * B / prog.train_time if prog.train_time else None,
  }
  if ckpt is not None:
    save(n_steps, state)  # the end (a no-op when this step is saved already)
    ckpt.mark_done({"best_step": prog.best_step, "info": info, "records": list(prog.records)})
  return state.best_params, info
