"""What the set learners (set_models.py, factor_set.py) share: their names, the default label
levels, masked means, the Gaussian KL, level membership, attention and the batched meta-loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from metarec_jax.learners.base import Episode

SET_LEARNERS = ("neural_process", "in_context", "prototype", "matching")
RATING_LEVELS = (1.0, 2.0, 3.0, 4.0, 5.0)  # default prototype levels (1-5 stars)


def _masked_mean(v, mask):
  w = mask.astype(v.dtype)[..., None]
  return (v * w).sum(-2) / jnp.maximum(w.sum(-2), 1.0)


def _gaussian_kl(mu_q, sigma_q, mu_p, sigma_p):
  """KL(N(mu_q, sigma_q^2) || N(mu_p, sigma_p^2)), summed over dimensions."""
  return (jnp.log(sigma_p / sigma_q) + (sigma_q**2 + (mu_q - mu_p) ** 2) / (2 * sigma_p**2) - 0.5).sum()


def _half_gap(levels) -> float:
  """A label belongs to a level within half the smallest gap between levels."""
  return 0.5 * float(min(b - a for a, b in zip(sorted(levels), sorted(levels)[1:]))) if len(levels) > 1 else 0.5


def _attend(q, k, v, mask, scale):
  logits = (q @ k.T) * scale
  logits = jnp.where(mask[None, :], logits, -1e9)
  w = jax.nn.softmax(logits, axis=-1) * (mask.any())
  return w @ v


def _batched(task_loss):
  """meta_loss: the mean of `task_loss(meta, episode, rng)` vmapped over the task axis."""

  def meta_loss(meta, episodes: Episode, rng):
    T = episodes.query.y.shape[0]
    loss = jax.vmap(task_loss, in_axes=(None, 0, 0))(meta, episodes, jax.random.split(rng, T)).mean()
    return loss, {"loss": loss}

  return meta_loss
