"""build_setup(config) -> Setup: dataset -> scenarios -> feature tables -> model -> learners.
The one builder `train_and_evaluate`, `recommend`, the benchmark and the tests use."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

import jax
import numpy as np
from absl import logging

from metarec_jax import runtime
from metarec_jax.config import Config
from metarec_jax.data import load_dataset
from metarec_jax.data.buckets import n_buckets, split_by_length
from metarec_jax.data.episodes import device_data, featurize_episodes
from metarec_jax.data.features import add_cooccurrence, feature_tables
from metarec_jax.data.tasks import build_scenarios
from metarec_jax.evaluate import Evaluator
from metarec_jax.labels import LabelSpec
from metarec_jax.learners import Episode, FitContext, Learner, attach_options, create_learner, get_spec, residual_levels
from metarec_jax.models import create_model
from metarec_jax.progress import Progress

# Validation is scored with these nDCG cut-offs whatever the run's --ndcg_ks.
VAL_KS = (1, 3, 5)


@dataclasses.dataclass
class Setup:
  """What a run builds before training: data, scenarios, features, model and a learner factory."""

  config: Config
  ds: Any
  scen: Any
  fields: tuple
  tables: dict  # host feature tables
  model: Any
  ctx: FitContext
  data: dict  # {"episodes", "tables"} of the meta-training split, on the device
  example: Episode
  evaluator: Evaluator
  selected: dict = dataclasses.field(default_factory=dict)  # name -> its validation pick

  def make(self, name: str, **kw) -> Learner:
    """The learner `name` with the run's options; with `--base`, every trained learner
    predicts the residual of the base fold-in (chosen on validation)."""
    c = self.config
    label = self.scen.label
    levels = residual_levels(label.levels()) if c.base else label.levels()
    opts = {**learner_options(c, label.loss, levels), **kw}
    base = self.select(c.base)["learner"] if c.base and get_spec(name).trained else None
    return create_learner(name, self.model, base=base, base_folds=c.base_folds, **opts)

  def init_params(self, learner: Learner):
    return learner.init(jax.random.key(self.config.seed), self.example, self.ctx)

  def val_score(self, learner_or_fn, params) -> dict[str, float]:
    """Validation metrics. With validation new items (`scen.val_cold`), each metric is the
    unweighted mean over the validation scenarios (user-cold, item-cold, user+item-cold): the
    one rule every choice (epoch, grid point, base) follows; "<scenario>/<metric>" keeps each."""
    ev, scen = self.evaluator, self.scen
    if not scen.val_cold:
      return ev.score(learner_or_fn, params, "val", scen.val, ks=VAL_KS)
    splits = {"user_cold": ("val", scen.val), **{s: (("val", s), e) for s, e in scen.val_cold.items()}}
    parts = {s: ev.score(learner_or_fn, params, key, e, ks=VAL_KS) for s, (key, e) in splits.items() if len(e)}
    common = set.intersection(*(set(p) for p in parts.values())) - {"n_tasks"} if parts else set()
    out = {k: float(np.mean([p[k] for p in parts.values()])) for k in sorted(common)}
    out["n_tasks"] = sum(p["n_tasks"] for p in parts.values())
    out.update({f"{s}/{k}": v for s, p in parts.items() for k, v in p.items()})
    return out

  def select(self, name: str, params_for: Callable[[Learner], Any] | None = None, recorded: dict | None = None) -> dict:
    """The grid point of `name`'s spec that scores best on the validation tasks (the label
    mode's criterion, lower is better; a ranking baseline's `select_metric`, higher is better),
    memoised: a baseline row and a stacked learner's base are the same fit.
    -> {"learner", "params", "options", "metric", "val", "predict_fn"}.

    `params_for(learner)` gives a candidate's parameters (default: its `init`, a closed-form
    fit). `recorded` (a finished run's choice: {"selected", "val"}) fits only that point."""
    if name in self.selected:
      return self.selected[name]
    spec = get_spec(name)
    params_for = params_for or self.init_params
    metric = spec.select_metric or self.scen.label.select_metric
    sign = -1.0 if spec.select_metric else 1.0
    grid = (dict(recorded["selected"]),) if recorded is not None else spec.grid
    best, fn = None, None
    with Progress(f"{name}: validation grid", len(grid), "point") as bar:
      for options in grid:
        cand = self.make(name, **options)
        cand_params = attach_options(name, params_for(cand), options)
        if fn is None or not spec.grid_traced:  # one predict function for a traced grid
          fn = self.evaluator.predict_fn(cand)
        val = recorded.get("val") if recorded is not None else self.val_score(fn, cand_params)[metric]
        if best is None or sign * val < sign * best["val"]:
          best = {
            "learner": cand,
            "params": cand_params,
            "options": options,
            "metric": metric,
            "val": val,
            "predict_fn": fn,
          }
        bar.update(1, note=f"best val {metric} {best['val']:.4f}")
        runtime.release_free_memory()  # a point's compiles and scoring leave freed heap pages
    self.selected[name] = best
    return best


def model_of(config: Config, fields: tuple, output_bias: float):
  """The run's model (--model and its size options) over `fields`."""
  return create_model(
    config.model,
    fields=fields,
    embed_dim=config.embed_dim,
    hidden=config.hidden,
    output_bias=output_bias,
    linear=config.linear,
    rank=config.rank,
    alpha=config.hybrid_alpha,
    adapt_alpha=config.adapt_alpha,
  )


def learner_options(config: Config, loss: str, levels: tuple) -> dict:
  """The run's learner options (`create_learner` keywords) for a loss and label levels."""
  return dict(
    inner_lr=config.inner_lr,
    inner_steps=config.inner_steps,
    adapt=config.adapt,
    first_order=config.first_order,
    loss=loss,
    levels=levels,
    seed=config.seed,
  )


def label_spec(config: Config, ds) -> LabelSpec:
  """The run's label mode: --label, or binary for implicit-feedback (0/1) datasets."""
  if ds.implicit:
    if config.label not in (None, "binary"):
      raise ValueError(
        f"--label={config.label} does not apply to {ds.name}: it is implicit 0/1 feedback, "
        "so its labels are binary (use --label=binary or leave --label unset)"
      )
    return LabelSpec("binary", scale=(0.0, 1.0), threshold=1.0)
  return LabelSpec(config.label or "rating", scale=tuple(ds.rating_scale), threshold=config.label_threshold)


def dataset_options(config: Config) -> dict:
  """The Config fields `load_dataset` takes (same names), so a new loader option is one Config
  field and one keyword of the loader."""
  names = [p for p in inspect.signature(load_dataset).parameters if p != "name"]
  return {n: getattr(config, n) for n in names}


def build_setup(config: Config) -> Setup:
  """Loads the dataset and builds everything a run (or `recommend`) needs; deterministic in the seed."""
  with Progress(f"{config.dataset}: load", None):
    ds = load_dataset(config.dataset, **dataset_options(config))
  label = label_spec(config, ds)
  if config.base and label.binary:
    raise ValueError(
      f"--base={config.base} needs squared-error labels (--label=rating or scaled); {ds.name} has "
      "binary labels here, and a residual of a 0/1 label is not a label"
    )
  fixed = ds.fixed_episodes and {
    k: [(u, si, label.encode(sy), qi, label.encode(qy)) for u, si, sy, qi, qy in v]
    for k, v in ds.fixed_episodes.items()
  }
  ds = dataclasses.replace(ds, ratings=label.encode(ds.ratings), fixed_episodes=fixed)
  scen = dataclasses.replace(build_scenarios(ds, config.task_config(), config.seed), label=label)
  if len(scen.train) == 0:
    raise ValueError(
      f"{config.dataset}: no meta-training tasks survive the {config.min_ratings}-{config.max_ratings} ratings filter"
    )
  known = np.zeros(ds.n_items, bool)
  known[scen.train_ratings[1]] = True
  fields, tables = feature_tables(ds, known_items=known, item_id=config.item_id_feature)
  if config.text_encoder != "none":
    from metarec_jax.text_encoder import add_text_fields

    with Progress(f"{config.dataset}: item texts ({config.text_encoder})", None):
      fields, tables = add_text_fields(ds, fields, tables)
  if config.cooc_dim or config.cooc_support_dim:  # from the training pairs only (cross-fitted)
    positive = 0.5 if label.binary else float(label.encode(np.array([config.label_threshold]))[0])
    fields, tables = add_cooccurrence(
      fields,
      tables,
      *scen.train_ratings,
      positive=positive,
      n_users=ds.n_users,
      n_items=ds.n_items,
      dim=config.cooc_dim,
      support_dim=config.cooc_support_dim,
    )
  model = model_of(config, fields, 0.0 if config.base else label.output_bias(float(scen.train_ratings[2].mean())))
  ctx = FitContext.of(model, fields, ds.n_items, scen.train_ratings, tables=tables, binary_labels=label.binary)
  data = device_data(scen.train, tables)
  sizes = None
  n_bucket = n_buckets(config.length_buckets, len(scen.train))
  if n_bucket > 1:  # the training tasks by support length (data/buckets.py)
    buckets = split_by_length(scen.train, n_bucket)
    data["buckets"] = [jax.device_put(e.arrays()) for e in buckets.episodes]  # placed: no compile per array
    sizes = buckets.sizes
    logging.info("length buckets: support sizes %s, tasks %s", sizes, [len(m) for m in buckets.members])
  # One compiled call: run op by op, featurising compiles each op apart (seconds on ML-1M).
  example = jax.jit(featurize_episodes)(data["tables"], {k: v[:1] for k, v in scen.train.arrays().items()})
  evaluator = Evaluator(
    data["tables"],
    chunk=runtime.eval_chunk(config.eval_chunk),
    ks=config.ndcg_ks,
    label=label,
    buckets=n_bucket,
    bucket_sizes=sizes,
    # evaluation on both CPU devices (the same predictions): between the steps, the second is idle
    helper=runtime.helper_device() if config.devices == 1 else None,
  )
  return Setup(
    config=config,
    ds=ds,
    scen=scen,
    fields=fields,
    tables=tables,
    model=model,
    ctx=ctx,
    data=data,
    example=example,
    evaluator=evaluator,
  )
