"""Evaluation: a jitted, vmapped predict per learner, chunked over tasks (one compile serves
every chunk), masked metrics, and an `Evaluator` that uploads each split to the device once."""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from metarec_jax.data.episodes import device_episodes, featurize_episodes
from metarec_jax.data.tasks import Episodes
from metarec_jax.labels import LINKS, LabelSpec
from metarec_jax.learners import Learner
from metarec_jax.runtime import device_of


def make_predict_fn(learner: Learner) -> Callable:
  """predict(params, tables, episodes) -> [task, Q] query predictions in label space (through
  the learner's link: probabilities for binary labels), vmapped and jitted. Every option that
  reaches it through `params` is traced, so one function serves a whole validation grid."""

  link = LINKS[learner.link]

  def run(params, tables, ep):
    episode = featurize_episodes(tables, ep)

    def one(support, qx):
      return link(learner.predict(params, learner.adapt(params, support), qx))

    return jax.vmap(one)(episode.support, episode.query.x)

  return jax.jit(run)


def predict_episodes(
  predict_fn, params, tables, episodes: Episodes, chunk: int, chunks: list[dict] | None = None
) -> np.ndarray:
  """Predicts every task in fixed-size chunks (padding the last), so one compile serves all.

  The chunks go to the device once (pass `chunks` from `device_episodes` to reuse them
  across calls).
  """
  T = len(episodes)
  if T == 0:
    return np.zeros((0, episodes.query_item.shape[1]), np.float32)
  if chunks is None:
    chunks = device_episodes(episodes, chunk)
  outs = [predict_fn(params, tables, c) for c in chunks]
  return np.concatenate([np.asarray(o) for o in outs])[:T]


_SCORE_FNS: dict = {}


def _padded_rows(n: int) -> int:
  """The task count a split is scored at: the next power of two (at least 64), so a run's
  splits share a few compiled metric functions."""
  return max(64, 1 << (n - 1).bit_length())


def score(pred: np.ndarray, episodes: Episodes, ks=(1, 3, 5), label: LabelSpec | None = None) -> dict[str, float]:
  """Query metrics of [task, Q] label-space predictions (labels.LabelSpec.score; default:
  ratings on the 1-5 scale, errors of predictions clipped to it).

  Jitted once per (label, ks) and padded task count: the padding tasks have empty queries,
  which every metric leaves out (a task without a valid query entry does not count)."""
  if len(episodes) == 0:
    return {"n_tasks": 0}
  label = label or LabelSpec()
  key = (label, tuple(ks))
  if key not in _SCORE_FNS:
    _SCORE_FNS[key] = jax.jit(lambda p, y, m: label.score(p, y, m, ks=key[1]))
  T = len(episodes)
  rows = ((0, _padded_rows(T) - T), (0, 0))
  m = _SCORE_FNS[key](
    np.pad(np.asarray(pred, np.float32), rows),
    np.pad(np.asarray(episodes.query_rating, np.float32), rows),
    np.pad(np.asarray(episodes.query_mask, bool), rows),
  )
  out = {k: float(v) for k, v in m.items()}
  out["n_tasks"] = len(episodes)
  return out


class Evaluator:
  """Scores learners on a run's splits. Each split (and each few-shot cap of one) goes to
  the device once per run; each learner's predict function is built once. With a `helper`
  device, a split's chunks alternate between the tables' device and the helper, and run side by
  side (every chunk's predictions are the same on either device)."""

  def __init__(
    self,
    tables: dict,
    *,
    chunk: int,
    ks=(1, 3, 5),
    label: LabelSpec | None = None,
    buckets: int = 0,
    bucket_sizes: tuple[int, ...] | None = None,
    helper=None,
  ):
    self.tables, self.chunk, self.ks, self.label = tables, chunk, tuple(ks), label
    # --length_buckets: each split's tasks by support length (data/buckets.py), at the training
    # buckets' sizes when given (every split then reuses the same few compiled shapes)
    self.buckets, self.bucket_sizes = buckets, bucket_sizes
    self.devices = (device_of(tables),) + (() if helper is None or helper == device_of(tables) else (helper,))
    self._tables = {self.devices[0]: tables}
    self._arrays: dict = {}
    self._fns: dict = {}

  def variant(self, *, device=None, chunk: int | None = None, helper=None) -> "Evaluator":
    """An Evaluator of the same splits, metrics and buckets with its own caches: its tables on
    `device` (None: where they are), `chunk` tasks a call (None: the same) and `helper` (not
    inherited)."""
    return Evaluator(
      self.tables if device is None else jax.device_put(self.tables, device),
      chunk=self.chunk if chunk is None else chunk,
      ks=self.ks,
      label=self.label,
      buckets=self.buckets,
      bucket_sizes=self.bucket_sizes,
      helper=helper,
    )

  def on_device(self, device) -> "Evaluator":
    """This Evaluator with its tables on `device` and no helper: the computations run where
    their inputs are."""
    return self.variant(device=device)

  def predict_fn(self, learner: Learner) -> Callable:
    if id(learner) not in self._fns:
      self._fns[id(learner)] = (learner, make_predict_fn(learner))  # the learner kept alive with its id
    return self._fns[id(learner)][1]

  def _parts(self, key, episodes: Episodes) -> list:
    """[(task indices of the part or None for all, its episodes, its chunks on the devices)],
    uploaded once per `key`."""
    if key not in self._arrays:
      parts = [(None, episodes)]
      if self.buckets > 1:  # each bucket at its own padding, one compile each
        from metarec_jax.data.buckets import split_by_length

        b = split_by_length(episodes, self.buckets, self.bucket_sizes)
        parts = list(zip(b.members, b.episodes))
      out, first = [], 0
      for idx, part in parts:  # the chunks alternate between the devices across the whole split
        devices = self.devices[first % len(self.devices) :] + self.devices[: first % len(self.devices)]
        # one device: left uncommitted, so that parameters on a mesh take them along
        chunks = device_episodes(part, self.chunk, devices if len(devices) > 1 else None)
        out.append((idx, part, chunks))
        first += len(chunks)
      self._arrays[key] = out
    return self._arrays[key]

  def predict(self, learner_or_fn, params, key, episodes: Episodes) -> np.ndarray:
    """[task, Q] predictions on `episodes`, cached on the device under `key`."""
    fn = self.predict_fn(learner_or_fn) if isinstance(learner_or_fn, Learner) else learner_or_fn
    if not len(episodes):
      return np.zeros(episodes.query_item.shape, np.float32)
    for d in self.devices[1:]:
      if d not in self._tables:
        self._tables[d] = jax.device_put(self.tables, d)
    here = {self.devices[0]: params, **{d: jax.device_put(params, d) for d in self.devices[1:]}}
    # every chunk dispatched before any is read back: the devices run side by side
    pending = [
      (idx, len(part), [fn(here[d], self._tables[d], c) for c in chunks for d in [device_of(c)]])
      for idx, part, chunks in self._parts(key, episodes)
    ]
    out = np.zeros(episodes.query_item.shape, np.float32)
    for idx, n, outs in pending:
      pred = np.concatenate([np.asarray(o) for o in outs])[:n]
      if idx is None:
        out[:] = pred
      else:
        out[idx] = pred
    return out

  def score(self, learner_or_fn, params, key, episodes: Episodes, *, ks=None) -> dict[str, float]:
    pred = self.predict(learner_or_fn, params, key, episodes)
    return score(pred, episodes, self.ks if ks is None else ks, self.label)
