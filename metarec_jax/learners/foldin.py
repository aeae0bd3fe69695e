"""Classical cold-start baselines with no meta-training: bias and ALS fold-in.

bias_foldin: r = mu + b_u + b_i. Item biases are shrunk means of the training residuals
(alternating with user biases); a new item's bias is regressed (ridge) from its content
features; a new user's bias is solved from the support with shrinkage `reg_user`.

als_foldin: the same biases plus <p_u, q_i>, with P, Q fitted by ALS on the bias residuals.
A new item's factors are regressed from content; a new user's (p_u, b_u) is the closed-form
ridge solution on the support. Adaptation without any meta-training.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from metarec_jax.data.features import ITEM_ID_FIELD
from metarec_jax.learners.base import Batch, FitContext, Learner
from metarec_jax.learners.registry import FIT, LearnerSpec, register

FOLDIN = ("bias_foldin", "als_foldin")
_FOLDIN_OPTIONS = ("reg_user", "reg_item", "reg_content", "rank", "reg", "als_iters")


def item_design_matrix(ctx: FitContext, sparse: bool = False):
  """[n_items, F] one-hot / multi-hot item content features, text vectors ("text" fields, as they
  are) and an intercept column. Not the item id, and not dense fields (the co-occurrence vectors,
  made from training interactions, and the per-episode support similarity): not content.
  `sparse`: as a scipy CSR matrix (ML-1M's is 3,932 x 10,197: 321 MB dense, 0.09 % filled)."""
  import scipy.sparse as sp

  n = ctx.n_items
  cols = [sp.csr_matrix(np.ones((n, 1)))]
  for spec in ctx.fields:
    if not spec.name.startswith("item/") or spec.name == ITEM_ID_FIELD or spec.kind == "dense":
      continue
    if spec.kind == "text":
      cols.append(sp.csr_matrix(np.asarray(ctx.tables[spec.name], np.float64)))
      continue
    ids = np.asarray(ctx.tables[spec.name])
    ids = ids[:, None] if ids.ndim == 1 else ids
    rows = np.repeat(np.arange(n), ids.shape[1])
    valid = ids.reshape(-1) >= 0
    block = sp.csr_matrix(
      (np.ones(int(valid.sum())), (rows[valid], ids.reshape(-1)[valid])), shape=(n, spec.vocab_size)
    )  # duplicates add up, as counts
    block.sum_duplicates()
    cols.append(sp.diags(1.0 / np.maximum(np.asarray(block.sum(1)).ravel(), 1.0)) @ block)
  X = sp.hstack(cols, format="csr")
  return X if sparse else X.toarray()


def ridge(X: np.ndarray, Y: np.ndarray, reg: float) -> np.ndarray:
  return np.linalg.solve(X.T @ X + reg * np.eye(X.shape[1]), X.T @ Y)


def content_ridge_predict(
  ctx: FitContext, known: np.ndarray, Y: np.ndarray, reg: float, dual: bool | None = None
) -> np.ndarray:
  """Ridge regression of the known items' targets Y [n_known, ...] on their content
  features; returns the predictions for every item. With more features than known items
  (10,197 against ~3,400 on ML-1M) it is solved in the dual,
  X (X_k^T X_k + reg I)^-1 X_k^T Y = (X X_k^T) (X_k X_k^T + reg I)^-1 Y, an n_known-sized
  system; otherwise (e.g. Last.fm's 17 columns against 10,000 artists) in the primal. The
  matrix each needs (X X_k^T, from the sparse X, or X) is built once per training context
  (`ctx.memo`) and reused by every configuration of the validation grid. `dual` forces the
  choice (tests)."""
  X = ctx.memo.get("item_design")
  if X is None:
    X = ctx.memo["item_design"] = item_design_matrix(ctx, sparse=True)
  if dual is None:
    dual = X.shape[1] > known.sum()
  if not dual:
    dense = ctx.memo.get("item_design_dense")
    if dense is None:
      dense = ctx.memo["item_design_dense"] = X.toarray()
    return dense @ ridge(dense[known], Y, reg)
  key = ("item_gram", known.tobytes())
  G = ctx.memo.get(key)
  if G is None:
    G = ctx.memo[key] = (X @ X[np.flatnonzero(known)].T).toarray()
  inv_key = ("item_gram_inverse", known.tobytes(), float(reg))  # one factorisation per shrinkage
  K_inv = ctx.memo.get(inv_key)
  if K_inv is None:
    K = G[known]
    K[np.diag_indices_from(K)] += reg
    K_inv = ctx.memo[inv_key] = np.linalg.inv(K)
  return G @ (K_inv @ Y)


def spd_solve(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """x with a x = b for a symmetric positive definite a [n, n] and b [n]: Gauss-Jordan
  elimination without pivoting (stable for SPD matrices), in plain XLA ops.

  Not `jnp.linalg.solve`: on CPU that is a LAPACK call that waits for sub-tasks inside XLA's
  intra-op thread pool, which has as many threads as cores; two devices each in such a wait at
  once (the baselines' device and the learner's, or a split evaluation) leave no thread to run
  the sub-tasks, and the process hangs (seen on this 2-core machine)."""
  n = a.shape[-1]
  m = jnp.concatenate([a, b[:, None]], axis=1)

  def eliminate(k, m):
    row = m[k] / m[k, k]
    m = m - m[:, k, None] * row[None, :]
    return m.at[k].set(row)

  return jax.lax.fori_loop(0, n, eliminate, m)[:, n]


def fit_biases(ctx: FitContext, reg_user: float, reg_item: float, iters: int = 15):
  u, i, r = ctx.train_users, ctx.train_items, ctx.train_ratings.astype(np.float64)
  n_users = int(u.max()) + 1 if len(u) else 1
  mu = r.mean()
  bu, bi = np.zeros(n_users), np.zeros(ctx.n_items)
  cu, ci = np.bincount(u, minlength=n_users), np.bincount(i, minlength=ctx.n_items)
  for _ in range(iters):
    bi = np.bincount(i, r - mu - bu[u], ctx.n_items) / (ci + reg_item)
    bu = np.bincount(u, r - mu - bi[i], n_users) / (cu + reg_user)
  return mu, bu, bi, ci > 0


def _blocks(keys: np.ndarray, n: int, size: int = 64):
  """The rows of each key (0..n-1) in blocks of `size` keys of similar counts, padded to the
  block's largest: [(keys [b], row indices [b, L], valid [b, L])] (keys without rows left out)."""
  order = np.argsort(keys, kind="stable")
  counts = np.bincount(keys, minlength=n)
  starts = np.concatenate([[0], np.cumsum(counts)])
  ents = np.argsort(counts, kind="stable")
  ents = ents[counts[ents] > 0]
  out = []
  for s in range(0, len(ents), size):
    e = ents[s : s + size]
    L = int(counts[e].max())
    valid = np.arange(L)[None, :] < counts[e][:, None]
    pos = np.where(valid, starts[e][:, None] + np.arange(L)[None, :], 0)
    out.append((e, order[pos], valid))
  return out


def _solve_plan(keys: np.ndarray, other_keys: np.ndarray, resid: np.ndarray, n: int, n_other: int):
  """`_blocks` of `keys`, with what every sweep of ALS reads from them precomputed once per fit:
  [(keys [b], the other side's rows [b, L], residuals [b, L, 1])]. Padding points at row
  `n_other`, which the factor arrays keep at zero, so the gather needs no mask."""
  return [
    (e, np.where(valid, other_keys[idx], n_other), (resid[idx] * valid)[..., None])
    for e, idx, valid in _blocks(keys, n)
  ]


def _als_half(plan, other: np.ndarray, out: np.ndarray, eye):
  """Each key's ridge solve on its rows' factors of the other side, a block of keys at once."""
  for e, rows, y in plan:
    F = np.take(other, rows, axis=0)  # [b, L, k]
    Ft = F.transpose(0, 2, 1)
    out[e] = np.linalg.solve(np.matmul(Ft, F) + eye, np.matmul(Ft, y))[..., 0]


def fit_als(resid, u, i, n_users, n_items, rank, reg, iters, seed):
  """ALS on the residuals: alternately every user's and every item's ridge solve (batched in
  blocks of similar counts; keys without ratings keep their random start). The factor arrays
  carry one zero row past the end for the blocks' padding (`_solve_plan`)."""
  rng = np.random.default_rng(seed)
  P, Q = np.zeros((n_users + 1, rank)), np.zeros((n_items + 1, rank))
  P[:n_users] = 0.1 * rng.standard_normal((n_users, rank))
  Q[:n_items] = 0.1 * rng.standard_normal((n_items, rank))
  resid = np.asarray(resid, np.float64)
  by_user = _solve_plan(u, i, resid, n_users, n_items)
  by_item = _solve_plan(i, u, resid, n_items, n_users)
  eye = reg * np.eye(rank)
  for _ in range(iters):
    _als_half(by_user, Q, P, eye)
    _als_half(by_item, P, Q, eye)
  return P[:n_users], Q[:n_items]


def make_foldin(
  name: str,
  *,
  reg_user: float = 5.0,
  reg_item: float = 5.0,
  reg_content: float = 10.0,
  rank: int = 16,
  reg: float = 10.0,
  als_iters: int = 10,
  seed: int = 0,
) -> Learner:
  if name not in FOLDIN:
    raise ValueError(f"Unsupported fold-in baseline: {name!r}; choose one of {', '.join(FOLDIN)}")
  use_factors = name == "als_foldin"

  def init(rng, example, ctx: FitContext):
    del rng, example
    mu, bu, bi, known = fit_biases(ctx, reg_user, reg_item)
    bi = np.where(known, bi, content_ridge_predict(ctx, known, bi[known], reg_content))
    # The shrinkages the support solve uses are parameters (traced), so one compiled
    # prediction serves every point of the validation grid.
    params = {"mu": jnp.float32(mu), "item_bias": jnp.asarray(bi, jnp.float32), "reg_user": jnp.float32(reg_user)}
    if use_factors:
      params["reg"] = jnp.float32(reg)
      u, i = ctx.train_users, ctx.train_items
      resid = ctx.train_ratings - mu - bu[u] - bi[i]
      _, Q = fit_als(resid, u, i, len(bu), ctx.n_items, rank, reg, als_iters, seed)
      Q = np.where(known[:, None], Q, content_ridge_predict(ctx, known, Q[known], reg_content))
      params["item_factors"] = jnp.asarray(Q, jnp.float32)
    return params

  def adapt(params, support: Batch):
    items, m = support.x["item"], support.mask.astype(jnp.float32)
    resid = (support.y - params["mu"] - params["item_bias"][items]) * m
    if not use_factors:
      return {"user_bias": resid.sum() / (m.sum() + params["reg_user"])}
    k = params["item_factors"].shape[-1]
    phi = jnp.concatenate([params["item_factors"][items], jnp.ones(items.shape + (1,))], axis=-1)
    penalty = jnp.concatenate([jnp.full((k,), params["reg"]), params["reg_user"][None]])
    A = (phi * m[:, None]).T @ phi + jnp.diag(penalty)
    z = spd_solve(A, phi.T @ resid)
    return {"user_factors": z[:k], "user_bias": z[k]}

  def predict(params, state, x):
    items = x["item"]
    out = params["mu"] + params["item_bias"][items] + state["user_bias"]
    if use_factors:
      out = out + params["item_factors"][items] @ state["user_factors"]
    return out

  return Learner(name=name, family="baseline", init=init, adapt=adapt, predict=predict, meta_loss=None)


GRIDS = {
  "bias_foldin": tuple({"reg_user": ru, "reg_item": ri} for ru in (1.0, 3.0, 10.0) for ri in (3.0, 10.0, 30.0)),
  "als_foldin": tuple({"rank": k, "reg": r} for k in (8, 24) for r in (3.0, 10.0, 30.0)),
}
for _name in FOLDIN:
  register(
    LearnerSpec(
      name=_name,
      family="baseline",
      source=FIT,
      grid=GRIDS[_name],
      grid_traced=True,
      baseline=True,
      default_baseline=True,
      stack_base=True,
      build=lambda model, *, seed=0, _name=_name, **options: make_foldin(
        _name, seed=seed, **{k: v for k, v in options.items() if k in _FOLDIN_OPTIONS}
      ),
    )
  )
