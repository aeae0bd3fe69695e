"""Ranking baselines fitted on the training users' 0/1 matrix X [n_train, I]; each scores a
batch of held-out users from their folded-in items s [U, I] (0/1 float) -> [U, I].

- popularity: the items' positive counts (the same list for everyone);
- item_knn: s @ S with S the cosine similarity of X's columns (zero diagonal), each column
  cut to its `neighbours` largest entries;
- ease (Steck 2019): s @ B, B = I - P diagMat(1 / diag(P)), P = (X^T X + lambda I)^-1, diag(B) = 0;
- wmf (Hu, Koren & Volinsky 2008, implicit ALS): item factors Y from weighted alternating least
  squares (confidence 1 + alpha on positives, 1 elsewhere, ridge `reg`); a new user is folded in
  by the same closed-form user step on s, then scored s_hat = x_u Y^T;
- mult_vae (Liang et al. 2018): ranking/mult_vae.py.

Each spec's grid is searched on the validation users (nDCG@100), as the rating protocol's grids.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class RankerSpec:
  """A ranking model: `fit(X, options, val)` -> params (val(params) -> validation nDCG@100, for
  early stopping), `score(params, s [U, I]) -> [U, I]`, and its validation grid."""

  name: str
  family: str  # "baseline" (classical) or "model" (amortised inference)
  fit: Callable[..., Any]
  score: Callable[..., jnp.ndarray]
  grid: tuple[dict, ...] = ({},)
  # What the scores are: "score" (a ranking score only), "softmax" (logits of a softmax over
  # the items: recommend reports a probability) or "sigmoid" (logits of a positive label).
  link: str = "score"
  # The same parameters scored without adaptation (score(params, s) with no inner step), for the
  # report of what adaptation adds; None where that is not defined or is a traced option.
  unadapted: Callable[..., jnp.ndarray] | None = None


def popularity_fit(x, options, val=None):
  return {"counts": jnp.asarray(x.sum(0))}


def popularity_score(params, s):
  return jnp.broadcast_to(params["counts"][None, :], s.shape)


def item_knn_fit(x, options, val=None):
  x = np.asarray(x, np.float64)
  norms = np.sqrt(x.sum(0))
  sim = (x.T @ x) / np.maximum(np.outer(norms, norms), 1e-12)
  np.fill_diagonal(sim, 0.0)
  k = options.get("neighbours")
  if k is not None and k < sim.shape[0]:
    cut = -np.partition(-sim, k - 1, axis=0)[k - 1][None, :]  # each column's k-th largest
    sim = np.where(sim >= cut, sim, 0.0)
  return {"sim": jnp.asarray(sim, jnp.float32)}


def item_knn_score(params, s):
  return s @ params["sim"]


def ease_weights(x: np.ndarray, lam: float) -> np.ndarray:
  """EASE's closed form B [I, I] (float64 solve on the host)."""
  x = np.asarray(x, np.float64)
  g = x.T @ x + lam * np.eye(x.shape[1])
  p = np.linalg.inv(g)
  b = -p / np.diag(p)[None, :]
  np.fill_diagonal(b, 0.0)
  return b


def ease_fit(x, options, val=None):
  return {"b": jnp.asarray(ease_weights(x, options["lam"]), jnp.float32)}


def ease_score(params, s):
  return s @ params["b"]


def _user_step(y, c_pos, reg):
  """The ALS user step for rows c_pos [U, I] (0/1 positives) given item factors y [I, d]: x_u =
  (Y^T Y + alpha Y^T diag(p_u) Y + reg I)^-1 (1 + alpha) Y^T p_u, alpha folded into c_pos."""
  alpha, p = c_pos
  d = y.shape[1]
  gram = y.T @ y + reg * jnp.eye(d)
  outer = (y[:, :, None] * y[:, None, :]).reshape(y.shape[0], d * d)  # [I, d*d]: one matmul for every user
  a = gram[None] + alpha * (p @ outer).reshape(-1, d, d)
  b = (1.0 + alpha) * (p @ y)
  return jnp.linalg.solve(a, b[..., None])[..., 0]


@jax.jit
def _als_sweep(y, x, alpha, reg):
  u = _user_step(y, (alpha, x), reg)
  y = _user_step(u, (alpha, x.T), reg)
  return y


def wmf_fit(x, options, val=None):
  rng = np.random.default_rng(options.get("seed", 0))
  d = options["rank"]
  y = jnp.asarray(0.01 * rng.standard_normal((x.shape[1], d)), jnp.float32)
  xd = jnp.asarray(x, jnp.float32)
  for _ in range(options.get("iters", 10)):
    y = _als_sweep(y, xd, options["alpha"], options["reg"])
  return {"y": y, "alpha": jnp.float32(options["alpha"]), "reg": jnp.float32(options["reg"])}


def wmf_score(params, s):
  u = _user_step(params["y"], (params["alpha"], s), params["reg"])
  return u @ params["y"].T


SPECS = {
  s.name: s
  for s in (
    RankerSpec("popularity", "baseline", popularity_fit, popularity_score),
    RankerSpec(
      "item_knn", "baseline", item_knn_fit, item_knn_score, tuple({"neighbours": k} for k in (20, 50, 100, 200, None))
    ),
    RankerSpec(
      "ease", "baseline", ease_fit, ease_score, tuple({"lam": lam} for lam in (50, 100, 200, 500, 1000, 2000, 5000))
    ),
    RankerSpec(
      "wmf",
      "baseline",
      wmf_fit,
      wmf_score,
      tuple({"rank": 64, "alpha": a, "reg": r} for a in (2.0, 10.0, 50.0) for r in (1.0, 10.0)),
    ),
  )
}
