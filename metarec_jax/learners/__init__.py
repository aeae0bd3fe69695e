"""Learner registry: a name -> a Learner (see learners/base.py for the interface)."""

from __future__ import annotations

from metarec_jax.learners.base import Batch, Episode, FitContext, Learner, masked_mse
from metarec_jax.learners.baselines import TRIVIAL, make_trivial
from metarec_jax.learners.foldin import FOLDIN, make_foldin
from metarec_jax.learners.set_models import RATING_LEVELS, SET_LEARNERS, make_set_learner
from metarec_jax.learners.maml import ADAPT_MODES, adapt_mask, make_gradient_learner

LEARNERS = ("maml", "fomaml", "metasgd", "anil", "reptile") + SET_LEARNERS + TRIVIAL + FOLDIN + ("pooled", "finetune")


def create_learner(name: str, model=None, *, inner_lr: float = 0.1, inner_steps: int = 1,
                   adapt: str = "head", first_order: bool = False, loss: str = "mse",
                   levels: tuple[float, ...] = RATING_LEVELS, **options) -> Learner:
  """Builds a learner by name. Gradient learners need `model`; fold-in baselines take their
  regularisation and rank as keyword `options`. `loss` ("mse", or "bce" for binary labels:
  the learner then outputs logits) and the label `levels` (prototype) apply to the learners
  with a model; the baselines fit label means and ignore them."""
  if name in TRIVIAL:
    return make_trivial(name, **options)
  if name in FOLDIN:
    return make_foldin(name, **options)
  if name in SET_LEARNERS:
    return make_set_learner(name, model, loss=loss, levels=levels, **options)
  if name in ("maml", "fomaml", "metasgd", "anil"):
    # anil: MeLU's local update, the decision layers only (--adapt=last adapts the output layer only).
    return make_gradient_learner(model, name=name, objective="maml", inner_lr=inner_lr,
                                 inner_steps=inner_steps, adapt="head" if name == "anil" else adapt,
                                 first_order=first_order or name == "fomaml", learn_inner_lr=name == "metasgd",
                                 loss=loss)
  if name == "reptile":
    return make_gradient_learner(model, name=name, objective="reptile", inner_lr=inner_lr,
                                 inner_steps=inner_steps, adapt=adapt, loss=loss)
  if name == "pooled":
    return make_gradient_learner(model, name=name, objective="pooled", inner_lr=0.0, inner_steps=0, adapt=adapt,
                                 loss=loss)
  if name == "finetune":
    return make_gradient_learner(model, name=name, objective="pooled", inner_lr=inner_lr,
                                 inner_steps=inner_steps, adapt=adapt, loss=loss)
  raise ValueError(f"Unsupported learner: {name!r}; choose one of {', '.join(LEARNERS)}")


__all__ = ["Batch", "Episode", "FitContext", "Learner", "masked_mse", "create_learner", "LEARNERS",
           "ADAPT_MODES", "adapt_mask"]
