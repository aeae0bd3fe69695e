"""Mult-VAE (Liang, Krishnan, Hoffman & Jebara, WWW 2018), as its reference code builds it.

Encoder: the user's 0/1 row, L2-normalised, dropout 0.5, dense 600 tanh, dense 2 x 200 (mean and
log-variance). Decoder: dense 600 tanh, dense n_items logits. Loss per user: the multinomial
log-likelihood -sum_i x_i log softmax(logits)_i plus beta * KL(q(z|x) || N(0, I)), beta annealed
linearly from 0 to `anneal_cap` (0.2) over the training steps. A new user is scored from the
encoder's mean (no sampling, no dropout): the encoder is an amortised inference of the user's
latent from the folded-in set, which is the neural process's model-based adaptation without a
query-set objective (BUILD_NOTES.md).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from metarec_jax import runtime


class MultVAE(nn.Module):
  n_items: int
  hidden: int = 600
  latent: int = 200
  dropout: float = 0.5

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    """x [U, I] 0/1 -> (logits [U, I], mu [U, latent], logvar [U, latent])."""
    h = x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = jnp.tanh(nn.Dense(self.hidden, name="enc")(h))
    stats = nn.Dense(2 * self.latent, name="stats")(h)
    mu, logvar = stats[:, : self.latent], stats[:, self.latent :]
    z = mu
    if train:
      z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(self.make_rng("sample"), mu.shape)
    h = jnp.tanh(nn.Dense(self.hidden, name="dec")(z))
    return nn.Dense(self.n_items, name="out")(h), mu, logvar


def mult_vae_loss(logits, mu, logvar, x, beta):
  """Mean over users of the multinomial negative log-likelihood plus beta * KL."""
  nll = -(jax.nn.log_softmax(logits, axis=1) * x).sum(1).mean()
  kl = (0.5 * (-logvar + jnp.exp(logvar) + mu**2 - 1.0)).sum(1).mean()
  return nll + beta * kl, (nll, kl)


def mult_vae_fit(x, options, val=None):
  """Adam (lr 1e-3), batches of 500 users, `epochs` epochs; with `val`, the parameters of the
  best validation nDCG@100 (checked every `val_every` epochs)."""
  x = np.asarray(x, np.float32)
  n_users, n_items = x.shape
  model = MultVAE(n_items, options.get("hidden", 600), options.get("latent", 200), options.get("dropout", 0.5))
  seed = options.get("seed", 0)
  key = jax.random.key(seed)
  params = model.init({"params": key}, jnp.zeros((1, n_items)))["params"]
  opt = optax.adam(options.get("lr", 1e-3))
  state = opt.init(params)
  batch = min(options.get("batch", 500), n_users)
  epochs = options.get("epochs", 100)
  steps_per_epoch = -(-n_users // batch)
  total = epochs * steps_per_epoch
  cap = options.get("anneal_cap", 0.2)
  xd = jnp.asarray(x)

  @jax.jit
  def step(params, state, idx, valid, step_no, key):
    beta = jnp.minimum(cap, cap * step_no / total)
    k_drop, k_sample = jax.random.split(key)

    def loss_fn(p):
      xb = xd[idx] * valid[:, None]
      logits, mu, logvar = model.apply({"params": p}, xb, train=True, rngs={"dropout": k_drop, "sample": k_sample})
      w = valid / jnp.maximum(valid.sum(), 1.0)
      nll = -((jax.nn.log_softmax(logits, axis=1) * xb).sum(1) * w).sum()
      kl = ((0.5 * (-logvar + jnp.exp(logvar) + mu**2 - 1.0)).sum(1) * w).sum()
      return nll + beta * kl

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  rng = np.random.default_rng([seed, 41])
  best, best_val, n = params, -np.inf, 0
  for epoch in range(1, epochs + 1):
    perm = rng.permutation(n_users)
    perm = np.concatenate([perm, np.zeros(steps_per_epoch * batch - n_users, perm.dtype)])
    valid = (np.arange(steps_per_epoch * batch) < n_users).astype(np.float32)
    for b in range(steps_per_epoch):
      key, sub = jax.random.split(key)
      sl = slice(b * batch, (b + 1) * batch)
      params, state, _ = step(params, state, jnp.asarray(perm[sl]), jnp.asarray(valid[sl]), n, sub)
      n += 1
    if val is not None and (epoch % options.get("val_every", 10) == 0 or epoch == epochs):
      v = val(params)
      if v > best_val:
        best, best_val = runtime.copy_tree(params), v
  return best if val is not None else params


def mult_vae_score(params, s):
  """Logits [U, I] of folded-in rows s [U, I] (the sizes are read from the parameters' shapes)."""
  model = MultVAE(
    params["out"]["kernel"].shape[1], params["enc"]["kernel"].shape[1], params["stats"]["kernel"].shape[1] // 2
  )
  logits, _, _ = model.apply({"params": params}, s, train=False)
  return logits
