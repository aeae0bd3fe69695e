"""Top-K recommendation for a new user from a few ratings, and full-catalogue batch evaluation.

`load_trained(workdir)` rebuilds a finished run (its config.json, the same data and splits)
and restores the learner's best checkpoint. `recommend_for_new_user` adapts the learner to
the given ratings, exactly as at evaluation time (the ratings are the support set), and
scores every item the user has not rated; items without training ratings are scored from
their features. `batch_recommend` ranks the whole candidate catalogue for every test user
of a scenario and reports Precision/Recall/HR/nDCG@K against the user's held-out liked items.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax.numpy as jnp
import numpy as np
from absl import logging

from metarec_jax import metrics as metrics_lib
from metarec_jax.checkpoint import FitCheckpoints, checkpoint_dir
from metarec_jax.data.features import NEW_USER_HELPER_VALUES
from metarec_jax.data.io import parse_float, read_csv_rows
from metarec_jax.data.schema import DataError
from metarec_jax.config import Config
from metarec_jax.evaluate import make_predict_fn
from metarec_jax.learners import FIT, REUSE, attach_options, get_spec
from metarec_jax.protocol import FINAL_METRICS
from metarec_jax.setup import Setup, build_setup
from metarec_jax.summary import format_batch, format_table  # noqa: F401 (the texts recommend prints)


class RecommendError(ValueError):
  """Bad input to the recommendation module (ratings, features, flags, workdir)."""


@dataclasses.dataclass
class Trained:
  setup: Setup
  learner: object
  params: object
  checkpoint_step: int | None


def load_trained(workdir: str, data_dir: str | None = None) -> Trained:
  """The run in `workdir` with its learner's best checkpoint (params restored, not retrained)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise RecommendError(f"{path}: not found; --workdir must be a folder written by experiments.train")
  with open(path) as f:
    raw = json.load(f)
  config = Config.from_dict(raw, source=path)
  if data_dir:
    config = dataclasses.replace(config, data_dir=data_dir)
  st = build_setup(config)
  final_path = os.path.join(workdir, FINAL_METRICS)
  final = {}
  if os.path.isfile(final_path):
    with open(final_path) as f:
      final = json.load(f)
  recorded = final.get("base")
  if config.base and recorded and recorded.get("name") == config.base:  # the base's choice: no grid again
    val = next((v for k, v in recorded.items() if k.startswith("val/")), None)
    st.select(config.base, recorded={"selected": recorded["selected"], "val": val})
  spec = get_spec(config.learner)
  options = {}
  if spec.grid:  # the learner's own validation choice, recorded by the run
    options = final.get("training", {}).get(config.learner, {}).get("selected")
    if options is None:
      raise RecommendError(
        f"{final_path}: no recorded validation choice of {config.learner!r} (field "
        f"'training'.{config.learner!r}.'selected'); is the run finished?"
      )
  learner = st.make(config.learner, **options)
  params = st.init_params(learner)
  step = None
  if spec.source != FIT:  # trained: its own checkpoint, or the network it reuses
    owner = spec.params_from if spec.source == REUSE else config.learner
    if spec.source == REUSE:
      params = st.init_params(st.make(owner))
    folder = checkpoint_dir(workdir, owner)
    if not os.path.isdir(folder):
      raise RecommendError(f"{folder}: no checkpoints of {owner!r}; train with --checkpoints")
    ck = FitCheckpoints(folder)
    try:
      step = ck.best_step()
      if step is None:
        raise RecommendError(f"{folder}: holds no checkpoint of {owner!r}")
      params = ck.restore_params(step, params)
    finally:
      ck.close()
  params = attach_options(config.learner, params, options) if options else params
  return Trained(st, learner, params, step)


def parse_user_features(items: list[str]) -> dict[str, str]:
  """--user_features entries field=code -> {field: code}."""
  out = {}
  for it in items:
    if it.count("=") != 1:
      raise RecommendError(f"--user_features entry {it!r}: expected field=code")
    k, v = it.split("=")
    out[k.strip()] = v.strip()
  return out


def _item_index(ds) -> dict[str, int]:
  return {str(x): i for i, x in enumerate(ds.item_ids)}


