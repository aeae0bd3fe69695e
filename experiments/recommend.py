"""Top-K recommendations for a new user from a few ratings, with a trained run's best checkpoint.

  python -m experiments.recommend --workdir=runs/ml100k --ratings=50:5,172:5,181:5,1:2 --top_k=10
  python -m experiments.recommend --workdir=runs/ml100k --ratings_file=my_ratings.csv --json
  python -m experiments.recommend --workdir=runs/ml100k --batch_scenario=user_cold --top_k=10

The run's config.json rebuilds its data and splits; the learner adapts to the ratings as at
evaluation (metarec_jax/recommend.py). Bad input is one error line and exit code 2.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

from experiments import runtime_flags

from metarec_jax.data import DataError
from metarec_jax.data.tasks import SCENARIOS
from metarec_jax.recommend import (
  RecommendError,
  batch_recommend,
  format_batch,
  format_table,
  parse_user_features,
  load_trained,
  parse_ratings,
  read_ratings_file,
  recommend_for_new_user,
)
from metarec_jax.writers import to_jsonable, write_json_atomic

flags.DEFINE_string("workdir", None, "A finished experiments.train run folder (config.json and checkpoints).")
flags.DEFINE_string(
  "data_dir", None, "Where the dataset folders are (default: the run's, then $METAREC_DATA_DIR, then ./data)."
)
flags.DEFINE_string("ratings", None, "The new user's ratings as item_id:rating,item_id:rating,...")
flags.DEFINE_string("ratings_file", None, "A CSV with the header item_id,rating (instead of --ratings).")
flags.DEFINE_list(
  "user_features",
  [],
  "Optional user features as field=code (e.g. gender=1); unset fields take the most common value among training users.",
)
flags.DEFINE_integer("top_k", 10, "How many items to recommend.")
flags.DEFINE_bool("json", False, "Print machine-readable JSON instead of a table.")
flags.DEFINE_enum(
  "batch_scenario",
  None,
  list(SCENARIOS),
  "Batch mode: top-K lists and ranking metrics for every test user of this scenario.",
)
flags.DEFINE_float("relevance_threshold", 4.0, "Batch mode: a held-out rating at least this counts as relevant.")
flags.DEFINE_string("out", None, "Batch mode output JSON (default <workdir>/recommend_<scenario>.json).")
FLAGS = flags.FLAGS


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
    features = parse_user_features(FLAGS.user_features)
    tr = load_trained(FLAGS.workdir, FLAGS.data_dir)
    if batch:
      res = batch_recommend(tr, FLAGS.batch_scenario, FLAGS.top_k, FLAGS.relevance_threshold)
      out = FLAGS.out or os.path.join(FLAGS.workdir, f"recommend_{FLAGS.batch_scenario}.json")
      write_json_atomic(out, res)
      if FLAGS.json:
        print(json.dumps(to_jsonable({k: v for k, v in res.items() if k != "lists"}), indent=2, sort_keys=True))
      else:
        print(format_batch(res, out))
      return
    ratings = (
      parse_ratings(FLAGS.ratings, tr.setup.ds)
      if FLAGS.ratings is not None
      else read_ratings_file(FLAGS.ratings_file, tr.setup.ds)
    )
    res = recommend_for_new_user(tr, ratings, FLAGS.top_k, features)
  except (RecommendError, DataError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if FLAGS.json:
    print(json.dumps(to_jsonable(res), indent=2, sort_keys=True))
  else:
    print(format_table(res))


if __name__ == "__main__":
  runtime_flags.run(main)
