"""Synthetic ratings with a known latent structure and the ml-100k schema.

Each user has a latent vector z_u and each item a latent vector v_i. The features are
noisy functions of the latents (occupation, age and gender from z_u; genres from v_i),
so content models can learn part of the structure. Ratings are

    r_ui = clip(round(mu + b_u + b_i + scale * <z_u, v_i> / sqrt(d) + noise), 1, 5)

where b_u is only partly predictable from the user features, so a new user's support
ratings carry information that the features do not: adaptation must help.
"""

from __future__ import annotations

import numpy as np

from metarec_jax.data.movielens import N_AGE_BUCKETS, N_YEAR_BUCKETS, N_ZIP_BUCKETS, multihot_table, year_bucket
from metarec_jax.data.schema import Dataset, FieldSpec

N_OCCUPATIONS = 21
N_GENRES = 19


def generate(
  *,
  n_users: int = 600,
  n_items: int = 800,
  latent_dim: int = 8,
  min_ratings: int = 15,
  max_ratings: int = 110,
  user_bias_std: float = 0.5,
  item_bias_std: float = 0.5,
  interaction_scale: float = 0.8,
  noise_std: float = 0.4,
  seed: int = 0,
  chunk: int = 4096,
) -> Dataset:
  """Returns a Dataset named "synthetic"; the same seed gives the same data."""
  rng = np.random.default_rng(seed)
  d = latent_dim
  z = rng.standard_normal((n_users, d)).astype(np.float32)
  v = rng.standard_normal((n_items, d)).astype(np.float32)

  # User features, correlated with z.
  occ_w = rng.standard_normal((d, N_OCCUPATIONS)).astype(np.float32)
  occupation = np.argmax(z @ occ_w + rng.gumbel(size=(n_users, N_OCCUPATIONS)), axis=1).astype(np.int32)
  age = np.clip(np.round((z[:, 0] + 1.5) * 2 + rng.normal(0, 0.7, n_users)), 0, N_AGE_BUCKETS - 1).astype(np.int32)
  gender = (z[:, 1] + rng.normal(0, 0.5, n_users) > 0).astype(np.int32)
  zipcode = rng.integers(0, N_ZIP_BUCKETS, n_users).astype(np.int32)
  # b_u: a part explained by z (hence partly by features) plus an idiosyncratic part.
  b_user = (0.5 * z[:, 0] * user_bias_std + np.sqrt(0.75) * user_bias_std * rng.standard_normal(n_users)).astype(
    np.float32
  )

  # Item features, correlated with v.
  genre_w = rng.standard_normal((d, N_GENRES)).astype(np.float32)
  gscore = v @ genre_w / np.sqrt(d) + 0.3 * rng.standard_normal((n_items, N_GENRES))
  genres = [sorted(set(np.flatnonzero(row > 1.2).tolist()) | {int(np.argmax(row))}) for row in gscore]
  year = np.clip(1998 - rng.exponential(8.0, n_items), 1930, 1998).round()
  release = np.array([_year_to_unix(y) for y in year], np.float64) + rng.uniform(0, 3e7, n_items)
  b_item = (item_bias_std * rng.standard_normal(n_items)).astype(np.float32)
  popularity = np.exp(0.8 * rng.standard_normal(n_items) + 0.5 * b_item)
  log_pop = np.log(popularity / popularity.sum())

  counts = rng.integers(min_ratings, max_ratings + 1, n_users)
  k_max = int(min(counts.max(), n_items))
  counts = np.minimum(counts, n_items)
  users_out, items_out = [], []
  for start in range(0, n_users, chunk):
    stop = min(n_users, start + chunk)
    keys = log_pop[None, :] + rng.gumbel(size=(stop - start, n_items))
    top = np.argpartition(-keys, k_max - 1, axis=1)[:, :k_max]
    order = np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1)
    top = np.take_along_axis(top, order, axis=1)
    take = np.arange(k_max)[None, :] < counts[start:stop, None]
    users_out.append(np.broadcast_to(np.arange(start, stop)[:, None], top.shape)[take])
    items_out.append(top[take])
  users = np.concatenate(users_out).astype(np.int32)
  items = np.concatenate(items_out).astype(np.int32)

  inter = np.einsum("nd,nd->n", z[users], v[items]) / np.sqrt(d)
  mean = 3.6 + b_user[users] + b_item[items] + interaction_scale * inter
  raw = mean + noise_std * rng.standard_normal(len(users))
  ratings = np.clip(np.round(raw), 1, 5).astype(np.float32)
  join = rng.uniform(8.7e8, 8.9e8, n_users)
  stamps = (join[users] + rng.exponential(3e5, len(users))).astype(np.int64)

  fields = (
    FieldSpec("user/age", "categorical", N_AGE_BUCKETS),
    FieldSpec("user/gender", "categorical", 2),
    FieldSpec("user/occupation", "categorical", N_OCCUPATIONS),
    FieldSpec("user/zip", "categorical", N_ZIP_BUCKETS),
    FieldSpec("item/genre", "multihot", N_GENRES),
    FieldSpec("item/year", "categorical", N_YEAR_BUCKETS),
  )
  features = {
    "user/age": age,
    "user/gender": gender,
    "user/occupation": occupation,
    "user/zip": zipcode,
    "item/genre": multihot_table(genres),
    "item/year": year_bucket(year),
  }
  ds = Dataset(
    name="synthetic",
    users=users,
    items=items,
    ratings=ratings,
    timestamps=stamps,
    user_ids=np.arange(1, n_users + 1),
    item_ids=np.arange(1, n_items + 1),
    fields=fields,
    features=features,
    item_release=release,
    item_titles=[f"Synthetic item {i + 1}" for i in range(n_items)],
    expected=mean.astype(np.float32),
  )
  ds.validate()
  return ds


def oracle_prediction(expected: np.ndarray) -> np.ndarray:
  """What knowing the latents allows: the median of the rating given them, clip(round(mean))
  (the noise is symmetric, so rounding the mean is its median): the MAE floor of any model."""
  return np.clip(np.round(expected), 1, 5)


def _year_to_unix(year: float) -> float:
  return (year - 1970.0) * 365.25 * 86400.0
