"""The library inside your own JAX code: no loader, no binary, your optax loop.

  python examples/adapt_new_user.py            # about 30 s on a laptop CPU

1. Ratings you already have, as numpy arrays (here a small simulated set: 300 users, 200
   items, each item with 2 of 8 genres, each user liking some genres).
2. A `Dataset` from those arrays, the cold-start split and padded episodes (`build_scenarios`),
   and their feature tables (`feature_tables`).
3. A learner from the registry (`create_learner("maml", model)`): its `meta_loss` is already
   batched over tasks (a vmap inside); here it is differentiated and jitted in a plain optax
   loop of our own.
4. `adapt` + `predict`, vmapped over the held-out new users, give their query error; then
   one new user's five ratings adapt the network and rank the catalogue.
tests/test_examples.py runs `main(steps=...)` and checks what it returns.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metarec_jax.data import Dataset, FieldSpec
from metarec_jax.data.episodes import featurize_episodes
from metarec_jax.data.features import featurize, feature_tables
from metarec_jax.data.tasks import TaskConfig, build_scenarios
from metarec_jax.learners import Batch, FitContext, create_learner
from metarec_jax.models import create_model


def simulated_ratings(seed: int = 0, n_users: int = 300, n_items: int = 200, genres: int = 8):
  """(users, items, ratings, timestamps, item_genres [n_items, 2]): users like 2 genres each."""
  rng = np.random.default_rng(seed)
  item_genres = np.stack([rng.choice(genres, 2, replace=False) for _ in range(n_items)]).astype(np.int32)
  taste = np.zeros((n_users, genres))
  for u in range(n_users):
    taste[u, rng.choice(genres, 2, replace=False)] = 1.5
  rows = []
  for u in range(n_users):
    items = rng.choice(n_items, rng.integers(20, 60), replace=False)
    for i in items:
      r = 2.5 + taste[u, item_genres[i]].sum() - 0.5 + rng.normal(0, 0.5)
      rows.append((u, i, float(np.clip(np.round(r), 1, 5)), u * 1000 + len(rows)))
  u, i, r, t = map(np.array, zip(*rows))
  return u.astype(np.int32), i.astype(np.int32), r.astype(np.float32), t.astype(np.int64), item_genres


def main(steps: int = 300, seed: int = 0) -> dict:
  users, items, ratings, stamps, item_genres = simulated_ratings(seed)
  n_users, n_items = int(users.max()) + 1, len(item_genres)
  ds = Dataset(
    name="mine",
    users=users,
    items=items,
    ratings=ratings,
    timestamps=stamps,
    user_ids=np.arange(n_users),
    item_ids=np.arange(n_items),
    fields=(FieldSpec("item/genre", "multihot", 8),),
    features={"item/genre": item_genres},
    item_release=np.full(n_items, np.nan),  # no release dates: no item is new
  )
  scen = build_scenarios(ds, TaskConfig(query_size=10, min_ratings=15, max_ratings=60), seed)
  known = np.zeros(n_items, bool)
  known[scen.train_ratings[1]] = True
  fields, tables = feature_tables(ds, known_items=known, item_id=True)
  tables = {k: jnp.asarray(v) for k, v in tables.items()}
  model = create_model("content", fields=fields, embed_dim=8, hidden=(32,), output_bias=float(ratings.mean()))
  learner = create_learner("maml", model, inner_lr=0.5, inner_steps=2, adapt="head")
  ctx = FitContext.of(model, fields, n_items, scen.train_ratings)

  train = {k: jnp.asarray(v) for k, v in scen.train.arrays().items()}  # [task, S] / [task, Q] arrays
  n_tasks = int(train["user"].shape[0])
  batch = 16
  params = learner.init(jax.random.key(seed), featurize_episodes(tables, {k: v[:batch] for k, v in train.items()}), ctx)
  opt = optax.adam(3e-3)
  opt_state = opt.init(params)

  @jax.jit
  def step(params, opt_state, idx, key):
    episode = featurize_episodes(tables, {k: v[idx] for k, v in train.items()})
    (loss, _), grads = jax.value_and_grad(learner.meta_loss, has_aux=True)(params, episode, key)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  key = jax.random.key(seed + 1)
  losses = []
  for _ in range(steps):
    key, k_idx, k_loss = jax.random.split(key, 3)
    idx = jax.random.choice(k_idx, n_tasks, (batch,), replace=False)
    params, opt_state, loss = step(params, opt_state, idx, k_loss)
    losses.append(float(loss))

  @jax.jit
  def query_mae(params, ep):
    episode = featurize_episodes(tables, ep)

    def one(support, query):  # one task: adapt to its support, predict its query
      pred = learner.predict(params, learner.adapt(params, support), query.x)
      return jnp.sum(jnp.abs(jnp.clip(pred, 1, 5) - query.y) * query.mask), query.mask.sum()

    err, n = jax.vmap(one)(episode.support, episode.query)
    return err.sum() / n.sum()

  new_users = {k: jnp.asarray(v) for k, v in scen.test["user_cold"].arrays().items()}
  mae = float(query_mae(params, new_users))
  support_mean = float(
    np.sum(
      np.abs(
        (scen.test["user_cold"].support_rating * scen.test["user_cold"].support_mask).sum(1, keepdims=True)
        / scen.test["user_cold"].support_mask.sum(1, keepdims=True)
        - scen.test["user_cold"].query_rating
      )
      * scen.test["user_cold"].query_mask
    )
    / scen.test["user_cold"].query_mask.sum()
  )

  # One new user: five ratings (loves the items of genre 3, dislikes genre 5), then the top 5.
  liked = np.flatnonzero((item_genres == 3).any(1) & known)[:3]
  disliked = np.flatnonzero((item_genres == 5).any(1) & ~(item_genres == 3).any(1) & known)[:2]
  s_items = jnp.asarray(np.concatenate([liked, disliked])[None])  # [1, 5]
  support = Batch(
    x=jax.tree.map(lambda a: a[0], featurize(tables, jnp.zeros(1, jnp.int32), s_items)),
    y=jnp.asarray([5.0, 5.0, 5.0, 1.0, 1.0]),
    mask=jnp.ones(5, bool),
  )
  candidates = jnp.asarray(np.setdiff1d(np.arange(n_items), np.asarray(s_items[0]))[None])
  cx = jax.tree.map(lambda a: a[0], featurize(tables, jnp.zeros(1, jnp.int32), candidates))
  scores = learner.predict(params, learner.adapt(params, support), cx)
  top = np.asarray(candidates[0])[np.argsort(-np.asarray(scores))[:5]]
  return {
    "first_loss": float(np.mean(losses[:20])),
    "last_loss": float(np.mean(losses[-20:])),
    "user_cold_mae": mae,
    "user_cold_mae_support_mean": support_mean,
    "top5": top.tolist(),
    "top5_has_genre3": int((item_genres[top] == 3).any(1).sum()),
  }


if __name__ == "__main__":
  for k, v in main().items():
    print(f"{k}: {v}")
