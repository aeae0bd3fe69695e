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
from metarec_jax.ranking import recommend as ranking_recommend
from metarec_jax.ranking.recommend import is_ranking_run
from metarec_jax.recommend import (
  RecommendError,
  batch_recommend,
  format_batch,
  format_table,
  load_trained,
  new_user_ratings,
  parse_user_features,
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
  "liked",
  None,
  "The new user's liked items only, as item ids (instead of --ratings): a ranking run folds them in; a rating "
  "run reads each as the top of the rating scale.",
)
flags.DEFINE_list(
  "user_features",
  [],
  "Optional user features as field=code (e.g. gender=1); unset fields take the most common value among training users.",
)
flags.DEFINE_integer("top_k", 10, "How many items to recommend.")
flags.DEFINE_integer(
  "min_item_ratings", 0, "Recommend only items with at least this many training ratings (0: every item)."
)
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
    given = [x for x in (FLAGS.ratings is not None, bool(FLAGS.ratings_file), FLAGS.liked is not None) if x]
    if batch and given:
      raise RecommendError("--batch_scenario ranks the test users' own supports; drop --ratings/--ratings_file/--liked")
    if not batch and len(given) != 1:
      raise RecommendError("give exactly one of --ratings, --ratings_file and --liked (or --batch_scenario)")
    out = FLAGS.out or os.path.join(FLAGS.workdir, f"recommend_{FLAGS.batch_scenario}.json")
    ranking = is_ranking_run(FLAGS.workdir)
    if ranking is not None:  # a --protocol=ranking run
      args = (FLAGS.batch_scenario, FLAGS.top_k, FLAGS.liked, FLAGS.min_item_ratings)
      res = ranking_recommend.recommend(ranking, FLAGS.workdir, FLAGS.data_dir, *args)
      text = ranking_recommend.format_result(res, out)
    else:
      tr = load_trained(FLAGS.workdir, FLAGS.data_dir)
      if batch:
        res = batch_recommend(tr, FLAGS.batch_scenario, FLAGS.top_k, FLAGS.relevance_threshold)
        text = format_batch(res, out)
      else:
        ratings = new_user_ratings(tr, FLAGS.ratings, FLAGS.ratings_file, FLAGS.liked)
        features = parse_user_features(FLAGS.user_features)
        res = recommend_for_new_user(tr, ratings, FLAGS.top_k, features, FLAGS.min_item_ratings)
        text = format_table(res)
    if batch:
      write_json_atomic(out, res)
  except (RecommendError, DataError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  shown = {k: v for k, v in res.items() if k != "lists"}
  print(json.dumps(to_jsonable(shown), indent=2, sort_keys=True) if FLAGS.json else text)


if __name__ == "__main__":
  runtime_flags.run(main)
