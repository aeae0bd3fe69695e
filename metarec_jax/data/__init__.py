"""Datasets, cold-start splits and fixed-shape episodes."""

from metarec_jax.data.schema import DataError, Dataset, FieldSpec
from metarec_jax.data.registry import load_dataset, DATASETS

__all__ = ["DataError", "Dataset", "FieldSpec", "load_dataset", "DATASETS"]
