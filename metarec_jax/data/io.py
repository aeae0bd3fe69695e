"""Line-oriented reading with errors that name the file, the line and the field."""

from __future__ import annotations

import os

import numpy as np
from absl import logging

from metarec_jax.data.schema import DataError

DATA_DIR_ENV = "METAREC_DATA_DIR"


def resolve_data_dir(data_dir: str | None) -> str:
  """`data_dir` if given, else $METAREC_DATA_DIR, else ./data."""
  return data_dir or os.environ.get(DATA_DIR_ENV) or "data"


def require_file(path: str, *, source: str) -> None:
  if not os.path.isfile(path):
    raise DataError(f"{path}: file not found. {source}")


def read_rows(
  path: str, *, sep: str, n_fields: int, encoding: str = "utf-8", skip_header: bool = False, source: str = ""
) -> list[tuple[int, list[str]]]:
  """Reads a delimited text file into (line_number, fields) rows.

  Every row must have exactly `n_fields` fields. Blank lines are skipped. An empty
  file, a wrong separator, a wrong field count or bytes that are not `encoding`
  raise one DataError naming the file and line.
  """
  require_file(path, source=source)
  with open(path, "rb") as f:
    raw = f.read()
  try:
    text = raw.decode(encoding)
  except UnicodeDecodeError as e:
    line = raw[: e.start].count(b"\n") + 1
    raise DataError(
      f"{path}:{line}: bytes are not valid {encoding} (byte 0x{raw[e.start]:02x} at offset {e.start})"
    ) from None
  rows = []
  lines = text.splitlines()
  start = 1 if skip_header else 0
  for i in range(start, len(lines)):
    line = lines[i]
    if not line.strip():
      continue
    parts = line.split(sep)
    if len(parts) != n_fields:
      raise DataError(
        f"{path}:{i + 1}: expected {n_fields} fields separated by {sep!r}, found {len(parts)}: {line[:80]!r}"
      )
    rows.append((i + 1, parts))
  if not rows:
    raise DataError(f"{path}: file is empty (expected rows of {n_fields} fields separated by {sep!r})")
  return rows


def parse_int(path: str, line: int, field: str, value: str) -> int:
  try:
    return int(value)
  except ValueError:
    raise DataError(f"{path}:{line}: field {field!r} must be an integer, got {value!r}") from None


def parse_float(path: str, line: int, field: str, value: str) -> float:
  try:
    out = float(value)
  except ValueError:
    raise DataError(f"{path}:{line}: field {field!r} must be a number, got {value!r}") from None
  if out != out or out in (float("inf"), float("-inf")):
    raise DataError(f"{path}:{line}: field {field!r} must be a finite number, got {value!r}")
  return out


def dedupe_keep_last(users, items, ratings, stamps, *, path: str):
  """Duplicate (user, item) rows: keep the last one in file order, and log how many were dropped."""
  key = users.astype(np.int64) * (int(items.max()) + 1) + items
  _, last_rev = np.unique(key[::-1], return_index=True)
  keep = np.sort(len(key) - 1 - last_rev)
  if len(keep) != len(key):
    logging.warning("%s: %d duplicate (user, item) rows; kept the last of each", path, len(key) - len(keep))
  return users[keep], items[keep], ratings[keep], stamps[keep]
