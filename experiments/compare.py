"""Learners × scenarios × seeds on one dataset, with baselines, a few-shot curve and timings.

  python -m experiments.compare --dataset=ml-100k --data_dir=../shared/data --out=runs/compare_ml100k
  python -m experiments.compare --learners=maml,neural_process --seeds=0,1 --epochs=5 --out=runs/quick

For each seed, the baselines run once (with the first learner) and every other learner runs
without them, all on the same splits. Writes <out>/results.json (every run's final metrics),
<out>/table.md (mean ± std of MAE, RMSE, nDCG@3 and nDCG@5 per learner and scenario, the
user-cold few-shot curve, wall time and meta-train tasks/s per learner), one run folder per
(learner, seed) with config.json, metrics.jsonl and final_metrics.json, and (--report, on by
default) <out>/report.md with the tables, the commands and the figures in <out>/figures.
"""

from __future__ import annotations

import os
import sys
import time

from absl import flags, logging

from experiments import runtime_flags, shared_flags  # noqa: F401 (defines --label, --lastfm_protocol, --base, ...)

from metarec_jax import report
from metarec_jax.report import build_table
from metarec_jax.data import DATASETS, DataError
from metarec_jax.data.tasks import SCENARIOS
from metarec_jax.learners import LEARNERS
from metarec_jax.models import MODELS
from metarec_jax.train import BASELINES, Config, train_and_evaluate, with_dataset_defaults
from metarec_jax.writers import write_json_atomic, write_text_atomic

DEFAULT_LEARNERS = ("maml", "fomaml", "metasgd", "anil", "reptile", "neural_process", "in_context",
                    "prototype", "matching")

_D = Config()
flags.DEFINE_enum("dataset", "synthetic", list(DATASETS), "Dataset.")
flags.DEFINE_string("data_dir", None, "Folder holding the dataset folders (default: $METAREC_DATA_DIR).")
flags.DEFINE_enum("model", _D.model, list(MODELS), "Recommender model (content, cf or hybrid).")
flags.DEFINE_bool("item_id_feature", _D.item_id_feature, "Add an item-id embedding (unknown id for new items).")
flags.DEFINE_list("ndcg_ks", [str(k) for k in _D.ndcg_ks], "Cut-offs of nDCG (and P/R@k for binary labels).")
flags.DEFINE_integer("rank", _D.rank, "cf / hybrid: size of the user and item vectors.")
flags.DEFINE_float("hybrid_alpha", _D.hybrid_alpha, "hybrid: fixed weight of the CF part (unset: learned).")
flags.DEFINE_list("learners", list(DEFAULT_LEARNERS), f"Meta-learners to compare (from {', '.join(LEARNERS)}).")
flags.DEFINE_list("baselines", list(BASELINES), "Baselines, run once per seed.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
flags.DEFINE_integer("epochs", _D.epochs, "Maximum meta-training epochs per learner.")
flags.DEFINE_integer("patience", _D.patience, "Early-stopping patience (epochs) on validation MAE.")
flags.DEFINE_list("few_shot_ks", ["1", "3", "5", "10", "20"], "Support sizes of the few-shot curve.")
flags.DEFINE_list("few_shot_scenarios", ["user_cold"], f"Scenarios of the few-shot curve (from {', '.join(SCENARIOS)}).")
flags.DEFINE_bool("report", True, "Also write <out>/report.md with the tables, figures (<out>/figures) and commands.")
flags.DEFINE_integer("synthetic_users", _D.synthetic_users, "Users of the synthetic generator.")
flags.DEFINE_integer("synthetic_items", _D.synthetic_items, "Items of the synthetic generator.")
flags.DEFINE_integer("task_chunk", 0, "Vmap over chunks of this many tasks inside the step (0: whole meta-batch).")
flags.DEFINE_string("out", "runs/compare", "Output folder.")
FLAGS = flags.FLAGS

def main(argv):
  del argv
  try:
    runtime_flags.apply()
    seeds = [int(s) for s in FLAGS.seeds]
    ks = [int(k) for k in FLAGS.few_shot_ks]
    for n in FLAGS.learners:
      if n not in LEARNERS:
        raise ValueError(f"Unsupported learner: {n!r}; choose from {', '.join(LEARNERS)}")
    t_start = time.perf_counter()
    runs = []
    for seed in seeds:
      for j, name in enumerate(FLAGS.learners):
        config = Config(dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, learner=name, seed=seed, model=FLAGS.model,
                        rank=FLAGS.rank, hybrid_alpha=FLAGS.hybrid_alpha, label=FLAGS.label, base=FLAGS.base,
                        base_folds=FLAGS.base_folds,
                        label_threshold=FLAGS.label_threshold, lastfm_protocol=FLAGS.lastfm_protocol,
                        cooc_dim=FLAGS.cooc_dim, cooc_support_dim=FLAGS.cooc_support_dim,
                        ndcg_ks=tuple(int(k) for k in FLAGS.ndcg_ks), item_id_feature=FLAGS.item_id_feature,
                        epochs=FLAGS.epochs, patience=FLAGS.patience,
                        baselines=tuple(FLAGS.baselines) if j == 0 else (),
                        few_shot_ks=tuple(ks), few_shot_scenarios=tuple(FLAGS.few_shot_scenarios),
                        synthetic_users=FLAGS.synthetic_users,
                        synthetic_items=FLAGS.synthetic_items, devices=FLAGS.devices,
                        task_chunk=FLAGS.task_chunk)
        t0 = time.perf_counter()
        config = with_dataset_defaults(config, [n for n in FLAGS if FLAGS[n].present])
        final = train_and_evaluate(config, os.path.join(FLAGS.out, f"{name}_seed{seed}"))
        runs.append({"learner": name, "seed": seed, "final": final, "wall_s": time.perf_counter() - t0})
        cold = final["results"][name]["user_cold"]
        logging.info("%s seed %d: user-cold %s (%.0fs)", name, seed,
                     f"MAE {cold['mae']:.4f}" if "mae" in cold else f"AUC {cold.get('auc', float('nan')):.4f}",
                     runs[-1]["wall_s"])
    md, summary = build_table(runs, FLAGS.learners, ks)
    total = time.perf_counter() - t_start
    cmd = "python -m experiments.compare " + " ".join(sys.argv[1:])
    stacked = (f"Every meta-trained learner, and the pooled and fine-tuned baselines, predicts the residual of "
               f"`{FLAGS.base}` (cross-fitted over {FLAGS.base_folds} folds of the training users).\n\n"
               if FLAGS.base else "")
    header = (f"# {FLAGS.dataset}: learners × scenarios × seeds {seeds}\n\nCommand: `{cmd}`\n\n"
              f"{stacked}Total wall time: {total:.0f} s\n\n")
    os.makedirs(FLAGS.out, exist_ok=True)
    write_json_atomic(os.path.join(FLAGS.out, "results.json"),
                      {"command": cmd, "total_s": total, "summary": summary, "runs": runs})
    write_text_atomic(os.path.join(FLAGS.out, "table.md"), header + md)
    if FLAGS.report:
      report.write_report(FLAGS.out, md, cmd, total)
    print(header + md)
  except (DataError, ValueError, FloatingPointError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  runtime_flags.run(main)