def _check_rating(value: float, ds, where: str) -> float:
  lo, hi = ds.rating_scale
  if not lo <= value <= hi:
    raise RecommendError(f"{where}: rating {value:g} is outside the rating scale [{lo:g}, {hi:g}]")
  return value


def parse_ratings(spec: str, ds) -> list[tuple[int, float]]:
  """'item_id:rating,...' -> [(item index, rating)]; a repeated item keeps its last rating."""
  pairs = [p.strip() for p in (spec or "").split(",") if p.strip()]
  if not pairs:
    raise RecommendError("--ratings is empty; give item_id:rating pairs, e.g. --ratings=50:5,181:4")
  index, out = _item_index(ds), []
  for j, p in enumerate(pairs, 1):
    if p.count(":") != 1:
      raise RecommendError(f"--ratings pair {j} ({p!r}): expected item_id:rating")
    item, value = (x.strip() for x in p.split(":"))
    if item not in index:
      raise RecommendError(
        f"--ratings pair {j}: item id {item!r} is not an item of {ds.name} "
        f"({ds.n_items} items, ids {ds.item_ids[0]}..{ds.item_ids[-1]})"
      )
    try:
      r = float(value)
    except ValueError:
      raise RecommendError(f"--ratings pair {j} ({p!r}): rating {value!r} is not a number") from None
    out.append((index[item], _check_rating(r, ds, f"--ratings pair {j}")))
  return _dedupe(out, "--ratings")


def read_ratings_file(path: str, ds) -> list[tuple[int, float]]:
  """A CSV with the header 'item_id,rating' -> [(item index, rating)]."""
  rows = read_csv_rows(path, source="Write one 'item_id,rating' row per rating.")
  line, header = rows[0]
  if [h.strip() for h in header] != ["item_id", "rating"]:
    raise DataError(f"{path}:{line}: expected the header 'item_id,rating', got {','.join(header)!r}")
  if len(rows) == 1:
    raise DataError(f"{path}: no ratings after the header")
  index, out = _item_index(ds), []
  for line, (item, value) in rows[1:]:
    item = item.strip()
    if item not in index:
      raise DataError(f"{path}:{line}: field 'item_id' {item!r} is not an item of {ds.name}")
    r = parse_float(path, line, "rating", value.strip())
    out.append((index[item], _check_rating(r, ds, f"{path}:{line}")))
  return _dedupe(out, path)


def new_user_ratings(tr: "Trained", ratings: str | None, ratings_file: str | None, liked: list | None):
  """The new user's (item index, rating) pairs from exactly one of --ratings, --ratings_file or
  --liked (each liked item reads as the top of the rating scale)."""
  ds = tr.setup.ds
  if liked is not None:
    return parse_ratings(",".join(f"{i}:{ds.rating_scale[1]:g}" for i in liked), ds)
  return parse_ratings(ratings, ds) if ratings is not None else read_ratings_file(ratings_file, ds)


def _dedupe(pairs, where):
  last = {}
  for i, r in pairs:
    last[i] = r
  if len(last) != len(pairs):
    logging.warning("%s: %d repeated item(s); kept the last rating of each", where, len(pairs) - len(last))
  return list(last.items())


def new_user_tables(st: Setup, features: dict[str, str] | None = None) -> tuple[dict, int, dict]:
  """The feature tables with one row appended for the new user; returns (tables, user index, values).

  A user field not given takes its most common value among the meta-training users.
  `features` maps a field ('user/age' or 'age') to an integer code of that field.
  """
  features = dict(features or {})
  user_fields = {f.name: f for f in st.fields if f.name.startswith("user/")}
  values = {}
  for key, raw in features.items():
    name = key if key.startswith("user/") else f"user/{key}"
    if name not in user_fields:
      raise RecommendError(
        f"--user_features: {key!r} is not a user field of {st.ds.name}; choose from "
        f"{', '.join(user_fields) or '(none)'}"
      )
    spec = user_fields[name]
    try:
      code = int(raw)
    except ValueError:
      raise RecommendError(
        f"--user_features: {name}={raw!r} must be an integer code in [0, {spec.vocab_size - 1}]"
      ) from None
    if not 0 <= code < spec.vocab_size:
      raise RecommendError(f"--user_features: {name}={code} is outside [0, {spec.vocab_size - 1}]")
    values[name] = code
  train_users = np.unique(st.scen.train_ratings[0])
  tables = dict(st.tables)
  for name in user_fields:
    col = st.tables[name]
    if name not in values:
      vals, counts = np.unique(col[train_users], return_counts=True, axis=0)
      values[name] = vals[np.argmax(counts)].tolist()
    tables[name] = np.concatenate([col, np.asarray([values[name]], col.dtype)])
  for name, outside in NEW_USER_HELPER_VALUES.items():  # per-user helper tables: not a training user
    if name in tables:
      tables[name] = np.concatenate([tables[name], np.asarray([outside], tables[name].dtype)])
  return tables, st.ds.n_users, values


