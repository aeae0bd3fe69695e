"""Named presets (--preset): Config fields over the defaults. The dataset defaults
(config.DATASET_DEFAULTS) fill what a preset leaves unset, and flags given on the command line
override both."""

from metarec_jax import learners

PRESETS: dict[str, dict] = {
  "default": {},
  # Seconds on a CPU: the end-to-end tests' run.
  "smoke": {
    "dataset": "synthetic",
    "synthetic_users": 100,
    "synthetic_items": 120,
    "epochs": 2,
    "meta_batch_size": 8,
    "hidden": (16,),
    "embed_dim": 8,
    "inner_steps": 1,
    "model": "content",
    "base": "",
    "baselines": ("global_mean", "item_mean", "support_mean", "pooled", "finetune"),
  },
  # MeLU's ML-1M protocol: its features and cold-start state files, 5 inner steps.
  "ml1m-melu": {"dataset": "ml-1m"},
  # The final ML-1M configuration (docs/results.md): MAML stacked on the ALS fold-in, with the
  # items' text vectors and the co-occurrence features; each of the four {text, co-occurrence}
  # combinations was one seed-0 run, and this one had the best validation MAE (the mean over
  # the validation user-cold, item-cold and user+item-cold tasks).
  "ml1m-melu-best": {
    "dataset": "ml-1m",
    "base": "als_foldin",
    "text_encoder": "minilm",
    "cooc_dim": 8,
    "cooc_support_dim": 16,
  },
  # TaNP's Last.fm episodes, with the two ranking baselines next to the learner.
  "lastfm-tanp": {
    "dataset": "lastfm",
    "lastfm_protocol": "episodes",
    "baselines": learners.BASELINES + ("popularity", "cooc_knn"),
  },
}
