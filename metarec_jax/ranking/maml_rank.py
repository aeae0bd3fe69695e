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

`maml_ease` (options["base"] = "ease") stacks it on EASE: the logits get a learned multiple `a`
of the EASE scores s B of the folded-in row, in the inner loop and at the query alike. B is
EASE's closed form at the lambda that scores best on the validation users (EASE alone); in
meta-training each training user reads the B fitted without their fold of the training users
(`FOLDS` folds, as the rating protocol's stacked learners are cross-fitted), so their own row
never shapes the base scores of their held-out items; held-out users read the B of every
training user, as EASE does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metarec_jax import runtime


def init_params(key, n_items: int, dim: int, counts: np.ndarray) -> dict:
  k1, k2 = jax.random.split(key)
  return {
    "v": 0.1 * jax.random.normal(k1, (n_items, dim)),
    "w": 0.1 * jax.random.normal(k2, (n_items, dim)),
    "u": jnp.zeros(dim),
    "b": jnp.log1p(jnp.asarray(counts, jnp.float32)),  # starts at popularity
    "inner_lr": jnp.float32(0.0),  # set by fit (not trained)
  }


FOLDS = 5
BASE_MULTIPLES = (1.0, 1.5, 2.0, 3.0, 5.0, 10.0)  # of the trained base weight, chosen on validation
EASE_LAMBDAS = (50, 100, 200, 500, 1000, 2000, 5000)  # EASE's own grid


def _support_loss(u, params, s, base):
  logp = jax.nn.log_softmax(u @ params["v"].T + params["b"] + base)
  return -(logp * s).sum() / jnp.maximum(s.sum(), 1.0)


def _base(params, s, b=None):
  """The stacked EASE scores a * (s B) of rows s [..., I] (0 without a base)."""
  if "a" not in params:
    return jnp.zeros(s.shape[-1])
  return params["a"] * (s @ (params["B"] if b is None else b))


def adapt(params, s, steps: int, base=0.0):
  """The adapted user vector of one user's folded-in row s [I] (`base`: their stacked scores)."""
  u = params["u"] + (s @ params["w"]) / jnp.maximum(s.sum(), 1.0)
  for _ in range(steps):  # unrolled: steps is small and static
    u = u - params["inner_lr"] * jax.grad(_support_loss)(u, params, s, base)
  return u


def score(params, s):
  """Scores [U, I] of folded-in rows s [U, I]: each user adapted by params["steps"] inner steps
  (traced, so one compiled function serves any step count, e.g. 0 for the unadapted network)."""

  def one(row):
    base = _base(params, row)
    u = params["u"] + (row @ params["w"]) / jnp.maximum(row.sum(), 1.0)
    step = lambda _, u: u - params["inner_lr"] * jax.grad(_support_loss)(u, params, row, base)  # noqa: E731
    return jax.lax.fori_loop(0, params["steps"], step, u) @ params["v"].T + params["b"] + base

  return jax.vmap(one)(s)


def _ease_base(x, options, val):
  """{"a", "B"} of the EASE base (lambda chosen on `val`, EASE alone) and the [FOLDS, I, I]
  cross-fitted B's, with each training user's fold."""
  from metarec_jax.ranking.baselines import ease_weights

  n_users, n_items = x.shape
  zero = {"v": jnp.zeros((n_items, 1)), "w": jnp.zeros((n_items, 1)), "u": jnp.zeros(1), "b": jnp.zeros(n_items)}
  best = None
  for lam in options.get("ease_lambdas", EASE_LAMBDAS) if val is not None else (options.get("lam", 500),):
    b = jnp.asarray(ease_weights(x, lam), jnp.float32)
    v = val({**zero, "a": jnp.float32(1.0), "B": b, "inner_lr": jnp.float32(0.0), "steps": jnp.int32(0)}) if val else 0
    if best is None or v > best[0]:
      best = (v, lam, b)
  _, lam, b = best
  fold = np.random.default_rng([options.get("seed", 0), 52]).permutation(n_users) % FOLDS
  folds = jnp.stack([jnp.asarray(ease_weights(x[fold != k], lam), jnp.float32) for k in range(FOLDS)])
  return {"a": jnp.float32(_base_scale(x, folds, fold, options.get("seed", 0))), "B": b}, folds, fold


def _base_scale(x, folds, fold, seed: int, scales=(1.0, 3.0, 10.0, 30.0, 100.0)) -> float:
  """The starting multiple a of the base scores: the one whose softmax over log-popularity + a s B
  (cross-fitted B) gives the training users' held-out 20 % the highest likelihood. The softmax
  loss cannot move a far from a poor start (s B is O(0.1), the logits it must reach O(10))."""
  rng = np.random.default_rng([seed, 54])
  s = x * (rng.random(x.shape) < 0.8)
  q = x - s
  base = jnp.concatenate([jnp.asarray(s[fold == k]) @ folds[k] for k in range(FOLDS)])
  q = jnp.asarray(np.concatenate([q[fold == k] for k in range(FOLDS)]))
  s = jnp.asarray(np.concatenate([s[fold == k] for k in range(FOLDS)]))
  prior = jnp.log1p(jnp.asarray(x.sum(0)))

  def nll(a):
    logp = jax.nn.log_softmax(jnp.where(s > 0, -jnp.inf, prior + a * base), axis=1)
    return float(-jnp.where(q > 0, logp, 0.0).sum() / jnp.maximum(q.sum(), 1.0))

  return min(scales, key=nll)


def _batches(rng, fold, batch: int, by_fold: bool):
  """One epoch's (fold, user indices) batches: a permutation of the users; with `by_fold`, each
  batch from one fold (the folds' batches in random order)."""
  if not by_fold:
    perm = rng.permutation(len(fold))
    return [(0, perm[b * batch : (b + 1) * batch]) for b in range(len(fold) // batch)]
  out = []
  for k in np.unique(fold):
    perm = rng.permutation(np.flatnonzero(fold == k))
    out += [(k, perm[b * batch : (b + 1) * batch]) for b in range(len(perm) // batch)]
  return [out[j] for j in rng.permutation(len(out))]


def fit(x, options, val=None):
  """Adam (lr 3e-3) on batches of 128 training users, `epochs` epochs (each user's positives split
  at random into a support, 80 % or `support_cap` of them, and a query; with `random_support`, a
  uniformly random share of the 80 % is given, the rest of it kept out of the ranking, so that one
  model meets every support size, as Mult-VAE's input dropout does); with `val`, the parameters
  of the best validation nDCG@100 (every `val_every` epochs). The defaults (3 inner steps, d 64,
  lr 3e-3) were chosen on ml-100k's seed-0 validation users (BUILD_NOTES.md)."""
  x = np.asarray(x, np.float32)
  n_users, n_items = x.shape
  steps = options.get("inner_steps", 3)
  params = init_params(jax.random.key(options.get("seed", 0)), n_items, options.get("dim", 64), x.sum(0))
  params["inner_lr"] = jnp.float32(options.get("inner_lr", 1.0))
  fold = np.zeros(n_users, np.int64)
  folds = None
  if options.get("base") == "ease":
    base, folds, fold = _ease_base(x, options, val)
    params.update(base)
  fixed = ("inner_lr", "B")  # not trained
  opt = optax.adam(options.get("lr", 3e-3))
  trainable = {k: v for k, v in params.items() if k not in fixed}
  state = opt.init(trainable)
  xd = jnp.asarray(x)

  cap = options.get("support_cap")
  random_support = options.get("random_support", False)  # train for every support size (few-shot)

  def task_loss(p, row, key, b):
    noise = jax.random.uniform(key, row.shape)
    if cap is None:  # the protocol's fold-in: a random 80 % of the positives
      s = row * (noise < 0.8)
    else:  # --support_cap: meta-train on supports of at most `cap` positives, as tested
      _, idx = jax.lax.top_k(jnp.where(row > 0, noise, -1.0), cap)
      s = jnp.zeros_like(row).at[idx].set(1.0) * row
    q, out = row - s, s
    if cap is None and random_support:  # a random share of the fold-in given; all of it out of the ranking
      share = jax.random.uniform(jax.random.fold_in(key, 1))
      out, s = s, s * (jax.random.uniform(jax.random.fold_in(key, 2), row.shape) < share)
    base = _base(p, s, b)
    u = adapt(p, s, steps, base)
    logits = jnp.where(out > 0, -jnp.inf, u @ p["v"].T + p["b"] + base)
    logp = jax.nn.log_softmax(logits)
    return -(jnp.where(q > 0, logp, 0.0)).sum() / jnp.maximum(q.sum(), 1.0)

  @jax.jit
  def step(trainable, state, idx, key, k):
    def loss_fn(t):
      p = {**t, "inner_lr": params["inner_lr"]}  # adapt() unrolls `steps` (static) for the meta-gradient
      keys = jax.random.split(key, idx.shape[0])
      b = None if folds is None else folds[k]  # the batch's fold: B fitted without it
      return jax.vmap(task_loss, in_axes=(None, 0, 0, None))(p, xd[idx], keys, b).mean()

    loss, grads = jax.value_and_grad(loss_fn)(trainable)
    updates, state = opt.update(grads, state, trainable)
    return optax.apply_updates(trainable, updates), state, loss

  batch = min(options.get("batch", 128), int(np.bincount(fold).min()))
  rng = np.random.default_rng([options.get("seed", 0), 51])
  key = jax.random.key(options.get("seed", 0) + 1)
  best, best_val = None, -np.inf
  epochs = options.get("epochs", 100)
  fixed_values = {k: params[k] for k in fixed if k in params}
  for epoch in range(1, epochs + 1):
    for k, idx in _batches(rng, fold, batch, folds is not None):
      key, sub = jax.random.split(key)
      trainable, state, _ = step(trainable, state, jnp.asarray(idx), sub, jnp.int32(k))
    if val is not None and (epoch % options.get("val_every", 10) == 0 or epoch == epochs):
      p = {**trainable, **fixed_values, "steps": jnp.int32(steps)}
      v = val(p)
      if v > best_val:
        best, best_val = runtime.copy_tree(p), v
  out = best if best is not None else {**trainable, **fixed_values, "steps": jnp.int32(steps)}
  if "a" in out and val is not None:
    # Meta-training reads cross-fitted bases (each fitted on 80 % of the training users); held-out
    # users read the full one, which deserves more weight: the multiple is chosen on validation.
    out = max(({**out, "a": out["a"] * m} for m in BASE_MULTIPLES), key=val)
  return out
