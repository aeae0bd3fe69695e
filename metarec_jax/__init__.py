"""metarec-jax: meta-learning recommender systems for cold start, in JAX.

The public API (README.md, "The library in your own JAX code"); each name is imported on first
use, so `import metarec_jax` stays cheap:

  data      Dataset, FieldSpec, DataError, load_dataset, TaskConfig, build_scenarios, Episodes,
            feature_tables, featurize, featurize_episodes
  models    create_model
  learners  create_learner, get_spec, names, register, LearnerSpec, Learner, Batch, Episode,
            FitContext
  runs      Config, resolve, build_setup, train_and_evaluate, make_predict_fn, topk_metrics
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
  "Dataset": "metarec_jax.data.schema",
  "FieldSpec": "metarec_jax.data.schema",
  "DataError": "metarec_jax.data.schema",
  "load_dataset": "metarec_jax.data.registry",
  "TaskConfig": "metarec_jax.data.tasks",
  "build_scenarios": "metarec_jax.data.tasks",
  "Episodes": "metarec_jax.data.tasks",
  "feature_tables": "metarec_jax.data.features",
  "featurize": "metarec_jax.data.features",
  "featurize_episodes": "metarec_jax.data.episodes",
  "create_model": "metarec_jax.models",
  "create_learner": "metarec_jax.learners",
  "get_spec": "metarec_jax.learners",
  "names": "metarec_jax.learners",
  "register": "metarec_jax.learners",
  "LearnerSpec": "metarec_jax.learners",
  "Learner": "metarec_jax.learners",
  "Batch": "metarec_jax.learners",
  "Episode": "metarec_jax.learners",
  "FitContext": "metarec_jax.learners",
  "Config": "metarec_jax.config",
  "resolve": "metarec_jax.config",
  "build_setup": "metarec_jax.setup",
  "train_and_evaluate": "metarec_jax.protocol",
  "make_predict_fn": "metarec_jax.evaluate",
  "topk_metrics": "metarec_jax.metrics",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module 'metarec_jax' has no attribute {name!r}")
