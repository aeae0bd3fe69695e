"""Learners: the registry (learners/registry.py) and one file per algorithm family.

Importing this package registers every learner: trivial baselines, gradient learners
(maml.py), set learners (set_models.py) and the fold-ins (foldin.py), in that order.
"""

from __future__ import annotations

# Registration order is the order of the name lists (and of the default --baselines).
from metarec_jax.learners import baselines  # noqa: F401
from metarec_jax.learners import maml  # noqa: F401
from metarec_jax.learners import set_models  # noqa: F401
from metarec_jax.learners import foldin  # noqa: F401
from metarec_jax.learners.base import Batch, Episode, FitContext, Learner, masked_mse
from metarec_jax.learners.maml import ADAPT_MODES, adapt_mask
from metarec_jax.learners.registry import FIT, POOLED, REUSE, TRAIN, LearnerSpec, get_spec, names, register, unregister
from metarec_jax.learners.set_models import RATING_LEVELS
from metarec_jax.learners.stacked import make_stacked, residual_levels, unwrap


def create_learner(name: str, model=None, *, base: Learner | None = None, base_folds: int = 5, **options) -> Learner:
  """Builds the registered learner `name` (its spec's `build(model, **options)`). With `base`
  (a fitted fold-in), a trained learner predicts that base's residual (learners/stacked.py)."""
  spec = get_spec(name)
  learner = spec.build(model, **options)
  if base is not None and spec.trained:
    learner = make_stacked(learner, base, folds=base_folds)
  return learner


def warm_start(name: str, params, pooled):
  """--init=pooled: the spec's warm start from the pooled network's parameters (unchanged when
  it has none). A stacked learner warm-starts its wrapped learner from the pooled network of
  the same stack; its base stays as fitted."""
  spec = get_spec(name)
  if spec.warm_start is None:
    return params
  if unwrap(params) is not params:
    return {**params, "learner": spec.warm_start(unwrap(params), unwrap(pooled))}
  return spec.warm_start(params, pooled)


def attach_options(name: str, params, options: dict):
  """The parameters a grid point of `name` is evaluated with: its spec's `attach` (options that
  travel in the parameters), applied to the wrapped learner of a stacked one."""
  spec = get_spec(name)
  if spec.attach is None:
    return params
  if unwrap(params) is not params:
    return {**params, "learner": spec.attach(unwrap(params), options)}
  return spec.attach(params, options)


def __getattr__(attr):
  # Name lists derived from the registry on access (a learner registered later is included).
  lists = {
    "LEARNERS": lambda s: True,
    "BASELINES": lambda s: s.default_baseline,
    "ALL_BASELINES": lambda s: s.baseline,
    "META_LEARNERS": lambda s: s.meta_learner,
    "FOLDIN": lambda s: s.stack_base,
  }
  if attr in lists:
    return names(lists[attr])
  raise AttributeError(attr)


__all__ = [
  "Batch",
  "Episode",
  "FitContext",
  "Learner",
  "LearnerSpec",
  "masked_mse",
  "create_learner",
  "get_spec",
  "names",
  "register",
  "unregister",
  "warm_start",
  "attach_options",
  "ADAPT_MODES",
  "adapt_mask",
  "RATING_LEVELS",
  "FIT",
  "POOLED",
  "REUSE",
  "TRAIN",
  "residual_levels",
]
