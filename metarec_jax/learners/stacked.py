"""Meta-learning on top of a classical fold-in: any learner predicts the residual of a base.

  r_hat(x) = base(x | support) + learner(x | support residuals)

The base (`als_foldin` or `bias_foldin`) adapts in closed form from the support, exactly
as the baseline does; the wrapped learner adapts on the support's residuals under the base
and predicts the query's residual. Any learner of the registry can be wrapped: MAML's
inner loop, a neural process's encoder and a matching kernel all see residuals instead
of ratings, and the meta-objective is the query loss of the sum.

Cross-fitting. The base is fitted on the training ratings, so on a training task it would
already know the query (its item vectors were fitted to it) and the learner would learn to
trust a leak. Training users are cut into `folds` folds (user id mod `folds`); on a task of
fold k, the base is the one fitted without fold k's users, to whom every training task is
then a new user, as a test user is to the full base. Validation and test tasks use the
base fitted on every training user. Base parameters are `[folds + 1, ...]` stacks (the
last is the full fit), frozen: `meta_loss` stops their gradient and `frozen_mask` tells
the optimiser to leave them alone.

Squared-error labels only (rating or scaled): a residual of a 0/1 label is not a label.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from metarec_jax.learners.base import Batch, Episode, FitContext, Learner

BASE_KEY = "base"


def fold_context(ctx: FitContext, fold: int, folds: int) -> FitContext:
  """The training context without the ratings of users in `fold` (user id mod `folds`).
  Shares `ctx.memo`: the memoised matrices are keyed by what they depend on."""
  keep = (ctx.train_users % folds) != fold
  return dataclasses.replace(
    ctx, train_users=ctx.train_users[keep], train_items=ctx.train_items[keep], train_ratings=ctx.train_ratings[keep]
  )


def make_stacked(learner: Learner, base: Learner, *, folds: int = 5) -> Learner:
  """Wraps `learner` to predict the residual of `base` (a fold-in baseline). See the module
  docstring; `folds` >= 2 cross-fitting folds of the training users."""
  if base.meta_loss is not None:
    raise ValueError(f"the base of a stacked learner must be fitted in closed form; {base.name} is meta-trained")
  if learner.meta_loss is None:
    raise ValueError(f"{learner.name} has nothing to meta-train; stacking it on {base.name} adds nothing")
  if learner.link != "identity":
    raise ValueError(
      f"--base={base.name} needs squared-error labels (--label=rating or scaled); {learner.name} "
      "outputs logits for binary labels, and a residual of a 0/1 label is not a label"
    )
  if folds < 2:
    raise ValueError(f"base_folds must be >= 2, got {folds}")

  def init(rng, example: Episode, ctx: FitContext):
    fits = [base.init(rng, example, fold_context(ctx, k, folds)) for k in range(folds)]
    fits.append(base.init(rng, example, ctx))
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *fits)
    return {BASE_KEY: stacked, "learner": learner.init(rng, example, ctx)}

  def base_fit(base_params, which, support: Batch, qx):
    """The base's predictions on the support and on qx, adapted on the support with fit `which`."""
    p = jax.tree.map(lambda a: a[which], base_params)
    state = base.adapt(p, support)
    return base.predict(p, state, support.x), base.predict(p, state, qx)

  def residual(support: Batch, fitted):
    return support._replace(y=jnp.where(support.mask, support.y - fitted, 0.0))

  def adapt(params, support: Batch):
    full = jax.tree.map(lambda a: a[folds], params[BASE_KEY])
    state = base.adapt(full, support)
    fitted = base.predict(full, state, support.x)
    return {BASE_KEY: state, "learner": learner.adapt(params["learner"], residual(support, fitted))}

  def predict(params, state, x):
    full = jax.tree.map(lambda a: a[folds], params[BASE_KEY])
    return base.predict(full, state[BASE_KEY], x) + learner.predict(params["learner"], state["learner"], x)

  def meta_loss(params, episodes: Episode, rng):
    """[task]-batched: each task's base is the fit without its user's fold."""
    base_params = jax.lax.stop_gradient(params[BASE_KEY])
    fold = episodes.support.x["user"][:, 0] % folds
    s_fit, q_fit = jax.vmap(base_fit, in_axes=(None, 0, 0, 0))(base_params, fold, episodes.support, episodes.query.x)
    resid = Episode(residual(episodes.support, s_fit), residual(episodes.query, q_fit))
    return learner.meta_loss(params["learner"], resid, rng)

  return Learner(
    name=learner.name,
    family=learner.family,
    init=init,
    adapt=adapt,
    predict=predict,
    meta_loss=meta_loss,
    link=learner.link,
  )


def residual_levels(levels: tuple[float, ...]) -> tuple[float, ...]:
  """Prototype levels for residuals, which are centred: the label levels less the middle one
  (1-5 stars -> -2..2)."""
  return tuple(float(v - levels[len(levels) // 2]) for v in levels)


def frozen_mask(params) -> dict | None:
  """Pytree of labels for `optax.multi_transform`: "frozen" under the base, "train" elsewhere
  (None when `params` has no base)."""
  if not isinstance(params, dict) or BASE_KEY not in params:
    return None
  return {k: jax.tree.map(lambda _: "frozen" if k == BASE_KEY else "train", v) for k, v in params.items()}  # noqa: B023


def unwrap(params):
  """The wrapped learner's own parameters (identity for an unstacked learner)."""
  return params["learner"] if isinstance(params, dict) and BASE_KEY in params else params


__all__ = ["make_stacked", "fold_context", "frozen_mask", "residual_levels", "unwrap", "BASE_KEY"]
