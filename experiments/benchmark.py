"""Meta-train step benchmark: compile time, step time, tasks/s, FLOP/s, memory, compiles, and
the same meta-update run the reference code's way (PyTorch, one task at a time) and as our
own per-task jitted loop, all measured in one run (metarec_jax/bench_suites.py).

  python -m experiments.benchmark --suite=targets --out=experiments/results/targets_cpu.json
  python -m experiments.benchmark --suite=scaling --out=experiments/results/scaling_cpu.json
  python -m experiments.benchmark --suite=growth --out=experiments/results/growth_cpu.json

Suites: custom (learners x meta_batch_sizes x inner_steps from the flags), targets (MeLU
shapes, meta-batch 32, with both baselines), scaling (meta-batch 8..1024), gpu, growth
(10k/100k/1M synthetic users). A configuration sweep, so its flags are its own, not Config's.
"""

from __future__ import annotations

import sys

from absl import app, flags

from experiments import runtime_flags
from metarec_jax import bench_suites

flags.DEFINE_enum(
  "suite",
  "custom",
  ["custom", "targets", "scaling", "gpu", "growth", "growth_one", "workload", "workload_one", "workload_trace"],
  "What to run (workload: the default learner on --dataset's real training tasks; workload_trace: a "
  "profiler trace of the default run's steps there, and its XLA ops' time by kind).",
)
flags.DEFINE_string("dataset", "ml-1m", "Dataset of the workload suite.")
flags.DEFINE_integer("length_buckets", 4, "Workload suite: also time the epoch with this many length buckets (0: not).")
flags.DEFINE_integer("workload_batches", 10, "Workload suite: meta-batches the torch loops are timed on.")
flags.DEFINE_integer("workload_cores", 0, "Pin this process to its first N cores before JAX starts (0: all).")
flags.DEFINE_string("trace_dir", "runs/trace", "--suite=workload_trace: where the profiler trace goes.")
flags.DEFINE_integer("trace_steps", 40, "--suite=workload_trace: training steps traced (after as many untimed).")
flags.DEFINE_integer("workload_inner_steps", 0, "Workload suite: inner steps of the learner (0: the run's default, 5).")
flags.DEFINE_list("learners", ["maml"], "Learners (custom suite).")
flags.DEFINE_enum("model", "content", ["content"], "Recommender model.")
flags.DEFINE_string("shapes", "melu", "'melu' (MeLU-shaped random ids) or a dataset name (its train episodes).")
flags.DEFINE_string("data_dir", None, "Dataset folder for --shapes=<dataset> (default: $METAREC_DATA_DIR).")
flags.DEFINE_list("meta_batch_sizes", ["32"], "Meta-batch sizes (custom suite).")
flags.DEFINE_list("inner_steps", ["1"], "Inner steps (custom suite).")
flags.DEFINE_bool("first_order", False, "First-order inner gradients (custom suite; fomaml is always first order).")
flags.DEFINE_enum("adapt", "head", ["head", "last", "all"], "Adapted parameters (custom suite).")
flags.DEFINE_float("inner_lr", 0.1, "Inner learning rate.")
flags.DEFINE_integer("steps", 50, "Timed steps per configuration (after warm-up).")
flags.DEFINE_integer("warmup", 3, "Untimed steps after the first call.")
flags.DEFINE_integer(
  "task_chunk",
  0,
  "Tasks per vmapped chunk inside the step (0: the whole meta-batch); "
  "custom, scaling and gpu suites. The targets suite times 0 and this (default 4).",
)
flags.DEFINE_list("baselines", ["torch", "jax_loop"], "Baselines timed next to each custom configuration.")
flags.DEFINE_integer("baseline_steps", 20, "Timed steps of each baseline.")
flags.DEFINE_integer("grad_check_tasks", 4, "Tasks in the torch-vs-JAX meta-gradient check.")
flags.DEFINE_integer("n_tasks", 2048, "Device-resident tasks to sample meta-batches from (melu shapes).")
flags.DEFINE_float("peak_flops", 0.0, "FP32 peak of the machine in FLOP/s, to report the share achieved (0: skip).")
flags.DEFINE_integer(
  "precompile_threads",
  0,
  "Compile every configuration first in this many threads "
  "(0: compile each on its first call). Needs the persistent cache (--cold_compile does it).",
)
flags.DEFINE_bool("cached_compile", True, "Also time a second compile of each configuration (persistent-cache hit).")
flags.DEFINE_bool("cold_compile", True, "Use a fresh, empty compilation cache so first calls are cold compiles.")
flags.DEFINE_list("growth_users", ["10000", "100000", "1000000"], "Synthetic users (growth suite).")
flags.DEFINE_integer("growth_items", 3000, "Synthetic items (growth suite).")
flags.DEFINE_string("growth_learner", "maml", "Learner of the growth suite's epoch.")
flags.DEFINE_integer("growth_batch", 256, "Meta-batch of the growth suite's epoch.")
flags.DEFINE_integer("growth_inner_steps", 1, "Inner steps of the growth suite's epoch.")
flags.DEFINE_integer("seed", 0, "Seed of the shapes and the parameters.")
flags.DEFINE_string("out", "runs/benchmark.json", "Output JSON path.")
flags.DEFINE_integer("devices", 1, "Devices the task axis of each meta-batch is sharded over (0: all visible).")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  opts = type("Options", (), {n: FLAGS[n].value for n in FLAGS})
  try:
    bench_suites.run(opts, "python -m experiments.benchmark " + " ".join(sys.argv[1:]))
  except (ValueError, AssertionError, RuntimeError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  runtime_flags.run(main)
