"""Recommendation with a ranking run (`--protocol=ranking`): its learner's saved parameters,
the same split rebuilt from config.json, top-K for one new user from the items they like, and
batch top-K over the test users next to popularity and EASE on the same users.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from metarec_jax.config import Config
from metarec_jax.ranking import RANKERS, get_ranker
from metarec_jax.ranking.evaluate import SELECT_METRIC, RankingEvaluator, per_user_metrics
from metarec_jax.recommend import plain_id
from metarec_jax.ranking.protocol import ranking_data

PARAMS_FILE = "ranker_{}.npz"


def save_params(workdir: str, name: str, params) -> str:
  """The parameters of ranker `name` as <workdir>/ranker_<name>.npz (leaves keyed by their path)."""
  from metarec_jax.writers import atomic_path

  flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v) for path, v in _leaves(params)}
  path = os.path.join(workdir, PARAMS_FILE.format(name))
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.savez(f, **flat)
  return path


def _leaves(params):
  return jax.tree_util.tree_flatten_with_path(params)[0]


def load_params(workdir: str, name: str) -> dict | None:
  path = os.path.join(workdir, PARAMS_FILE.format(name))
  if not os.path.isfile(path):
    return None
  out: dict = {}
  with np.load(path) as z:
    for key in z.files:
      node = out
      parts = key.split("/")
      for p in parts[:-1]:
        node = node.setdefault(p, {})
      node[parts[-1]] = jnp.asarray(z[key])
  return out


class RankingRun:
  """A finished ranking run: its Config, data, the learner's parameters, popularity and EASE."""

  def __init__(self, workdir: str, config: Config, data_dir: str | None = None):
    import dataclasses

    if data_dir:
      config = dataclasses.replace(config, data_dir=data_dir)
    self.workdir, self.config = workdir, config
    self.data = ranking_data(config)
    self.params = load_params(workdir, config.learner)
    if self.params is None:
      raise ValueError(f"{os.path.join(workdir, PARAMS_FILE.format(config.learner))}: not found; is the run finished?")
    self.spec = get_ranker(config.learner, config, self.data)
    self.reference = {"popularity": (RANKERS["popularity"], RANKERS["popularity"].fit(self.data.train_x, {}))}
    ease = load_params(workdir, "ease")
    if ease is None:  # not a baseline of this run: chosen on the validation users here
      ev, best = RankingEvaluator(self.data.n_items), None
      for options in RANKERS["ease"].grid:
        p = RANKERS["ease"].fit(self.data.train_x, options)
        v = ev.score(RANKERS["ease"].score, p, "val", self.data.val)[SELECT_METRIC]
        best = (v, p) if best is None or v > best[0] else best
      ease = best[1]
    self.reference["ease"] = (RANKERS["ease"], ease)

  def scores(self, spec, params, support: np.ndarray, chunk: int = 256) -> np.ndarray:
    fn = jax.jit(spec.score)
    out = [
      np.asarray(fn(params, jnp.asarray(support[i : i + chunk], jnp.float32))) for i in range(0, len(support), chunk)
    ]
    return np.concatenate(out) if out else np.zeros((0, self.data.n_items), np.float32)


def batch(run: RankingRun, top_k: int = 10) -> dict:
  """P/R/HR/nDCG@top_k of the run's learner, popularity and EASE on the test users (support
  folded in as in the run: --support_cap when it had one), and each user's list."""
  data, cap = run.data, run.config.support_cap
  support = data.test.support_mask(data.n_items, cap)
  excluded = data.test.support_mask(data.n_items)
  if not 1 <= top_k <= data.n_items - int(excluded.sum(1).max()):
    raise ValueError(f"--top_k={top_k} must be in [1, {data.n_items - int(excluded.sum(1).max())}]")
  relevant, excluded_d = jnp.asarray(data.test.query), jnp.asarray(excluded)

  def metrics(scores):  # the protocol's definitions (Recall@K over min(K, held-out count))
    m = per_user_metrics(jnp.asarray(scores), excluded_d, relevant, top_ks=(top_k,))
    out = {k: float(v.mean()) for k, v in m.items()}
    out["n_users"] = len(data.test)
    return out

  mine = run.scores(run.spec, run.params, support)
  top = np.argsort(-np.where(excluded, -np.inf, mine), axis=1, kind="stable")[:, :top_k]
  out = {
    "protocol": "ranking",
    "dataset": data.name,
    "learner": run.config.learner,
    "scenario": "user_cold",
    "k": top_k,
    "support_cap": cap,
    "n_candidates": data.n_items,
    "n_test_users": len(data.test),
    "metrics": metrics(mine),
  }
  for name, (spec, params) in run.reference.items():
    out[f"{name}_metrics"] = metrics(run.scores(spec, params, support))
  out["lists"] = [
    {"user": int(u), "items": [plain_id(data.item_ids[j]) for j in row]} for u, row in zip(data.test.users, top)
  ]
  return out


