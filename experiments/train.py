"""Meta-train a learner and evaluate it, with baselines, on the four cold-start scenarios.

  python -m experiments.train --dataset=synthetic --workdir=runs/synthetic
  python -m experiments.train --dataset=ml-100k --data_dir=../shared/data --workdir=runs/ml100k

Writes <workdir>/config.json, metrics.jsonl (one line per epoch), final_metrics.json and
orbax checkpoints under <workdir>/checkpoints/<learner> (--resume continues from them).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from experiments import runtime_flags, shared_flags  # noqa: F401 (defines --label, --lastfm_protocol, --base, ...)

from metarec_jax.data import DATASETS, DataError
from metarec_jax.learners import ADAPT_MODES, LEARNERS
from metarec_jax.models import MODELS
from metarec_jax.train import BASELINES, Config, train_and_evaluate, with_dataset_defaults

_D = Config()
flags.DEFINE_enum("dataset", _D.dataset, list(DATASETS), "Dataset.")
flags.DEFINE_string("data_dir", None, "Folder holding the dataset folders (default: $METAREC_DATA_DIR).")
flags.DEFINE_integer("synthetic_users", _D.synthetic_users, "Users of the synthetic generator.")
flags.DEFINE_integer("synthetic_items", _D.synthetic_items, "Items of the synthetic generator.")
flags.DEFINE_string("csv_ratings", None, "--dataset=csv: ratings CSV with the header user,item,rating[,timestamp].")
flags.DEFINE_string("csv_user_features", None, "--dataset=csv: optional user feature CSV (header user,<columns>).")
flags.DEFINE_string("csv_item_features", None, "--dataset=csv: optional item feature CSV (header item,<columns>).")
flags.DEFINE_list("csv_columns", [], "--dataset=csv: the feature columns' types as name:categorical, "
                  "name:multihot:SEP, name:numeric or name:title (the item's display name).")
flags.DEFINE_list("csv_rating_scale", None, "--dataset=csv: lo,hi of the rating scale (default: the observed range).")
flags.DEFINE_enum("model", _D.model, list(MODELS), "Recommender model.")
flags.DEFINE_enum("learner", _D.learner, list(LEARNERS), "Learner to meta-train.")
flags.DEFINE_integer("rank", _D.rank, "cf / hybrid models: size of the user and item vectors.")
flags.DEFINE_float("hybrid_alpha", _D.hybrid_alpha, "hybrid model: fixed weight of the CF part in [0, 1] "
                   "(unset: a learned meta-parameter).")
flags.DEFINE_bool("adapt_alpha", _D.adapt_alpha, "hybrid model with a learned alpha: adapt it per task too.")
flags.DEFINE_integer("inner_steps", _D.inner_steps, "Inner (adaptation) gradient steps.")
flags.DEFINE_float("inner_lr", _D.inner_lr, "Inner (adaptation) learning rate.")
flags.DEFINE_float("outer_lr", _D.outer_lr, "Outer Adam learning rate.")
flags.DEFINE_integer("meta_batch_size", _D.meta_batch_size, "Tasks per meta-update.")
flags.DEFINE_integer("task_chunk", _D.task_chunk, "Vmap over chunks of this many tasks inside the step (0: the "
                     "whole meta-batch at once; 4 is faster on CPU, 0 on GPU). Same update either way.")
flags.DEFINE_integer("epochs", _D.epochs, "Maximum meta-training epochs.")
flags.DEFINE_integer("patience", _D.patience, "Early stopping: epochs without a better validation MAE.")
flags.DEFINE_enum("adapt", _D.adapt, list(ADAPT_MODES), "Which parameters adapt: head (MeLU local update), last (output layer) or all.")
flags.DEFINE_bool("first_order", _D.first_order, "First-order MAML (stop_gradient on the inner gradients).")
flags.DEFINE_integer("seed", _D.seed, "Random seed (splits, episodes, initialisation).")
flags.DEFINE_integer("embed_dim", _D.embed_dim, "Embedding size per feature field.")
flags.DEFINE_list("hidden", [str(h) for h in _D.hidden], "MLP hidden widths.")
flags.DEFINE_bool("item_id_feature", _D.item_id_feature, "Add an item-id embedding (unknown id for new items).")
flags.DEFINE_bool("linear", _D.linear, "Add a per-id scalar bias of every field to the MLP output.")
flags.DEFINE_float("id_dropout", _D.id_dropout, "Probability of hiding an item id during meta-training.")
flags.DEFINE_enum("init", _D.init, ["pooled", "scratch"],
                  "Start meta-training from the pooled network (trained first) or from a random init.")
flags.DEFINE_bool("redraw", _D.redraw, "Re-draw each training task's support/query split at every step.")
flags.DEFINE_float("weight_decay", _D.weight_decay, "Decoupled weight decay of the outer optimiser (AdamW).")
flags.DEFINE_integer("query_size", _D.query_size, "Query ratings per task.")
flags.DEFINE_list("ndcg_ks", [str(k) for k in _D.ndcg_ks], "nDCG cut-offs (each at most --query_size).")
flags.DEFINE_integer("min_ratings", _D.min_ratings, "Fewest ratings a test task may have.")
flags.DEFINE_integer("max_ratings", _D.max_ratings, "Most ratings a test task may have.")
flags.DEFINE_integer("max_support", None, "Cap on the support size (k-shot).")
flags.DEFINE_float("val_user_frac", _D.val_user_frac, "Share of existing users held out for validation.")
flags.DEFINE_list("baselines", list(_D.baselines), f"Baselines to run (subset of {', '.join(BASELINES)}).")
flags.DEFINE_string("workdir", "runs/default", "Output folder.")
flags.DEFINE_bool("checkpoints", _D.checkpoints, "Save orbax checkpoints of each fit under <workdir>/checkpoints/<learner>.")
flags.DEFINE_integer("checkpoint_every", _D.checkpoint_every, "Steps between checkpoints (0: after every epoch); "
                     "epochs with a new best validation MAE and the end are always saved.")
flags.DEFINE_integer("keep_checkpoints", _D.keep_checkpoints, "Checkpoints kept: the latest k plus the best on validation.")
flags.DEFINE_bool("resume", False, "Continue from the latest checkpoints in --workdir (same flags required).")
flags.DEFINE_integer("exit_at_step", None, "Testing aid: end the process right after this meta-training step of the "
                     "learner, as a kill would.")
FLAGS = flags.FLAGS


def config_from_flags() -> Config:
  """The Config of the flags; the dataset's defaults (train.DATASET_DEFAULTS) fill the flags
  not given on the command line."""
  return with_dataset_defaults(_config_from_flags(), [n for n in FLAGS if FLAGS[n].present])


def _config_from_flags() -> Config:
  return Config(
      dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, synthetic_users=FLAGS.synthetic_users,
      csv_ratings=FLAGS.csv_ratings, csv_user_features=FLAGS.csv_user_features,
      csv_item_features=FLAGS.csv_item_features, csv_columns=tuple(FLAGS.csv_columns),
      csv_rating_scale=tuple(_floats("csv_rating_scale", FLAGS.csv_rating_scale)) if FLAGS.csv_rating_scale else None,
      synthetic_items=FLAGS.synthetic_items, label=FLAGS.label, label_threshold=FLAGS.label_threshold,
      lastfm_protocol=FLAGS.lastfm_protocol, cooc_dim=FLAGS.cooc_dim, cooc_support_dim=FLAGS.cooc_support_dim,
      model=FLAGS.model, learner=FLAGS.learner, rank=FLAGS.rank,
      hybrid_alpha=FLAGS.hybrid_alpha, adapt_alpha=FLAGS.adapt_alpha, base=FLAGS.base, base_folds=FLAGS.base_folds,
      inner_steps=FLAGS.inner_steps, inner_lr=FLAGS.inner_lr, outer_lr=FLAGS.outer_lr,
      meta_batch_size=FLAGS.meta_batch_size, epochs=FLAGS.epochs, patience=FLAGS.patience, adapt=FLAGS.adapt,
      first_order=FLAGS.first_order, seed=FLAGS.seed, embed_dim=FLAGS.embed_dim,
      hidden=tuple(int(h) for h in FLAGS.hidden), item_id_feature=FLAGS.item_id_feature, linear=FLAGS.linear,
      id_dropout=FLAGS.id_dropout, redraw=FLAGS.redraw, init=FLAGS.init, weight_decay=FLAGS.weight_decay, query_size=FLAGS.query_size, min_ratings=FLAGS.min_ratings,
      max_ratings=FLAGS.max_ratings, max_support=FLAGS.max_support, val_user_frac=FLAGS.val_user_frac,
      baselines=tuple(b for b in FLAGS.baselines if b), devices=FLAGS.devices,
      task_chunk=FLAGS.task_chunk, checkpoints=FLAGS.checkpoints, checkpoint_every=FLAGS.checkpoint_every,
      keep_checkpoints=FLAGS.keep_checkpoints, ndcg_ks=tuple(_ints("ndcg_ks", FLAGS.ndcg_ks)))


def _floats(name: str, values: list[str]) -> list[float]:
  try:
    return [float(v) for v in values]
  except ValueError:
    raise ValueError(f"--{name} must be a comma-separated list of numbers, got {','.join(values)!r}") from None


def _ints(name: str, values: list[str]) -> list[int]:
  try:
    return [int(v) for v in values]
  except ValueError:
    raise ValueError(f"--{name} must be a comma-separated list of integers, got {','.join(values)!r}") from None


def _headline(m: dict) -> str:
  if "mae" in m:
    return f"MAE {m['mae']:.4f} nDCG@3 {m.get('ndcg@3', float('nan')):.4f}"
  return f"AUC {m['auc']:.4f} logloss {m['logloss']:.4f}"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  try:
    runtime_flags.apply()
    final = train_and_evaluate(config_from_flags(), FLAGS.workdir, resume=FLAGS.resume,
                               exit_at_step=FLAGS.exit_at_step)
  except (DataError, ValueError, FloatingPointError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  for name, res in final["results"].items():
    row = "  ".join(f"{s}: {_headline(m)}" for s, m in res.items() if m.get("n_tasks"))
    logging.info("%-13s %s", name, row)
  print(f"wrote {FLAGS.workdir}/final_metrics.json ({final['timing']['total_s']:.1f}s)")


if __name__ == "__main__":
  runtime_flags.run(main)
