"""Line-oriented reading with errors that name the file, the line and the field."""

from __future__ import annotations

import csv
import io
import os

import numpy as np
from absl import logging

from metarec_jax.data.schema import DataError

DATA_DIR_ENV = "METAREC_DATA_DIR"


def resolve_data_dir(data_dir: str | None) -> str:
  """`data_dir` if given, else $METAREC_DATA_DIR, else ./data (logged: which one, and why)."""
  if data_dir:
    return data_dir
  if os.environ.get(DATA_DIR_ENV):
    logging.info("data folder: $%s=%s", DATA_DIR_ENV, os.environ[DATA_DIR_ENV])
    return os.environ[DATA_DIR_ENV]
  logging.info("data folder: ./data (no --data_dir given and $%s is unset)", DATA_DIR_ENV)
  return "data"


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


# --csv_delimiter names for the characters a shell makes awkward.
DELIMITERS = {"tab": "\t", "semicolon": ";", "comma": ",", "pipe": "|"}


def resolve_delimiter(value: str) -> str:
  """A --csv_delimiter value (a name of DELIMITERS or one character) -> the character."""
  char = DELIMITERS.get(value, value)
  if len(char) != 1 or char in '"\r\n':
    raise ValueError(
      f"csv_delimiter must be one character (not a quote or line break) or one of {', '.join(DELIMITERS)}, "
      f"got {value!r}"
    )
  return char


def read_csv_rows(path: str, *, delimiter: str = ",", source: str = "") -> list[tuple[int, list[str]]]:
  """Reads a CSV as spreadsheets, pandas and databases write it: (line_number, fields) rows.

  Python's `csv` rules (RFC 4180 quoting: a cell holding the delimiter, a quote or a line break
  is quoted, a quote inside it doubled), UTF-8 with or without a byte-order mark, LF or CRLF
  line ends, spaces around cells trimmed, blank lines and lines whose first cell starts with
  `#` skipped. The first row (the header) sets the field count; a row with another count, a
  NUL byte (a UTF-16 or binary file), bytes that are not UTF-8 or an unterminated quote raise
  one DataError naming the file and line. The line number is a record's first line.
  """
  require_file(path, source=source)
  with open(path, "rb") as f:
    raw = f.read()
  if b"\x00" in raw:
    line = raw[: raw.index(b"\x00")].count(b"\n") + 1
    raise DataError(f"{path}:{line}: NUL byte; expected a UTF-8 text CSV (is it UTF-16 or binary? save it as UTF-8)")
  try:
    text = raw.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = raw[: e.start].count(b"\n") + 1
    raise DataError(
      f"{path}:{line}: bytes are not valid utf-8 (byte 0x{raw[e.start]:02x} at offset {e.start})"
    ) from None
  reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
  rows, n_fields, start = [], None, 1
  try:
    for fields in reader:
      line, start = start, reader.line_num + 1
      fields = [f.strip() for f in fields]
      if not any(fields) or fields[0].startswith("#"):
        continue
      if n_fields is None:
        n_fields = len(fields)
      elif len(fields) != n_fields:
        shown = delimiter.join(fields)[:80]
        raise DataError(
          f"{path}:{line}: expected {n_fields} fields separated by {delimiter!r} (as in the header), found "
          f"{len(fields)}: {shown!r}; quote a cell that holds {delimiter!r}"
        )
      rows.append((line, fields))
  except csv.Error as e:
    raise DataError(f"{path}:{start}: not a valid CSV row ({e}); a quoted cell must end with a quote") from None
  if not rows:
    raise DataError(f"{path}: file is empty (expected a header and rows separated by {delimiter!r})")
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
