"""Metrics as data: config.json once, metrics.jsonl per log step, a final JSON. Atomic writes."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from typing import Any

import numpy as np


def to_jsonable(obj: Any) -> Any:
  if isinstance(obj, dict):
    return {str(k): to_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_jsonable(v) for v in obj]
  if hasattr(obj, "shape") and getattr(obj, "shape", None) == ():
    obj = obj.item()
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  if isinstance(obj, (np.integer,)):
    return int(obj)
  if isinstance(obj, (np.floating, float)):
    obj = float(obj)
    return obj if math.isfinite(obj) else None
  return obj


def round_floats(obj: Any, digits: int = 6) -> Any:
  """`obj` with every float rounded to `digits` significant digits (the metrics are float32
  means: digits past the sixth are noise, not information)."""
  if isinstance(obj, dict):
    return {k: round_floats(v, digits) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(round_floats(v, digits) for v in obj)
  if isinstance(obj, (float, np.floating)) and math.isfinite(obj):
    return float(f"{float(obj):.{digits}g}")
  return obj


def mean_std(values) -> list | None:
  """[mean, std, n] of the non-None values (population std), or None if there are none."""
  values = [float(v) for v in values if v is not None]
  return [float(np.mean(values)), float(np.std(values)), len(values)] if values else None


def writes_files() -> bool:
  """Whether this process writes the run's files: process 0 of a multi-process run (every process
  computes the same values; orbax coordinates the checkpoints itself), the only one otherwise."""
  import jax

  return jax.process_index() == 0


@contextlib.contextmanager
def atomic_path(path: str):
  """Yields a temp path in `path`'s folder; renames it over `path` on success, removes it on error.
  On a process that does not write files (`writes_files`), the path is in a temporary folder that
  is removed afterwards, so callers need no check of their own."""
  if not writes_files():
    with tempfile.TemporaryDirectory() as scratch:
      yield os.path.join(scratch, os.path.basename(path))
    return
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
  os.close(fd)
  try:
    yield tmp
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_text_atomic(path: str, text: str) -> None:
  with atomic_path(path) as tmp, open(tmp, "w") as f:
    f.write(text)


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes JSON to a temp file in the same folder, then renames it over `path`."""
  with atomic_path(path) as tmp, open(tmp, "w") as f:
    json.dump(to_jsonable(obj), f, indent=2, sort_keys=True)
    f.write("\n")
    f.flush()
    os.fsync(f.fileno())


class MetricsLog:
  """Appends one JSON line per log step to <workdir>/metrics.jsonl (truncated unless `append`)."""

  def __init__(self, workdir: str, append: bool = False):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.active = writes_files()
    if self.active:
      os.makedirs(workdir, exist_ok=True)
      if not append or not os.path.exists(self.path):
        open(self.path, "w").close()

  def write(self, record: dict) -> None:
    if self.active:
      with open(self.path, "a") as f:
        f.write(json.dumps(to_jsonable(record), sort_keys=True) + "\n")

  def replace(self, learner: str, records: list[dict]) -> None:
    """Drops `learner`'s lines and appends `records` (a resumed fit's log up to its checkpoint), atomically."""
    if not self.active:
      return
    with open(self.path) as f:
      keep = [line for line in f if line.strip() and json.loads(line).get("learner") != learner]
    keep += [json.dumps(to_jsonable(r), sort_keys=True) + "\n" for r in records]
    write_text_atomic(self.path, "".join(keep))
