"""MAML for ranking (`maml_rank`): a user vector adapted by gradient steps on the folded-in
items' multinomial log-likelihood, meta-trained second order on held-out items.

Model: scores = u V^T + b over the catalogue, V [I, d] item vectors and b [I] item biases
(shared). A user's vector starts from an amortised guess, u_0 = u_init + mean of W's rows of
the folded-in items (W [I, d]), and takes `inner_steps` gradient steps of size `inner_lr` on
-sum_{i in S} log softmax(u V^T + b)_i. Meta-training samples training users, splits each
user's positives at random into a support (80 %) and a query, and minimises the query items'
multinomial loss over the items not in the support, differentiating through the inner steps
(`jax.grad` of `jax.grad`: second order). With `inner_steps=0` the same network is a pooled
linear auto-encoder given the same inputs, which is what adaptation is measured against.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def init_params(key, n_items: int, dim: int, counts: np.ndarray) -> dict:
  k1, k2 = jax.random.split(key)
  return {
    "v": 0.1 * jax.random.normal(k1, (n_items, dim)),
    "w": 0.1 * jax.random.normal(k2, (n_items, dim)),
    "u": jnp.zeros(dim),
    "b": jnp.log1p(jnp.asarray(counts, jnp.float32)),  # starts at popularity
    "inner_lr": jnp.float32(0.0),  # set by fit (not trained)
  }


def _support_loss(u, params, s):
  logp = jax.nn.log_softmax(u @ params["v"].T + params["b"])
  return -(logp * s).sum() / jnp.maximum(s.sum(), 1.0)


def adapt(params, s, steps: int):
  """The adapted user vector of one user's folded-in row s [I]."""
  u = params["u"] + (s @ params["w"]) / jnp.maximum(s.sum(), 1.0)
  for _ in range(steps):  # unrolled: steps is small and static
    u = u - params["inner_lr"] * jax.grad(_support_loss)(u, params, s)
  return u


def score(params, s):
  """Scores [U, I] of folded-in rows s [U, I]: each user adapted by params["steps"] inner steps
  (traced, so one compiled function serves any step count, e.g. 0 for the unadapted network)."""

  def one(row):
    u = params["u"] + (row @ params["w"]) / jnp.maximum(row.sum(), 1.0)
    step = lambda _, u: u - params["inner_lr"] * jax.grad(_support_loss)(u, params, row)  # noqa: E731
    return jax.lax.fori_loop(0, params["steps"], step, u)

  return jax.vmap(one)(s) @ params["v"].T + params["b"][None, :]


def fit(x, options, val=None):
  """Adam (lr 3e-3) on batches of 128 training users, `epochs` epochs (each user's positives split
  at random into a support, 80 % or `support_cap` of them, and a query); with `val`, the parameters
  of the best validation nDCG@100 (every `val_every` epochs). The defaults (3 inner steps, d 64,
  lr 3e-3) were chosen on ml-100k's seed-0 validation users (BUILD_NOTES.md)."""
  x = np.asarray(x, np.float32)
  n_users, n_items = x.shape
  steps = options.get("inner_steps", 3)
  params = init_params(jax.random.key(options.get("seed", 0)), n_items, options.get("dim", 64), x.sum(0))
  params["inner_lr"] = jnp.float32(options.get("inner_lr", 1.0))
  opt = optax.adam(options.get("lr", 3e-3))
  trainable = {k: v for k, v in params.items() if k != "inner_lr"}
  state = opt.init(trainable)
  xd = jnp.asarray(x)

  cap = options.get("support_cap")

  def task_loss(p, row, key):
    noise = jax.random.uniform(key, row.shape)
    if cap is None:  # the protocol's fold-in: a random 80 % of the positives
      s = row * (noise < 0.8)
    else:  # --support_cap: meta-train on supports of at most `cap` positives, as tested
      _, idx = jax.lax.top_k(jnp.where(row > 0, noise, -1.0), cap)
      s = jnp.zeros_like(row).at[idx].set(1.0) * row
    q = row - s
    u = adapt(p, s, steps)
    logits = jnp.where(s > 0, -jnp.inf, u @ p["v"].T + p["b"])
    logp = jax.nn.log_softmax(logits)
    return -(jnp.where(q > 0, logp, 0.0)).sum() / jnp.maximum(q.sum(), 1.0)

  @jax.jit
  def step(trainable, state, idx, key):
    def loss_fn(t):
      p = {**t, "inner_lr": params["inner_lr"]}  # adapt() unrolls `steps` (static) for the meta-gradient
      keys = jax.random.split(key, idx.shape[0])
      return jax.vmap(task_loss, in_axes=(None, 0, 0))(p, xd[idx], keys).mean()

    loss, grads = jax.value_and_grad(loss_fn)(trainable)
    updates, state = opt.update(grads, state, trainable)
    return optax.apply_updates(trainable, updates), state, loss

  batch = min(options.get("batch", 128), n_users)
  rng = np.random.default_rng([options.get("seed", 0), 51])
  key = jax.random.key(options.get("seed", 0) + 1)
  best, best_val = None, -np.inf
  epochs = options.get("epochs", 100)
  for epoch in range(1, epochs + 1):
    perm = rng.permutation(n_users)
    for b in range(n_users // batch):
      key, sub = jax.random.split(key)
      trainable, state, _ = step(trainable, state, jnp.asarray(perm[b * batch : (b + 1) * batch]), sub)
    if val is not None and (epoch % options.get("val_every", 10) == 0 or epoch == epochs):
      p = {**trainable, "inner_lr": params["inner_lr"], "steps": jnp.int32(steps)}
      v = val(p)
      if v > best_val:
        best, best_val = jax.tree.map(jnp.copy, p), v
  return best if best is not None else {**trainable, "inner_lr": params["inner_lr"], "steps": jnp.int32(steps)}
