"""Dataset names -> loaders."""

from __future__ import annotations

import os

from metarec_jax.data import cache, csv_data, lastfm, melu_ml1m, movielens, synthetic
from metarec_jax.data.io import resolve_data_dir, resolve_delimiter
from metarec_jax.data.schema import Dataset
from metarec_jax.data_sources import DATASET_FOLDERS

DATASETS = ("synthetic", "ml-100k", "ml-1m", "lastfm", "hetrec-lastfm", "csv")


def load_dataset(
  name: str,
  *,
  data_dir: str | None = None,
  seed: int = 0,
  synthetic_users: int = 600,
  synthetic_items: int = 800,
  synthetic_min_ratings: int = 15,
  synthetic_max_ratings: int = 110,
  csv_ratings: str | None = None,
  csv_user_features: str | None = None,
  csv_item_features: str | None = None,
  csv_columns: tuple[str, ...] = (),
  csv_rating_scale: tuple[float, float] | None = None,
  csv_delimiter: str = ",",
  lastfm_protocol: str = "episodes",
) -> Dataset:
  """Loads a dataset by name; real datasets are read from `data_dir` (or $METAREC_DATA_DIR),
  a user's own CSV files from the `csv_*` paths."""
  if name == "csv":
    if not csv_ratings:
      raise ValueError("--dataset=csv needs --csv_ratings (a CSV with the header user,item,rating[,timestamp])")
    return csv_data.load_csv(
      csv_ratings,
      user_features=csv_user_features,
      item_features=csv_item_features,
      columns=tuple(csv_columns),
      rating_scale=csv_rating_scale,
      delimiter=resolve_delimiter(csv_delimiter),
    )
  if name == "synthetic":
    return synthetic.generate(
      n_users=synthetic_users,
      n_items=synthetic_items,
      min_ratings=synthetic_min_ratings,
      max_ratings=synthetic_max_ratings,
      seed=seed,
    )
  if name not in DATASET_FOLDERS:
    raise ValueError(f"Unsupported dataset: {name!r}; choose one of {', '.join(DATASETS)}")
  # A real dataset: read back from the dataset cache while its folders and the code are unchanged.
  root = resolve_data_dir(data_dir)
  options, load = {
    "ml-100k": ({}, lambda: movielens.load_ml100k(root)),
    # MeLU's protocol: its features and state files, the full ratings from the rda file
    "ml-1m": ({}, lambda: melu_ml1m.load_melu_ml1m(root)),
    # TaNP's lastfm_20: its exact episodes, or a fresh split by its recipe
    "lastfm": (
      {"protocol": lastfm_protocol, "seed": seed},
      lambda: lastfm.load_tanp_lastfm(root, protocol=lastfm_protocol, seed=seed),
    ),
    "hetrec-lastfm": ({"seed": seed}, lambda: lastfm.load_hetrec_lastfm(root, seed=seed)),
  }[name]
  return cache.cached(name, [os.path.join(root, f) for f in DATASET_FOLDERS[name]], options, load)
