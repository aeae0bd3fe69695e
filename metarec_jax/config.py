"""The one frozen Config of a run: its fields (with the help and choices the binaries' flags
are generated from), validation, dataset defaults and presets (the resume check that compares two runs' configs is
`checkpoint.check_resumable`)."""

from __future__ import annotations

import dataclasses
import typing

from metarec_jax import learners
from metarec_jax.data.io import resolve_delimiter
from metarec_jax.data.lastfm import LASTFM_PROTOCOLS
from metarec_jax.data.registry import DATASETS
from metarec_jax.data.tasks import SCENARIOS, TaskConfig
from metarec_jax.labels import LABELS
from metarec_jax.learners.maml import ADAPT_MODES
from metarec_jax.models import MODELS
from metarec_jax.text_encoder import TEXT_ENCODERS
from metarec_jax.presets import PRESETS


# --init: meta-train from the pooled network (the learner's spec says how), or from its own init.
INIT_FROM_POOLED, INIT_FROM_SCRATCH = "pooled", "scratch"
PROTOCOLS = ("rating", "ranking")


def opt(default, help: str, choices=None):  # noqa: A002 (absl's name)
  """A Config field with the help (and choices) of its generated flag."""
  meta = {"help": help, "choices": tuple(choices) if choices is not None else None}
  return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class Config:
  """Every option of a run. experiments/config_flags.py turns each field into a flag."""

  protocol: str = opt(
    "rating",
    "rating: MeLU's protocol (tasks of rated items, the four cold-start scenarios); ranking: strong "
    "generalization (binarized, 80 % of a new user's positives folded in, the whole catalogue ranked).",
    PROTOCOLS,
  )
  dataset: str = opt("synthetic", "Dataset.", DATASETS)
  data_dir: str | None = opt(
    None, "Folder holding the dataset folders (default: $METAREC_DATA_DIR; when that is unset too, ./data)."
  )
  synthetic_users: int = opt(600, "Users of the synthetic generator.")
  synthetic_items: int = opt(800, "Items of the synthetic generator.")
  synthetic_min_ratings: int = opt(15, "Fewest ratings of a synthetic user.")
  synthetic_max_ratings: int = opt(110, "Most ratings of a synthetic user.")
  csv_ratings: str | None = opt(None, "--dataset=csv: ratings CSV with the header user,item,rating[,timestamp].")
  csv_user_features: str | None = opt(None, "--dataset=csv: optional user feature CSV (header user,<columns>).")
  csv_item_features: str | None = opt(None, "--dataset=csv: optional item feature CSV (header item,<columns>).")
  csv_columns: tuple[str, ...] = opt(
    (),
    "--dataset=csv: the feature columns' types as name:categorical, "
    "name:multihot:SEP, name:numeric, name:title (the item's display name) or name:text (--text_encoder).",
  )
  csv_delimiter: str = opt(
    ",", "--dataset=csv: the cell delimiter of the CSV files (tab, semicolon, comma, pipe or one character)."
  )
  csv_rating_scale: tuple[float, ...] | None = opt(
    None, "--dataset=csv: lo,hi of the rating scale (default: the observed range)."
  )
  lastfm_protocol: str = opt(
    "episodes",
    "--dataset=lastfm: TaNP's exact episodes, or a fresh split by its recipe "
    "(70/10/20 users with 30-200 interactions, support 20, query the rest).",
    LASTFM_PROTOCOLS,
  )
  cooc_dim: int = opt(
    0,
    "Width of the item co-occurrence embedding feature (truncated SVD of the training users' "
    "positives, cross-fitted; 0: none).",
  )
  cooc_support_dim: int = opt(
    0,
    "Width of the co-occurrence fit behind the per-episode similarity to the support's "
    "positives and negatives (0: none).",
  )
  label: str | None = opt(
    None,
    "Label mode: rating (raw, MSE), scaled ([0, 1], MSE, metrics in the rating scale) or "
    "binary (rating >= --label_threshold, BCE). Unset: binary for implicit-feedback datasets "
    "(lastfm, hetrec-lastfm), rating otherwise.",
    LABELS,
  )
  label_threshold: float = opt(4.0, "--label=binary: a rating at least this is positive.")
  model: str = opt("content", "Recommender model.", MODELS)
  rank: int = opt(32, "cf / hybrid models: size of the user and item vectors.")
  hybrid_alpha: float | None = opt(None, "hybrid model: fixed weight of the CF part in [0, 1] (unset: learned).")
  adapt_alpha: bool = opt(False, "hybrid model with a learned alpha: adapt it per task too.")
  base: str = opt(
    "",
    "Stack every meta-trained learner on this fold-in baseline: it predicts the baseline's "
    f"residual (options chosen on validation; one of {', '.join(learners.FOLDIN)}; empty: none).",
  )
  base_folds: int = opt(5, "--base: folds of training users the base is cross-fitted over.")
  learner: str = opt("maml", f"Learner to meta-train: {', '.join(learners.LEARNERS)} (or one registered later).")
  inner_steps: int = opt(5, "Inner (adaptation) gradient steps.")
  inner_lr: float = opt(0.1, "Inner (adaptation) learning rate.")
  outer_lr: float = opt(1e-3, "Outer Adam learning rate.")
  meta_batch_size: int = opt(32, "Tasks per meta-update.")
  epochs: int = opt(40, "Maximum meta-training epochs.")
  patience: int = opt(10, "Early stopping: epochs without a better validation criterion.")
  adapt: str = opt("head", "Which parameters adapt: head (MeLU local update), last (output layer) or all.", ADAPT_MODES)
  first_order: bool = opt(False, "First-order MAML (stop_gradient on the inner gradients).")
  seed: int = opt(0, "Random seed (splits, episodes, initialisation).")
  embed_dim: int = opt(32, "Embedding size per feature field.")
  hidden: tuple[int, ...] = opt((64, 64), "MLP hidden widths.")
  item_id_feature: bool = opt(True, "Add an item-id embedding (unknown id for new items).")
  linear: bool = opt(True, "Add a per-id scalar bias of every field to the MLP output.")
  id_dropout: float = opt(0.1, "Probability of hiding an item id during meta-training.")
  init: str = opt(
    INIT_FROM_POOLED,
    "Start meta-training from the pooled network (trained first) or from a random init.",
    (INIT_FROM_POOLED, INIT_FROM_SCRATCH),
  )
  redraw: bool = opt(True, "Re-draw each training task's support/query split at every step.")
  weight_decay: float = opt(0.0, "Decoupled weight decay of the outer optimiser (AdamW).")
  query_size: int = opt(10, "Query ratings per task.")
  min_ratings: int = opt(13, "Fewest ratings a test task may have.")
  max_ratings: int = opt(100, "Most ratings a test task may have.")
  max_support: int | None = opt(None, "Cap on the support size (k-shot).")
  support_cap: int | None = opt(
    None, "--protocol=ranking: fold in only each test user's k earliest positives (the few-shot variant)."
  )
  ranking_min_item_users: int = opt(
    1, "--protocol=ranking: drop items with fewer positive users (over all users, before the split)."
  )
  ranking_loss: str = opt(
    "bce",
    "--protocol=ranking, episode learners: bce or softmax (multinomial over a side's items), on sampled negatives.",
    ("softmax", "bce"),
  )
  val_user_frac: float = opt(0.15, "Share of existing users held out for validation.")
  val_item_frac: float = opt(0.1, "Share of existing items (the newest) held out as validation new items.")
  text_encoder: str = opt(
    "none", "Items' text as a pretrained sentence vector (minilm: all-MiniLM-L6-v2).", TEXT_ENCODERS
  )
  baselines: tuple[str, ...] = opt(
    learners.BASELINES, f"Baselines to run on the same splits, any of: {', '.join(learners.ALL_BASELINES)}."
  )
  eval_chunk: int = opt(
    -1,
    "Tasks per evaluation call (one compile serves every chunk; -1: the device's fastest, 16 on CPU "
    "and 128 on accelerators).",
  )
  ndcg_ks: tuple[int, ...] = opt((1, 3, 5), "nDCG cut-offs (and P/R@k for binary labels; each at most --query_size).")
  few_shot_ks: tuple[int, ...] = opt((), "Support sizes of the few-shot curve (support capped at each k).")
  few_shot_scenarios: tuple[str, ...] = opt(
    ("user_cold",), f"Scenarios of the few-shot curve, any of: {', '.join(SCENARIOS)}."
  )
  devices: int = opt(1, "Devices the task axis of each meta-batch is sharded over (0: all visible).")
  overlap_baselines: bool = opt(True, "Run the baselines on a second CPU device while the learner trains.")
  task_chunk: int = opt(
    -1,
    "Vmap over chunks of this many tasks inside the step (0: the whole meta-batch at once; "
    "-1: the device's fastest, 4 on CPU and 0 on accelerators). Same update either way.",
  )
  step_parts: int = opt(
    -1,
    "Compute each step's meta-gradient in this many calls over shares of its task chunks, the "
    "shares after the first on the process's second CPU device (beside the baselines). -1: 2 for a "
    "learner with an inner loop, stepping in task chunks on one CPU device, when a second exists; "
    "else 1. Where a share runs does not change the result; against one call, the order in which "
    "the chunks' gradients are added does.",
  )
  length_buckets: int = opt(
    -1,
    "Sort the training tasks into at most this many support lengths, each padded to its own (0, 1: "
    "one; -1: 4 with at least 2,000 training tasks, else one).",
  )
  checkpoints: bool = opt(True, "Save orbax checkpoints of each fit under <workdir>/checkpoints/<learner>.")
  checkpoint_every: int = opt(
    0,
    "Steps between checkpoints (0: after every epoch); epochs with a new best "
    "validation criterion and the end are always saved.",
  )
  keep_checkpoints: int = opt(3, "Checkpoints kept: the latest k plus the best on validation.")

  @classmethod
  def from_dict(cls, d: dict, source: str = "config") -> "Config":
    """The inverse of dataclasses.asdict after a JSON round trip (lists back to tuples)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
      raise ValueError(f"{source}: unknown field(s) {', '.join(unknown)}; expected fields of Config")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

  def task_config(self) -> TaskConfig:
    return TaskConfig(
      query_size=self.query_size,
      min_ratings=self.min_ratings,
      max_ratings=self.max_ratings,
      max_support=self.max_support,
      val_user_frac=self.val_user_frac,
      val_item_frac=self.val_item_frac,
    )

  def validate(self) -> None:
    checks = [
      (self.inner_steps >= 0, f"inner_steps must be >= 0, got {self.inner_steps}"),
      (self.cooc_dim >= 0, f"cooc_dim must be >= 0 (0: no co-occurrence field), got {self.cooc_dim}"),
      (
        self.cooc_support_dim >= 0,
        f"cooc_support_dim must be >= 0 (0: no support similarity), got {self.cooc_support_dim}",
      ),
      (self.inner_lr >= 0, f"inner_lr must be >= 0, got {self.inner_lr}"),
      (self.outer_lr > 0, f"outer_lr must be > 0, got {self.outer_lr}"),
      (self.meta_batch_size > 0, f"meta_batch_size must be > 0, got {self.meta_batch_size}"),
      (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
      (0 <= self.id_dropout < 1, f"id_dropout must be in [0, 1), got {self.id_dropout}"),
      (
        self.eval_chunk > 0 or self.eval_chunk == -1,
        f"eval_chunk must be > 0 (or -1: the device's default), got {self.eval_chunk}",
      ),
      (self.devices >= 0, f"devices must be >= 0 (0: all), got {self.devices}"),
      (self.task_chunk >= -1, f"task_chunk must be >= 0 (or -1: the device's default), got {self.task_chunk}"),
      (
        self.step_parts >= 1 or self.step_parts == -1,
        f"step_parts must be >= 1 (or -1: by the devices), got {self.step_parts}",
      ),
      (
        self.length_buckets >= -1,
        f"length_buckets must be >= 0 (or -1: by the data's size), got {self.length_buckets}",
      ),
      (
        self.base in ("",) + learners.FOLDIN,
        f"base must be one of {', '.join(learners.FOLDIN)} (or empty: none), got {self.base!r}",
      ),
      (self.base_folds >= 2, f"base_folds must be >= 2, got {self.base_folds}"),
      (
        self.text_encoder == "none" or self.protocol == "rating",
        "--text_encoder applies to --protocol=rating (the ranking protocol reads no item text yet)",
      ),
      (self.patience >= 1, f"patience must be >= 1, got {self.patience}"),
      (self.rank >= 1, f"rank must be >= 1, got {self.rank}"),
      (
        1 <= self.synthetic_min_ratings <= self.synthetic_max_ratings,
        f"synthetic ratings per user must satisfy 1 <= synthetic_min_ratings <= synthetic_max_ratings, got "
        f"{self.synthetic_min_ratings} and {self.synthetic_max_ratings}",
      ),
      (
        self.csv_rating_scale is None
        or (len(self.csv_rating_scale) == 2 and self.csv_rating_scale[0] < self.csv_rating_scale[1]),
        f"csv_rating_scale must be two numbers lo,hi with lo < hi, got {self.csv_rating_scale}",
      ),
      (
        self.hybrid_alpha is None or 0.0 <= self.hybrid_alpha <= 1.0,
        f"hybrid_alpha must be in [0, 1] (unset: learned), got {self.hybrid_alpha}",
      ),
      (self.checkpoint_every >= 0, f"checkpoint_every must be >= 0 (0: every epoch), got {self.checkpoint_every}"),
      (self.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}"),
      (
        all(k <= self.query_size for k in self.ndcg_ks),
        f"nDCG cut-offs {self.ndcg_ks} must not exceed the query size {self.query_size}",
      ),
      (
        self.task_chunk <= 0 or self.meta_batch_size % self.task_chunk == 0,
        f"meta_batch_size={self.meta_batch_size} does not divide into task chunks of {self.task_chunk}",
      ),
    ]
    for ok, msg in checks:
      if not ok:
        raise ValueError(msg)
    resolve_delimiter(self.csv_delimiter)
    for f in dataclasses.fields(self):  # the fields with a fixed set of values
      value, choices = getattr(self, f.name), f.metadata.get("choices")
      if choices and value is not None and value not in choices:
        raise ValueError(f"{f.name} must be one of {', '.join(choices)}, got {value!r}")
    if self.protocol == "ranking":
      self._validate_ranking()
      return
    learners.get_spec(self.learner)
    for s in self.few_shot_scenarios:
      if s not in SCENARIOS:
        raise ValueError(f"Unsupported few-shot scenario: {s!r}; choose from {', '.join(SCENARIOS)}")
    for k in self.few_shot_ks:
      if k < 1:
        raise ValueError(f"few-shot support sizes must be >= 1, got {k}")
    for b in self.baselines:
      if b not in learners.ALL_BASELINES:
        raise ValueError(f"Unsupported baseline: {b!r}; choose from {', '.join(learners.ALL_BASELINES)}")
    self.task_config()

  def _validate_ranking(self) -> None:
    from metarec_jax.ranking import ranker_names

    known = ranker_names()
    for name in (self.learner,) + tuple(self.baselines):
      if name not in known:
        raise ValueError(f"--protocol=ranking: {name!r} has no ranking model; choose from {', '.join(known)}")
    for what, v in (("support_cap", self.support_cap), ("ranking_min_item_users", self.ranking_min_item_users)):
      if v is not None and v < 1:
        raise ValueError(f"{what} must be >= 1, got {v}")


# The concern each field's flag is listed under in --helpfull (tests: every field in one group).
FIELD_GROUPS = {
  "data": (
    "protocol",
    "dataset",
    "data_dir",
    "synthetic_users",
    "synthetic_items",
    "synthetic_min_ratings",
    "synthetic_max_ratings",
    "csv_ratings",
    "csv_user_features",
    "csv_item_features",
    "csv_columns",
    "csv_delimiter",
    "csv_rating_scale",
    "lastfm_protocol",
    "cooc_dim",
    "cooc_support_dim",
    "label",
    "label_threshold",
    "query_size",
    "min_ratings",
    "max_ratings",
    "max_support",
    "val_user_frac",
    "val_item_frac",
    "text_encoder",
    "support_cap",
    "ranking_min_item_users",
    "ranking_loss",
  ),
  "model": ("model", "rank", "hybrid_alpha", "adapt_alpha", "embed_dim", "hidden", "item_id_feature", "linear"),
  "learner": ("learner", "base", "base_folds", "inner_steps", "inner_lr", "adapt", "first_order", "init", "baselines"),
  "training": ("outer_lr", "meta_batch_size", "epochs", "patience", "id_dropout", "redraw", "weight_decay", "seed"),
  "evaluation": ("eval_chunk", "ndcg_ks", "few_shot_ks", "few_shot_scenarios"),
  "checkpoints": ("checkpoints", "checkpoint_every", "keep_checkpoints"),
  "runtime": ("devices", "overlap_baselines", "task_chunk", "step_parts", "length_buckets"),
}
FIELD_GROUP = {name: group for group, names in FIELD_GROUPS.items() for name in names}


def field_types() -> dict[str, typing.Any]:
  """Config field name -> its resolved type annotation."""
  return typing.get_type_hints(Config)


# Defaults that differ by dataset; a field set by a preset or on the command line wins.
# ml-1m: an epoch is 7,551 tasks (8.5x ml-100k's), so early stopping counts fewer epochs and the
# default run fits in 10 minutes on a 2-core CPU. lastfm: TaNP's cut-offs 5/7/10; no item-id
# embedding (chosen on TaNP's validation episodes: 248 training users are too few to train one);
# lastfm and hetrec-lastfm: the co-occurrence features, widths chosen on TaNP's validation episodes.
DATASET_DEFAULTS = {
  # Chosen on seed-0 validation (docs/results.md): the cf model stacked on the ALS fold-in; 0.2:
  # at 0.1 the generator's users rate too few of the validation items for item-cold tasks.
  "synthetic": {"val_item_frac": 0.2, "model": "cf", "base": "als_foldin"},
  "ml-1m": {"epochs": 15, "patience": 3},
  "lastfm": {"ndcg_ks": (5, 7, 10), "item_id_feature": False, "cooc_dim": 8, "cooc_support_dim": 16},
  "hetrec-lastfm": {"ndcg_ks": (5, 7, 10), "cooc_dim": 8, "cooc_support_dim": 16, "ranking_min_item_users": 5},
}

# Defaults of the ranking protocol, over the dataset defaults (a field set by a preset or on the
# command line wins): its learner and baselines, and the epochs of the trained rankers.
RANKING_BASELINES = ("popularity", "item_knn", "ease", "wmf", "mult_vae", "linear_ae")
PROTOCOL_DEFAULTS = {
  # inner_lr 1.0: the episode learners' inner step under the ranking loss (chosen on ml-100k's
  # seed-0 validation users, BUILD_NOTES.md); maml_rank takes its own from its grid.
  "ranking": {
    "learner": "maml_rank",
    "baselines": RANKING_BASELINES,
    "epochs": 100,
    "inner_lr": 1.0,
    **{"model": "content", "base": ""},  # over the synthetic data's rating-protocol defaults
  },
}


def with_dataset_defaults(config: Config, explicit=()) -> Config:
  """`config` with its dataset's DATASET_DEFAULTS, except for the fields in `explicit`."""
  over = {k: v for k, v in DATASET_DEFAULTS.get(config.dataset, {}).items() if k not in set(explicit)}
  over.update({k: v for k, v in PROTOCOL_DEFAULTS.get(config.protocol, {}).items() if k not in set(explicit)})
  return dataclasses.replace(config, **over)


def resolve(preset: str = "default", overrides: dict | None = None) -> Config:
  """The Config of `preset` with `overrides` (e.g. the flags given on the command line) on top;
  the dataset's defaults fill the fields that neither sets."""
  if preset not in PRESETS:
    raise ValueError(f"Unsupported preset: {preset!r}; choose one of {', '.join(PRESETS)}")
  fields = {**PRESETS[preset], **(overrides or {})}
  return with_dataset_defaults(Config(**fields), explicit=fields)