def _episode(users, support_items, support_ratings, support_mask, candidates):
  T, C = len(users), len(candidates)
  return {
    "user": jnp.asarray(users, jnp.int32),
    "support_item": jnp.asarray(support_items, jnp.int32),
    "support_rating": jnp.asarray(support_ratings, jnp.float32),
    "support_mask": jnp.asarray(support_mask, bool),
    "query_item": jnp.asarray(np.broadcast_to(candidates, (T, C)), jnp.int32),
    "query_rating": jnp.zeros((T, C), jnp.float32),
    "query_mask": jnp.ones((T, C), bool),
  }


def recommend_for_new_user(
  tr: Trained,
  ratings: list[tuple[int, float]],
  top_k: int = 10,
  features: dict[str, str] | None = None,
  min_item_ratings: int = 0,
) -> dict:
  """Adapts to `ratings` and ranks every item the user has not rated (and, with
  `min_item_ratings`, that has at least that many training ratings); scores are in the rating
  scale (clipped to it) or, for binary labels, probabilities. Returns a JSON-able dict."""
  st, ds = tr.setup, tr.setup.ds
  if not ratings:
    raise RecommendError("no ratings given; the learner adapts from at least one rating")
  rated = np.array([i for i, _ in ratings])
  candidates = np.setdiff1d(np.arange(ds.n_items), rated)
  if min_item_ratings:
    counts = np.bincount(st.scen.train_ratings[1], minlength=ds.n_items)
    candidates = candidates[counts[candidates] >= min_item_ratings]
  if not 1 <= top_k <= len(candidates):
    raise RecommendError(f"--top_k={top_k} must be in [1, {len(candidates)}] (the items the user has not rated)")
  tables, user, values = new_user_tables(st, features)
  S = max(len(ratings), st.scen.train.support_item.shape[1])
  items = np.zeros((1, S), np.int32)
  rates = np.zeros((1, S), np.float32)
  mask = np.zeros((1, S), bool)
  mask[0, : len(ratings)] = True
  items[0, : len(ratings)] = rated
  rates[0, : len(ratings)] = st.scen.label.encode(np.array([r for _, r in ratings]))  # as the episodes were
  predict = make_predict_fn(tr.learner)
  scores = np.asarray(
    st.scen.label.decode(
      predict(
        tr.params, {k: jnp.asarray(v) for k, v in tables.items()}, _episode([user], items, rates, mask, candidates)
      )
    )
  )[0]
  order = np.argsort(-scores, kind="stable")[:top_k]  # ranked by the raw score (no ties from clipping)
  if not st.scen.label.binary:  # reported in the rating scale: a rating beyond it is not a rating
    scores = np.clip(scores, *ds.rating_scale)
  known = np.zeros(ds.n_items, bool)
  known[st.scen.train_ratings[1]] = True
  rows = [
    {
      "rank": r + 1,
      "item_id": plain_id(ds.item_ids[candidates[j]]),
      "title": ds.item_titles[candidates[j]] if ds.item_titles else None,
      "score": float(scores[j]),
      "new_item": not bool(known[candidates[j]]),
    }
    for r, j in enumerate(order)
  ]
  return {
    "dataset": ds.name,
    "learner": tr.learner.name,
    "checkpoint_step": tr.checkpoint_step,
    "ratings": [
      {"item_id": plain_id(ds.item_ids[i]), "rating": r, "title": ds.item_titles[i] if ds.item_titles else None}
      for i, r in ratings
    ],
    "user_features": values,
    "n_candidates": int(len(candidates)),
    "top_k": rows,
  }