def for_user(run: RankingRun, liked: list, top_k: int = 10, min_item_ratings: int = 0) -> dict:
  """Top-K of the catalogue for a new user who likes the items `liked` (ids as in the source
  files), among the items with at least `min_item_ratings` training positives. Scores: the
  multinomial models' probability that the user's next liked item is this one (a softmax over
  the items not folded in), the episode learners' probability that the item is a positive (the
  sigmoid of their logit); other rankers' own scores (EASE, kNN: weighted overlaps)."""
  data = run.data
  index = {str(i): j for j, i in enumerate(data.item_ids)}
  missing = [str(i) for i in liked if str(i) not in index]
  if missing:
    raise ValueError(f"--liked: item(s) {', '.join(missing)} are not in the ranking catalogue of {data.name}")
  s = np.zeros((1, data.n_items), np.float32)
  s[0, [index[str(i)] for i in liked]] = 1.0
  scores = run.scores(run.spec, run.params, s)[0]
  if run.spec.link == "softmax":
    z = np.where(s[0] > 0, -np.inf, scores - scores[s[0] == 0].max())
    scores = np.exp(z) / np.exp(z).sum()
  elif run.spec.link == "sigmoid":
    scores = 1.0 / (1.0 + np.exp(-scores))
  enough = data.train_x.sum(0) >= min_item_ratings
  order = [j for j in np.argsort(-scores, kind="stable") if s[0, j] == 0 and enough[j]][:top_k]
  title = (lambda j: data.titles[j]) if data.titles else (lambda j: None)
  return {
    "protocol": "ranking",
    "dataset": data.name,
    "learner": run.config.learner,
    "liked": [{"item_id": plain_id(data.item_ids[index[str(i)]]), "title": title(index[str(i)])} for i in liked],
    "n_candidates": int(((s[0] == 0) & enough).sum()),
    "score": {"softmax": "probability", "sigmoid": "probability of a positive"}.get(run.spec.link, "score"),
    "top_k": [
      {"rank": r + 1, "item_id": plain_id(data.item_ids[j]), "title": title(j), "score": float(scores[j])}
      for r, j in enumerate(order)
    ],
  }


def recommend(config: Config, workdir: str, data_dir, scenario, top_k: int, liked, min_item_ratings: int = 0) -> dict:
  """experiments.recommend on a ranking run: batch mode (`scenario`, only user_cold) or one
  user's list from `liked`."""
  if scenario is not None and scenario != "user_cold":
    raise ValueError("a ranking run's test users are new users: use --batch_scenario=user_cold")
  if scenario is None and liked is None:
    raise ValueError("a ranking run takes the new user's liked items: --liked=ID,ID,...")
  run = RankingRun(workdir, config, data_dir)
  return batch(run, top_k) if scenario is not None else for_user(run, liked, top_k, min_item_ratings)


def format_result(res: dict, out: str | None = None) -> str:
  """The text a person reads for `batch` (lists written to `out`) or `for_user`."""
  if "metrics" in res:
    k, lines = res["k"], []
    for who in ("metrics", "popularity_metrics", "ease_metrics"):
      m = res[who]
      name = res["learner"] if who == "metrics" else who.split("_")[0]
      lines.append(
        f"{name:>12}: P@{k} {m[f'precision@{k}']:.4f}  R@{k} {m[f'recall@{k}']:.4f}  HR@{k} {m[f'hr@{k}']:.4f}  "
        f"nDCG@{k} {m[f'ndcg@{k}']:.4f}"
      )
    lines.append(f"{res['n_test_users']} test users, {res['n_candidates']} items; lists in {out}")
    return "\n".join(lines)
  lines = [f"{res['dataset']}, learner {res['learner']}; liked {len(res['liked'])} items:"]
  lines += [f"  {r['item_id']}  {r['title'] or ''}" for r in res["liked"]]
  lines.append(f"top {len(res['top_k'])} of {res['n_candidates']} items:")
  lines += [f"  {r['rank']:>4}  {r['item_id']!s:>6}  {r['score']:8.4f}  {r['title'] or ''}" for r in res["top_k"]]
  return "\n".join(lines)


def is_ranking_run(workdir: str) -> Config | None:
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    config = Config.from_dict(json.load(f), source=path)
  return config if config.protocol == "ranking" else None
