"""Learners: the registry (learners/registry.py) and one file per algorithm family.

Importing this package registers every learner: trivial baselines, gradient learners
(maml.py), set learners (set_models.py) and the fold-ins (foldin.py), in that order.
"""

from __future__ import annotations

# Registration order is the order of the name lists (and of the default --baselines).
from metarec_jax.learners import baselines  # noqa: F401
from metarec_jax.learners import maml  # noqa: F401
from metarec_jax.learners import set_models  # noqa: F401
from metarec_jax.learners import metaemb  # noqa: F401
from metarec_jax.learners import mamo  # noqa: F401
from metarec_jax.learners import foldin  # noqa: F401
from metarec_jax.learners.base import Batch, Episode, FitContext, Learner, masked_mse
from metarec_jax.learners.maml import ADAPT_MODES, adapt_mask
from metarec_jax.learners.registry import FIT, POOLED, REUSE, TRAIN, LearnerSpec, get_spec, names, register, unregister
from metarec_jax.learners.set_models import RATING_LEVELS
from metarec_jax.learners.stacked import make_stacked, residual_levels, unwrap


def create_learner(name: str, model=None, *, base: Learner | None = None, base_folds: int = 5, **options) -> Learner:
  """Builds the registered learner `name` (its spec's `build(model, **options)`): a `Learner`
  whose `meta_loss(params, Episode [T, S] / [T, Q], rng)` is batched over tasks and whose
  `adapt` / `predict` take one task. With `base` (a fitted fold-in), a trained learner
  predicts that base's residual (learners/stacked.py)."""
  spec = get_spec(name)
  if base is not None and spec.trained and not spec.stackable:
    raise ValueError(f"--learner={name} cannot be stacked on a fold-in (--base): run it without --base")
  learner = spec.build(model, **options)
  if base is not None and spec.trained:
    learner = make_stacked(learner, base, folds=base_folds)
  return learner


def _on_wrapped(fn, params, *args):
  """`fn(params, *args)`, applied to the wrapped learner's parameters of a stacked learner (its
  base stays as fitted)."""
  if unwrap(params) is not params:
    return {**params, "learner": fn(unwrap(params), *(unwrap(a) for a in args))}
  return fn(params, *args)


def warm_start(name: str, params, pooled):
  """--init=pooled: the spec's warm start from the pooled network's parameters (unchanged when it
  has none); a stacked learner warm-starts from the pooled network of the same stack."""
  spec = get_spec(name)
  return params if spec.warm_start is None else _on_wrapped(spec.warm_start, params, pooled)


def attach_options(name: str, params, options: dict):
  """The parameters a grid point of `name` is evaluated with: its spec's `attach` (options that
  travel in the parameters)."""
  spec = get_spec(name)
  return params if spec.attach is None else _on_wrapped(lambda p: spec.attach(p, options), params)


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
