"""Datasets, cold-start splits and fixed-shape episodes."""

from metarec_jax.data.schema import DataError, Dataset, FieldSpec
from metarec_jax.data.registry import load_dataset, DATASETS
from metarec_jax.data.tasks import SCENARIOS, Episodes, TaskConfig, build_scenarios
from metarec_jax.data.features import feature_tables, featurize

__all__ = [
  "DataError",
  "Dataset",
  "FieldSpec",
  "load_dataset",
  "DATASETS",
  "SCENARIOS",
  "Episodes",
  "TaskConfig",
  "build_scenarios",
  "feature_tables",
  "featurize",
  "featurize_episodes",
]


def __getattr__(name):
  # featurize_episodes builds learners' Batch/Episode: imported on use (learners import data).
  if name == "featurize_episodes":
    from metarec_jax.data.episodes import featurize_episodes

    return featurize_episodes
  raise AttributeError(f"module 'metarec_jax.data' has no attribute {name!r}")
