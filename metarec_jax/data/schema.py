"""The typed in-memory dataset every loader produces."""

from __future__ import annotations

import dataclasses

import numpy as np


class DataError(ValueError):
  """Bad input data. The message names the file, the line or field, and what was expected."""


FIELD_KINDS = ("categorical", "multihot", "dense", "text")
# Float-vector kinds: "dense" (made from training interactions) and "text" (a sentence vector of
# the item's text: content, which the fold-ins' content regression also reads).
VECTOR_KINDS = ("dense", "text")


@dataclasses.dataclass(frozen=True)
class FieldSpec:
  """One embedded feature field.

  name: "user/<field>" or "item/<field>".
  kind: "categorical" (table shape [n]), "multihot" (table shape [n, k], -1 padded) or
    "dense" (float table [n, k]: a fixed vector per row, projected by a learned matrix) or
    "text" (the same, a sentence-encoder vector of the item's text; `text_encoder.py`).
  vocab_size: number of distinct ids; valid ids are 0..vocab_size-1 ("dense": the width k).
  """

  name: str
  kind: str
  vocab_size: int

  def __post_init__(self):
    if self.kind not in FIELD_KINDS:
      raise ValueError(f"FieldSpec {self.name!r}: kind must be one of {', '.join(FIELD_KINDS)}, got {self.kind!r}")
    if not self.name.startswith(("user/", "item/")):
      raise ValueError(f"FieldSpec name must start with 'user/' or 'item/', got {self.name!r}")


@dataclasses.dataclass
class Dataset:
  """Ratings plus named user and item features, with contiguous integer ids.

  Ratings are parallel arrays of length R. Feature tables are keyed by field name
  ("user/gender", "item/genre", ...): categorical tables are int32 [n], multi-hot
  tables are int32 [n, k] padded with -1. `user_ids[u]` / `item_ids[i]` map a
  contiguous index back to the id in the source files.
  """

  name: str
  users: np.ndarray  # [R] int32
  items: np.ndarray  # [R] int32
  ratings: np.ndarray  # [R] float32
  timestamps: np.ndarray  # [R] int64 (0 where the source has none)
  user_ids: np.ndarray  # [n_users] original ids
  item_ids: np.ndarray  # [n_items] original ids
  fields: tuple[FieldSpec, ...]
  features: dict[str, np.ndarray]
  item_release: np.ndarray  # [n_items] float64 release time (unix seconds); nan if unknown
  item_titles: list[str] | None = None
  # "item/<name>" -> each item's text: "text" fields once encoded (--text_encoder; unused without)
  item_texts: dict[str, list[str]] | None = None
  rating_scale: tuple[float, float] = (1.0, 5.0)
  # A fixed cold-start split (a benchmark's own): {"new_item": bool [n_items], "new_users",
  # "warm_users": index arrays}; None: split by time (data/tasks.py).
  split_hint: dict | None = None
  protocol_report: dict | None = None  # what a protocol loader checked (counts), for the logs
  implicit: bool = False  # 0/1 implicit feedback (labels are always binary)
  # A benchmark's own episodes: {"train" | "val" | <scenario>: [(user, support_items,
  # support_labels, query_items, query_labels), ...]}; used as they are (data/tasks.py).
  fixed_episodes: dict | None = None
  # [R] the generator's noiseless rating of each pair (synthetic data only): the oracle's input.
  expected: np.ndarray | None = None

  @property
  def n_users(self) -> int:
    return int(len(self.user_ids))

  @property
  def n_items(self) -> int:
    return int(len(self.item_ids))

  @property
  def n_ratings(self) -> int:
    return int(len(self.ratings))

  def validate(self) -> None:
    """Cheap structural checks shared by every loader."""
    n = len(self.ratings)
    for name in ("users", "items", "timestamps"):
      if len(getattr(self, name)) != n:
        raise DataError(f"{self.name}: ratings column {name!r} has {len(getattr(self, name))} rows, expected {n}")
    if n and (self.users.min() < 0 or self.users.max() >= self.n_users):
      raise DataError(f"{self.name}: user index out of range [0, {self.n_users})")
    if n and (self.items.min() < 0 or self.items.max() >= self.n_items):
      raise DataError(f"{self.name}: item index out of range [0, {self.n_items})")
    for name, texts in (self.item_texts or {}).items():
      if not name.startswith("item/") or len(texts) != self.n_items:
        raise DataError(f"{self.name}: text {name!r} must be named item/<name> and give one text per item")
    for spec in self.fields:
      table = self.features.get(spec.name)
      if table is None:
        raise DataError(f"{self.name}: feature table {spec.name!r} is missing")
      rows = self.n_users if spec.name.startswith("user/") else self.n_items
      if table.shape[0] != rows:
        raise DataError(f"{self.name}: feature {spec.name!r} has {table.shape[0]} rows, expected {rows}")
      if spec.kind in VECTOR_KINDS:
        if table.shape[1:] != (spec.vocab_size,) or not np.isfinite(table).all():
          raise DataError(
            f"{self.name}: dense feature {spec.name!r} must be a finite [{rows}, {spec.vocab_size}] "
            f"table, got shape {table.shape}"
          )
        continue
      if table.size and (table.max() >= spec.vocab_size or table.min() < -1):
        raise DataError(f"{self.name}: feature {spec.name!r} has ids outside [0, {spec.vocab_size})")
      if spec.kind == "categorical" and table.ndim == 1 and table.size and table.min() < 0:
        raise DataError(f"{self.name}: categorical feature {spec.name!r} has a missing id")
