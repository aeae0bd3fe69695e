"""Progress of long phases: a start line, progress with an estimate of the time left, an end line.

One rule for every phase (set-up, baseline grids, epochs, evaluation, the compare grid,
downloads): the start and the end are absl log lines. In between, a terminal on stderr gets a
tqdm bar; anything else (a log file, CI) gets at most one log line per `every_s` seconds, so a
redirected run stays quiet.

  with Progress("ml-1m set-up: co-occurrence", total=3706, unit="item") as bar:
    for ...:
      bar.update(1)
"""

from __future__ import annotations

import sys
import time

from absl import logging


def _duration(seconds: float) -> str:
  seconds = max(0.0, float(seconds))
  if seconds < 60:
    return f"{seconds:.0f} s"
  if seconds < 3600:
    return f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"
  return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:02.0f} min"


def eta(done: float, total: float, elapsed: float) -> str:
  """'about 1 min 20 s left' from a rate; '' before anything is done."""
  if done <= 0 or total is None or done >= total:
    return ""
  return f"about {_duration(elapsed / done * (total - done))} left"


class Progress:
  """A phase of `total` units. `update(n, note=...)` adds n done units; `note` (e.g. the last
  loss) is shown with the progress. Works as a context manager; the end line gives the time."""

  def __init__(
    self, phase: str, total: int | None, unit: str = "step", every_s: float = 30.0, stream=None, scale: bool = False
  ):
    """`scale`: a bar of bytes (unit "B") shown in kB / MB."""
    self.phase, self.total, self.unit, self.every_s, self.scale = phase, total, unit, every_s, scale
    self.stream = stream if stream is not None else sys.stderr
    self.done, self.bar = 0, None

  def __enter__(self) -> "Progress":
    self.t0 = self.last = time.perf_counter()
    size = f" ({self.total} {self.unit}s)" if self.total is not None else ""
    logging.info("%s: started%s", self.phase, size)
    if _is_terminal(self.stream):
      import tqdm

      self.bar = tqdm.tqdm(
        total=self.total,
        desc=self.phase,
        unit=self.unit,
        leave=False,
        file=self.stream,
        unit_scale=self.scale,
        unit_divisor=1024 if self.scale else 1000,
      )
    return self

  def update(self, n: int = 1, note: str = "") -> None:
    self.done += n
    if self.bar is not None:
      self.bar.update(n)
      if note:
        self.bar.set_postfix_str(note, refresh=False)
      return
    now = time.perf_counter()
    if now - self.last >= self.every_s and (self.total is None or self.done < self.total):
      self.last = now
      of = f"/{self.total}" if self.total is not None else ""
      left = eta(self.done, self.total, now - self.t0)
      extra = "; ".join(x for x in (note, left) if x)
      logging.info("%s: %d%s %ss%s", self.phase, self.done, of, self.unit, f"; {extra}" if extra else "")

  def __exit__(self, kind, value, tb) -> None:
    if self.bar is not None:
      self.bar.close()
    if kind is None:
      logging.info("%s: done in %s", self.phase, _duration(time.perf_counter() - self.t0))


def _is_terminal(stream) -> bool:
  try:
    return bool(stream.isatty())
  except (AttributeError, ValueError):
    return False
