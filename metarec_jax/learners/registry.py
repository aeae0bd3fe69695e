"""The learner registry: a name -> a `LearnerSpec` that carries the learner's behaviour.

Everything outside `learners/` asks the spec (its family, how its parameters are obtained,
its validation grid, how it warm-starts, whether it can be stacked) instead of testing a
name. Adding a learner is one file that calls `register(LearnerSpec(...))` plus its import
in `learners/__init__.py`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from metarec_jax.learners.base import Learner

# How a learner's parameters are obtained before evaluation.
TRAIN = "train"  # meta-trained by the loop (training/loop.py), from `init`
FIT = "fit"  # fitted in closed form inside `init` (nothing to meta-train)
REUSE = "reuse"  # the trained parameters of another learner (`params_from`), adapted at test time
SOURCES = (TRAIN, FIT, REUSE)
# The network trained on pooled ratings: what `--init=pooled` warm-starts from.
POOLED = "pooled"


@dataclasses.dataclass(frozen=True)
class LearnerSpec:
  """What the protocol needs to know about a learner.

  build(model, **options) -> Learner. The protocol passes the run's options (inner_lr,
  inner_steps, adapt, first_order, loss, levels, seed) plus the grid point; a builder takes
  what it uses and ignores the rest (`**_`).
  """

  name: str
  family: str  # "optimisation", "model", "metric" or "baseline"
  build: Callable[..., Learner]
  source: str = TRAIN
  params_from: str | None = None  # REUSE: whose trained parameters
  # Options chosen on the validation users (each a dict of build options); () for none.
  grid: tuple[dict, ...] = ()
  # Every grid option reaches the jitted code through the parameters (or only changes
  # shapes), so one predict function serves the whole grid: one compile per shape.
  grid_traced: bool = False
  # (params, grid point) -> the parameters a candidate is evaluated with (options that travel
  # in the parameters, traced); None: the parameters as obtained.
  attach: Callable[[Any, dict], Any] | None = None
  # A ranking baseline is chosen on this validation metric (higher is better) instead of the
  # label mode's criterion (log loss would grade the squashing, not the ranking).
  select_metric: str | None = None
  # (params, pooled_params) -> params for --init=pooled; None: starts from its own init.
  warm_start: Callable[[Any, Any], Any] | None = None
  baseline: bool = False  # may be listed in --baselines
  default_baseline: bool = False  # in the default --baselines
  stack_base: bool = False  # may be --base (a closed-form fold-in)
  stackable: bool = True  # may predict a --base fold-in's residual (learners/stacked.py)
  # Adapts by gradient steps: the protocol also evaluates it with no inner step.
  inner_loop: bool = False
  meta_learner: bool = False  # one of the meta-learners (experiments.compare's default list)
  first_order: bool = False  # always first order, whatever --first_order says
  reference: str | None = None  # the reference implementation its meta-gradient is checked against

  def __post_init__(self):
    if self.source not in SOURCES:
      raise ValueError(f"{self.name}: source must be one of {', '.join(SOURCES)}, got {self.source!r}")
    if (self.source == REUSE) != (self.params_from is not None):
      raise ValueError(f"{self.name}: params_from is set exactly when source is {REUSE!r}")

  @property
  def trained(self) -> bool:
    """Has a meta-objective (trained itself, or adapting another's trained network)."""
    return self.source != FIT


_REGISTRY: dict[str, LearnerSpec] = {}


def register(spec: LearnerSpec, *, replace: bool = False) -> LearnerSpec:
  """Adds `spec` to the registry (a second spec of the same name needs `replace`)."""
  if spec.name in _REGISTRY and not replace:
    raise ValueError(f"a learner named {spec.name!r} is registered already")
  _REGISTRY[spec.name] = spec
  return spec


def unregister(name: str) -> None:
  """Removes a registered learner (tests and notebooks that register their own)."""
  _REGISTRY.pop(name, None)


def get_spec(name: str) -> LearnerSpec:
  """The registered spec of `name` (a ValueError naming the choices otherwise)."""
  if name not in _REGISTRY:
    raise ValueError(f"Unsupported learner: {name!r}; choose one of {', '.join(_REGISTRY)}")
  return _REGISTRY[name]


def names(predicate: Callable[[LearnerSpec], bool] = lambda s: True) -> tuple[str, ...]:
  """Registered names, in registration order, whose spec satisfies `predicate`."""
  return tuple(n for n, s in _REGISTRY.items() if predicate(s))
