"""Dataset names -> loaders."""

from __future__ import annotations

from metarec_jax.data import movielens, synthetic
from metarec_jax.data.io import resolve_data_dir
from metarec_jax.data.schema import Dataset

DATASETS = ("synthetic", "ml-100k")


def load_dataset(name: str, *, data_dir: str | None = None, seed: int = 0, synthetic_users: int = 600,
                 synthetic_items: int = 800) -> Dataset:
  """Loads a dataset by name; real datasets are read from `data_dir` (or $METAREC_DATA_DIR)."""
  if name == "synthetic":
    return synthetic.generate(n_users=synthetic_users, n_items=synthetic_items, seed=seed)
  if name == "ml-100k":
    return movielens.load_ml100k(resolve_data_dir(data_dir))
  raise ValueError(f"Unsupported dataset: {name!r}; choose one of {', '.join(DATASETS)}")
