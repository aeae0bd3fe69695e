"""Checkpoints of one meta-training run (orbax): the last k plus the best on validation.

One `FitCheckpoints` per fitted learner, under `<workdir>/checkpoints/<learner>/`. A step
stores one `training.state.FitState`, as three items:
  params    the meta-parameters (what evaluation and `recommend` restore);
  state     the rest of its arrays: optimiser state, rng, step, the epoch-order key and the
            best parameters so far;
  progress  JSON: epoch, position in the epoch, the epoch's losses so far, the best
            validation criterion and its step, patience counter, the metrics.jsonl records.
Checkpoints saved right after a validation carry it as orbax metrics, and the preservation
policy keeps the latest `keep` steps plus the one with the lowest validation criterion. Saves
are written in a thread while training goes on. A finished fit writes `done.json` (its summary)
once its checkpoints are on disk; resuming a finished fit restores its best params.
"""

from __future__ import annotations

import dataclasses
import json
import logging as pylogging
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from metarec_jax import writers
from metarec_jax.training.state import Progress


def _abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class FitCheckpoints:
  def __init__(self, directory: str, *, keep: int = 3, every: int = 0):
    if keep < 1:
      raise ValueError(f"keep_checkpoints must be >= 1, got {keep}")
    if every < 0:
      raise ValueError(f"checkpoint_every must be >= 0 (0: at epoch ends and the end only), got {every}")
    self.directory = os.path.abspath(directory)
    self.every = every
    policy = pp.AnyPreservationPolicy(
      [
        pp.LatestN(keep),
        pp.BestN(get_metric_fn=lambda m: -m["val"], n=1, keep_checkpoints_without_metrics=False),
      ]
    )
    # A save killed half-way leaves a "<step>.orbax-checkpoint-tmp*" folder, which orbax never
    # lists as a step; remove such leftovers here, synchronously (orbax's own cleanup option runs
    # in a background thread that can outlive a process exiting on an input error).
    if os.path.isdir(self.directory) and writers.writes_files():
      for name in os.listdir(self.directory):
        if ".orbax-checkpoint-tmp" in name:
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
    # Asynchronous: a save copies the arrays and returns, and orbax writes them in a thread while
    # training goes on (the next save, a read and `close` wait for it). A process killed mid-write
    # leaves a temp folder, removed above on the next start; a resume then starts from the save before.
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, enable_async_checkpointing=True, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("params", "state", "progress"))

  # -- saving --------------------------------------------------------------------------------
  def save(self, step: int, state, val: float | None = None) -> None:
    """Saves the FitState `state` as `step` (orbax writes to a temp folder in a thread and renames
    it when done); `val` is its validation criterion, when it was just validated."""
    self.manager.wait_until_finished()
    if step in self.manager.all_steps():
      return
    arrays = state.arrays()
    params = arrays.pop("params")
    self.manager.save(
      step,
      args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        state=ocp.args.StandardSave(arrays),
        progress=ocp.args.JsonSave(writers.to_jsonable(state.progress.to_json())),
      ),
      metrics=None if val is None else {"val": float(val)},
      force=True,
    )

  def mark_done(self, summary: dict) -> None:
    self.manager.wait_until_finished()  # done.json only once every checkpoint is on disk
    writers.write_json_atomic(os.path.join(self.directory, "done.json"), summary)

  # -- reading -------------------------------------------------------------------------------
  def latest_step(self) -> int | None:
    self.manager.wait_until_finished()
    return self.manager.latest_step()

  def steps(self) -> list[int]:
    self.manager.wait_until_finished()
    return sorted(self.manager.all_steps())

  def done(self) -> dict | None:
    path = os.path.join(self.directory, "done.json")
    if not os.path.isfile(path):
      return None
    with open(path) as f:
      return json.load(f)

  def restore_params(self, step: int, like) -> Any:
    self.manager.wait_until_finished()
    out = self.manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(_abstract(like))))
    return jax.tree.unflatten(jax.tree.structure(like), jax.tree.leaves(out.params))

  def restore(self, step: int, like):
    """The FitState saved as `step`, shaped like the FitState `like`."""
    self.manager.wait_until_finished()
    arrays = like.arrays()
    params_like = arrays.pop("params")
    out = self.manager.restore(
      step,
      args=ocp.args.Composite(
        params=ocp.args.StandardRestore(_abstract(params_like)),
        state=ocp.args.StandardRestore(_abstract(arrays)),
        progress=ocp.args.JsonRestore(),
      ),
    )
    rest = jax.tree.unflatten(jax.tree.structure(arrays), jax.tree.leaves(out.state))
    rest["params"] = jax.tree.unflatten(jax.tree.structure(params_like), jax.tree.leaves(out.params))
    return like.with_arrays(rest, Progress.from_json(dict(out.progress)))

  def best_step(self) -> int | None:
    """The step of the best validation criterion, from the latest checkpoint's progress (or done.json)."""
    done = self.done()
    if done is not None:
      return done["best_step"]
    step = self.latest_step()
    if step is None:
      return None
    out = self.manager.restore(step, args=ocp.args.Composite(progress=ocp.args.JsonRestore()))
    return out.progress["best_step"]

  def close(self) -> None:
    self.manager.close()


def checkpoint_dir(workdir: str, learner: str) -> str:
  return os.path.join(workdir, "checkpoints", learner)


class _QuietOrbax(pylogging.Filter):
  """Drops orbax's per-save INFO lines (several per checkpoint) from the absl log."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    return record.levelno >= pylogging.WARNING or "orbax" not in record.pathname


pylogging.getLogger("absl").addFilter(_QuietOrbax())


# Config fields that do not change a run's results: a resumed run may differ in them.
RESUME_FREE_FIELDS = (
  *("data_dir", "devices", "overlap_baselines", "task_chunk", "checkpoints", "checkpoint_every"),
  *("keep_checkpoints", "eval_chunk"),
)


def check_resumable(config, workdir: str) -> None:
  """Raises ValueError naming the first field where `config` differs from the run saved in `workdir`."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    return
  with open(path) as f:
    saved = json.load(f)
  now = writers.to_jsonable(dataclasses.asdict(config))  # config: a config.Config
  for k in sorted(set(saved) | set(now)):
    if k not in RESUME_FREE_FIELDS and saved.get(k) != now.get(k):
      raise ValueError(
        f"--resume: {path} has {k}={saved.get(k)!r} but this run has {k}={now.get(k)!r}; "
        "resume with the same flags or use a new --workdir"
      )
