"""What lets one run use two cores: the baselines' thread takes the learner's fits from a
`Handoff` instead of fitting them again, a `Deferred` compiles the learner's steps while the
pooled network trains (protocol.train_and_evaluate), and the learner's steps run a part of each
meta-batch on the baselines' device (`training.step.PartStep`)."""

from __future__ import annotations

import threading

from metarec_jax.config import INIT_FROM_POOLED, Config
from metarec_jax.learners import POOLED, REUSE, TRAIN, get_spec


class Deferred:
  """`fn()` in a thread of its own once `start()` is called; `result()` starts it if need be,
  waits, and returns its value (or raises its error)."""

  def __init__(self, fn):
    self.fn, self.thread, self.value, self.error = fn, None, None, None
    self.lock = threading.Lock()

  def _run(self):
    try:
      self.value = self.fn()
    except BaseException as e:  # raised again by result(), in the caller's thread
      self.error = e

  def start(self) -> None:
    with self.lock:
      if self.thread is None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

  def result(self):
    self.start()
    self.thread.join()
    if self.error is not None:
      raise self.error
    return self.value


def fits_of(name: str, config: Config) -> set[str]:
  """The trained learners a row of `name` fits (or reuses the parameters of)."""
  spec = get_spec(name)
  if spec.source == REUSE:
    return fits_of(spec.params_from, config)
  if spec.source != TRAIN:
    return set()
  warm = config.init == INIT_FROM_POOLED and spec.warm_start is not None and name != POOLED
  return {name} | (fits_of(POOLED, config) if warm else set())


class Handoff:
  """The fits of the learner under study (`names`: the pooled network it starts from, say),
  published by the main thread for the baselines' thread, so each is trained once per run."""

  def __init__(self, names: set[str]):
    self.names, self.params, self.closed = names, {}, False
    self.cond = threading.Condition()

  def publish(self, name: str, params) -> None:
    with self.cond:
      self.params[name] = params
      self.cond.notify_all()

  def close(self) -> None:
    """Nothing more will be published (the learner's row has ended)."""
    with self.cond:
      self.closed = True
      self.cond.notify_all()

  def take(self, name: str):
    with self.cond:
      self.cond.wait_for(lambda: name in self.params or self.closed)
      if name not in self.params:
        raise RuntimeError(f"the learner's row ended without a fit of {name}")
      return self.params[name]