def plain_id(x):
  return x.item() if hasattr(x, "item") else x


def batch_recommend(tr: Trained, scenario: str, top_k: int = 10, threshold: float = 4.0, chunk: int = 32) -> dict:
  """Top-K over the scenario's whole candidate catalogue for every test user, with ranking metrics.

  Candidates: the existing items (warm, user-cold) or the new items (item-cold,
  user+item-cold), minus the user's support items. Relevant: the user's query items rated
  >= `threshold` (in the rating scale; with binary labels, the positive query items).
  """
  st, ds = tr.setup, tr.setup.ds
  label = st.scen.label
  cut = 0.5 if label.binary else float(label.encode(np.array([threshold]))[0])
  if scenario not in st.scen.test:
    raise RecommendError(f"unknown scenario {scenario!r}; choose from {', '.join(st.scen.test)}")
  eps = st.scen.test[scenario]
  if len(eps) == 0:
    raise RecommendError(f"scenario {scenario} has no test users")
  new = st.scen.split.new_item
  candidates = np.flatnonzero(new if scenario in ("item_cold", "user_item_cold") else ~new)
  C = len(candidates)
  most = int(C - eps.support_mask.sum(axis=1).max())
  if not 1 <= top_k <= most:
    raise RecommendError(f"--top_k={top_k} must be in [1, {most}] ({C} candidates less the largest support)")
  pos = np.full(ds.n_items, -1)
  pos[candidates] = np.arange(C)
  T = len(eps)
  valid = np.ones((T, C), bool)
  relevant = np.zeros((T, C), bool)
  for t in range(T):
    s = pos[eps.support_item[t][eps.support_mask[t]]]
    valid[t, s[s >= 0]] = False
    liked = eps.query_mask[t] & (eps.query_rating[t] >= cut)
    q = pos[eps.query_item[t][liked]]
    relevant[t, q[q >= 0]] = True
  predict = make_predict_fn(tr.learner)
  tables = {k: jnp.asarray(v) for k, v in st.tables.items()}
  idx = np.arange(-(-T // chunk) * chunk) % T
  scores = []
  for c in range(len(idx) // chunk):
    b = idx[c * chunk : (c + 1) * chunk]
    scores.append(
      np.asarray(
        predict(
          tr.params,
          tables,
          _episode(eps.user[b], eps.support_item[b], eps.support_rating[b], eps.support_mask[b], candidates),
        )
      )
    )
  scores = np.concatenate(scores)[:T]
  m = metrics_lib.topk_metrics(jnp.asarray(scores), jnp.asarray(relevant), jnp.asarray(valid), top_k)
  # Reference on the same candidates: rank by the number of training ratings (popularity).
  # New items have none, so on the item-cold scenarios there is no popularity to rank by.
  counts = np.bincount(st.scen.train_ratings[1], minlength=ds.n_items)[candidates].astype(np.float32)
  pop = None
  if counts.max() > 0:
    pop = metrics_lib.topk_metrics(
      jnp.asarray(np.broadcast_to(counts, (T, C))), jnp.asarray(relevant), jnp.asarray(valid), top_k
    )
  masked = np.where(valid, scores, -np.inf)
  top = np.argsort(-masked, axis=1, kind="stable")[:, :top_k]
  lists = [
    {
      "user_id": plain_id(ds.user_ids[eps.user[t]]),
      "items": [plain_id(ds.item_ids[candidates[j]]) for j in top[t]],
      "scores": [float(scores[t, j]) for j in top[t]],
    }
    for t in range(T)
  ]
  return {
    "dataset": ds.name,
    "learner": tr.learner.name,
    "scenario": scenario,
    "checkpoint_step": tr.checkpoint_step,
    "k": top_k,
    "relevance_threshold": threshold,
    "n_candidates": int(C),
    "n_test_users": T,
    "metrics": {k: float(v) for k, v in m.items()},
    "popularity_metrics": None if pop is None else {k: float(v) for k, v in pop.items()},
    "lists": lists,
  }
