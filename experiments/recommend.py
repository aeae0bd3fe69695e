"""Top-K recommendations for a new user from a few ratings, with a trained run's best checkpoint.

  python -m experiments.recommend --workdir=runs/ml100k --ratings=50:5,172:5,181:5,1:2 --top_k=10
  python -m experiments.recommend --workdir=runs/ml100k --ratings_file=my_ratings.csv --json
  python -m experiments.recommend --workdir=runs/ml100k --batch_scenario=user_cold --top_k=10

The run's config.json rebuilds the same data and splits (--data_dir overrides where the data
lives); the learner adapts to the given ratings exactly as at evaluation and scores every item
the user has not rated (items without training ratings through their features). Batch mode
ranks the scenario's whole candidate catalogue for every test user and writes the lists and
Precision/Recall/HR/nDCG@K to --out (default <workdir>/recommend_<scenario>.json).
Bad input is one error line and exit code 2.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

from experiments import runtime_flags

from metarec_jax.data import DataError
from metarec_jax.data.tasks import SCENARIOS
from metarec_jax.recommend import (RecommendError, batch_recommend, load_trained, parse_ratings, read_ratings_file,
                                   recommend_for_new_user)
from metarec_jax.writers import to_jsonable, write_json_atomic

flags.DEFINE_string("workdir", None, "A finished experiments.train run folder (config.json and checkpoints).")
flags.DEFINE_string("data_dir", None, "Where the dataset folders are (default: the run's, then $METAREC_DATA_DIR).")
flags.DEFINE_string("ratings", None, "The new user's ratings as item_id:rating,item_id:rating,...")
flags.DEFINE_string("ratings_file", None, "A CSV with the header item_id,rating (instead of --ratings).")
flags.DEFINE_list("user_features", [], "Optional user features as field=code (e.g. gender=1); unset fields take "
                  "the most common value among training users.")
flags.DEFINE_integer("top_k", 10, "How many items to recommend.")
flags.DEFINE_bool("json", False, "Print machine-readable JSON instead of a table.")
flags.DEFINE_enum("batch_scenario", None, list(SCENARIOS), "Batch mode: top-K lists and ranking metrics for every "
                  "test user of this scenario.")
flags.DEFINE_float("relevance_threshold", 4.0, "Batch mode: a held-out rating at least this counts as relevant.")
flags.DEFINE_string("out", None, "Batch mode output JSON (default <workdir>/recommend_<scenario>.json).")
FLAGS = flags.FLAGS


def _features(items: list[str]) -> dict[str, str]:
  out = {}
  for it in items:
    if it.count("=") != 1:
      raise RecommendError(f"--user_features entry {it!r}: expected field=code")
    k, v = it.split("=")
    out[k.strip()] = v.strip()
  return out


def _print_table(res: dict) -> None:
  print(f"{res['dataset']}, learner {res['learner']} (checkpoint step {res['checkpoint_step']}); "
        f"adapted to {len(res['ratings'])} ratings:")
  for r in res["ratings"]:
    print(f"  {r['rating']:g}  {r['item_id']}  {r['title'] or ''}")
  print(f"top {len(res['top_k'])} of {res['n_candidates']} unrated items:")
  print(f"  {'rank':>4}  {'item':>6}  {'score':>5}  title")
  for row in res["top_k"]:
    flag = "  (new item)" if row["new_item"] else ""
    print(f"  {row['rank']:>4}  {row['item_id']!s:>6}  {row['score']:5.2f}  {row['title'] or ''}{flag}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  try:
    runtime_flags.apply()
    if not FLAGS.workdir:
      raise RecommendError("--workdir is required (a finished experiments.train run)")
    if FLAGS.top_k < 1:
      raise RecommendError(f"--top_k must be >= 1, got {FLAGS.top_k}")
    batch = FLAGS.batch_scenario is not None
    if batch and (FLAGS.ratings or FLAGS.ratings_file):
      raise RecommendError("--batch_scenario ranks the test users' own supports; drop --ratings/--ratings_file")
    if not batch and bool(FLAGS.ratings is not None) == bool(FLAGS.ratings_file):
      raise RecommendError("give exactly one of --ratings and --ratings_file (or --batch_scenario)")
    features = _features(FLAGS.user_features)
    tr = load_trained(FLAGS.workdir, FLAGS.data_dir)
    if batch:
      res = batch_recommend(tr, FLAGS.batch_scenario, FLAGS.top_k, FLAGS.relevance_threshold)
      out = FLAGS.out or os.path.join(FLAGS.workdir, f"recommend_{FLAGS.batch_scenario}.json")
      write_json_atomic(out, res)
      if FLAGS.json:
        print(json.dumps(to_jsonable({k: v for k, v in res.items() if k != "lists"}), indent=2, sort_keys=True))
      else:
        m = res["metrics"]
        k = res["k"]
        print(f"{res['dataset']} {res['scenario']}: {res['n_test_users']} test users, {res['n_candidates']} "
              f"candidates; P@{k} {m[f'precision@{k}']:.4f}  R@{k} {m[f'recall@{k}']:.4f}  HR@{k} "
              f"{m[f'hr@{k}']:.4f}  nDCG@{k} {m[f'ndcg@{k}']:.4f} over {int(m['n_users'])} users with a liked "
              f"held-out item; lists in {out}")
        p = res["popularity_metrics"]
        if p is None:
          print("  popularity ranking: not defined here (no candidate has training ratings)")
          return
        print(f"  popularity ranking on the same candidates: P@{k} {p[f'precision@{k}']:.4f}  R@{k} "
              f"{p[f'recall@{k}']:.4f}  HR@{k} {p[f'hr@{k}']:.4f}  nDCG@{k} {p[f'ndcg@{k}']:.4f}")
      return
    ratings = (parse_ratings(FLAGS.ratings, tr.setup.ds) if FLAGS.ratings is not None
               else read_ratings_file(FLAGS.ratings_file, tr.setup.ds))
    res = recommend_for_new_user(tr, ratings, FLAGS.top_k, features)
  except (RecommendError, DataError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if FLAGS.json:
    print(json.dumps(to_jsonable(res), indent=2, sort_keys=True))
  else:
    _print_table(res)


if __name__ == "__main__":
  runtime_flags.run(main)
