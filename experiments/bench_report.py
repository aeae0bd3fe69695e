"""Markdown tables from benchmark JSON files (the tables in docs/results.md are made by this).

python -m experiments.bench_report --inputs=experiments/results/targets_cpu.json,experiments/results/scaling_cpu.json
"""

from __future__ import annotations

import json
import sys

from absl import flags

from experiments import cli
from metarec_jax.bench_report import config_table, growth_table, scaling_table

flags.DEFINE_list("inputs", [], "Benchmark JSON files.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  for path in FLAGS.inputs:
    try:
      with open(path) as f:
        res = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      print(f"error: {path}: {e}", file=sys.stderr)
      sys.exit(2)
    print(f"## {path}\n")
    if "growth" in res:
      print(growth_table(res))
    elif res.get("suite") in ("scaling", "gpu"):
      print(config_table(res) + "\n\nTasks/s:\n\n" + scaling_table(res))
    else:
      print(config_table(res))
    print()


if __name__ == "__main__":
  cli.run(main)
