"""Learners × seeds on one Config: each run through `train_and_evaluate`, then the tables."""

from __future__ import annotations

import dataclasses
import json
import os
import time

from absl import logging

from metarec_jax import report
from metarec_jax.config import Config
from metarec_jax.progress import Progress, eta
from metarec_jax.protocol import TIMING, train_and_evaluate
from metarec_jax.writers import write_json_atomic, write_text_atomic


def _headline(m: dict) -> str:
  if "mae" in m:
    return f"MAE {m['mae']:.4f}"
  if "recall@20" in m:
    return f"Recall@20 {m['recall@20']:.4f}"
  return f"AUC {m.get('auc', float('nan')):.4f}"


def _pin_worker(cores, cache_dir: str) -> None:
  """A --jobs worker: one core of its own (before JAX starts its backend, whose thread pool is
  sized from the affinity mask) and the parent's compilation cache."""
  core = cores.get()
  if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {core})
  from metarec_jax import runtime

  runtime.configure(compilation_cache_dir=cache_dir)


def _one_run(config: Config, workdir: str) -> tuple[dict, float]:
  t0 = time.perf_counter()
  final = train_and_evaluate(config, workdir)
  return final, time.perf_counter() - t0


def _executor(jobs: int):
  """`jobs` spawned worker processes, each pinned to one core of this process's affinity."""
  import multiprocessing
  from concurrent.futures import ProcessPoolExecutor

  import jax

  ctx = multiprocessing.get_context("spawn")  # JAX's runtime is not fork-safe
  cores = ctx.Queue()
  mine = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
  if jobs > len(mine):
    raise ValueError(f"jobs={jobs} but this process may use {len(mine)} core(s); use --jobs <= {len(mine)}")
  for c in mine[:jobs]:
    cores.put(c)
  cache = jax.config.jax_compilation_cache_dir or ""
  return ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_pin_worker, initargs=(cores, cache))


def compare(
  base: Config,
  learner_names: list[str],
  seeds: list[int],
  out: str,
  *,
  write_report: bool = True,
  command: str = "",
  jobs: int = 1,
) -> str:
  """Runs every (seed, learner) on `base` (the baselines with the first learner of each seed),
  writes <out>/results.json, table.md and (report) report.md; returns the markdown. With
  `jobs` > 1 the runs go to that many worker processes, each pinned to one core: the same runs
  and files, each run's numbers those of a one-core run (XLA's rounding depends on its thread
  count, and training can amplify it: not bit-identical to `jobs=1`). Learners registered at run
  time, not on import, are not known to the workers."""
  if jobs < 1:
    raise ValueError(f"jobs must be >= 1, got {jobs}")
  for n in learner_names:
    dataclasses.replace(base, learner=n).validate()  # an unknown name fails before any run
  t_start = time.perf_counter()
  runs = []
  todo = [
    (name, seed, dataclasses.replace(base, learner=name, seed=seed, baselines=base.baselines if j == 0 else ()))
    for seed in seeds
    for j, name in enumerate(learner_names)
  ]
  pool = _executor(jobs) if jobs > 1 else None
  futures = [pool.submit(_one_run, c, os.path.join(out, f"{n}_seed{s}")) for n, s, c in todo] if pool else None
  bar = Progress("compare", len(seeds) * len(learner_names), "run", every_s=float("inf")).__enter__()
  for i, (name, seed, config) in enumerate(todo):
    workdir = os.path.join(out, f"{name}_seed{seed}")
    try:
      final, wall = futures[i].result() if pool else _one_run(config, workdir)
    except BaseException:
      if pool:
        pool.shutdown(cancel_futures=True)
      raise
    with open(os.path.join(workdir, TIMING)) as f:
      timing = json.load(f)
    runs.append({"learner": name, "seed": seed, "final": final, "timing": timing, "wall_s": wall})
    cold = final["results"][name]["user_cold"]
    bar.update(1, note=f"{name} seed {seed}")
    left = eta(bar.done, bar.total, time.perf_counter() - t_start)
    logging.info(
      "compare %d/%d: %s seed %d: user-cold %s (%.0fs%s)",
      bar.done,
      bar.total,
      name,
      seed,
      _headline(cold),
      runs[-1]["wall_s"],
      f"; {left}" if left else "",
    )
  bar.__exit__(None, None, None)
  if pool:
    pool.shutdown()
  md, summary = report.build_table(runs, learner_names, list(base.few_shot_ks))
  total = time.perf_counter() - t_start
  stacked = (
    f"Every trained learner, and the pooled and fine-tuned baselines, predicts the residual of "
    f"`{base.base}` (cross-fitted over {base.base_folds} folds of the training users).\n\n"
    if base.base
    else ""
  )
  header = (
    f"# {base.dataset}: learners × scenarios × seeds {seeds}\n\nCommand: `{command}`\n\n"
    f"{stacked}Total wall time: {total:.0f} s\n\n"
  )
  os.makedirs(out, exist_ok=True)
  write_json_atomic(
    os.path.join(out, "results.json"), {"command": command, "total_s": total, "summary": summary, "runs": runs}
  )
  write_text_atomic(os.path.join(out, "table.md"), header + md)
  if write_report:
    report.write_report(out, md, command, total)
  return header + md
