"""Where a MAML meta-train step's time goes (MeLU shapes): matmul ceilings of this machine
and the step's parts timed one by one (metarec_jax.bench.profile_step).

  python -m experiments.profile_step --out=experiments/results/profile_cpu.json
"""

from __future__ import annotations

import sys

from absl import flags

from experiments import cli

flags.DEFINE_integer("meta_batch_size", 32, "Tasks per step.")
flags.DEFINE_integer("inner_steps", 1, "Inner steps.")
flags.DEFINE_integer("task_chunk", 4, "Chunk size of the chunked variant.")
flags.DEFINE_integer("reps", 30, "Timed repetitions per part (median reported).")
flags.DEFINE_string("out", "runs/profile.json", "Output JSON path.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from metarec_jax.bench import profile_step
  from metarec_jax.writers import write_json_atomic

  out = profile_step(
    meta_batch_size=FLAGS.meta_batch_size,
    inner_steps=FLAGS.inner_steps,
    task_chunk=FLAGS.task_chunk,
    reps=FLAGS.reps,
    command="python -m experiments.profile_step " + " ".join(sys.argv[1:]),
  )
  write_json_atomic(FLAGS.out, out)
  print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
  cli.run(main)
