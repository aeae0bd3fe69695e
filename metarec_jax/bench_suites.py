"""The benchmark's suites (experiments/benchmark.py is their flags): the meta-train step
timed against the reference code's way (PyTorch, one task at a time) and our own per-task
loop, and the growth of time and memory with the number of users. See that binary's
docstring for the suites and what each number means."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import types

from absl import logging

from metarec_jax import bench_growth
from metarec_jax import torch_reference as tr
from metarec_jax.learners import get_spec, names


GRADIENT = names(lambda s: s.inner_loop)
META = names(lambda s: s.meta_learner)
SCALING_LEARNERS = ("maml", "fomaml", "neural_process", "in_context", "prototype")
SCALING_BATCHES = (8, 32, 128, 512, 1024)
SCALING_STEPS = (1, 3, 5)
GEMM = {}  # the machine's measured dense-matmul FLOP/s, filled once per run
BASELINE_CACHE = {}  # baselines depend on the configuration, not on --task_chunk: timed once


def row(o, learner, batch, steps, *, adapt="head", first_order=False, baselines=(), chunk=None):
  spec = get_spec(learner)
  grad = spec.inner_loop
  return {
    "learner": learner,
    "meta_batch_size": batch,
    "inner_steps": steps if grad else None,
    "adapt": adapt if grad else None,
    "first_order": (first_order or spec.first_order) if grad else None,
    "task_chunk": o.task_chunk if chunk is None else chunk,
    "baselines": list(baselines),
  }


def suite_rows(o, suite: str) -> list[dict]:
  if suite == "custom":
    rows = []
    for name in o.learners:
      for b in o.meta_batch_sizes:
        for k in o.inner_steps if name in GRADIENT else o.inner_steps[:1]:
          rows.append(
            row(
              o, name, int(b), int(k), adapt=o.adapt, first_order=o.first_order, baselines=[x for x in o.baselines if x]
            )
          )
    return rows
  if suite == "targets":
    both = ("torch", "jax_loop")
    c = o.task_chunk or 4
    rows = []
    for k, adapt, base in ((1, "head", both), (5, "head", both), (1, "all", both), (5, "all", ("jax_loop",))):
      rows += [
        row(o, "maml", 32, k, adapt=adapt, baselines=base, chunk=0),
        row(o, "maml", 32, k, adapt=adapt, baselines=base, chunk=c),
      ]
    return rows + [row(o, n, 32, 5, chunk=0) for n in META]
  if suite == "scaling":
    return [
      row(o, n, b, k)
      for n in SCALING_LEARNERS
      for k in (SCALING_STEPS if n in GRADIENT else (1,))
      for b in SCALING_BATCHES
    ]
  if suite == "gpu":
    rows = [
      row(o, "maml", 1024, 1, baselines=("jax_loop",)),
      row(o, "maml", 1024, 5),
      row(o, "maml", 1024, 1, adapt="all"),
      row(o, "fomaml", 1024, 5),
      row(o, "neural_process", 1024, 1),
      row(o, "in_context", 1024, 1),
      row(o, "prototype", 1024, 1),
    ]
    return rows + suite_rows(o, "scaling")
  raise ValueError(suite)


def load_shapes(o):
  """MeLU-shaped random episodes, or a dataset's training episodes and feature tables (the run's
  own set-up, `build_setup`, without the item-id field)."""
  from metarec_jax import bench

  if o.shapes == "melu":
    return bench.melu_shapes(n_tasks=o.n_tasks, seed=o.seed), "melu"
  from metarec_jax.config import resolve
  from metarec_jax.setup import build_setup

  st = build_setup(
    resolve("default", {"dataset": o.shapes, "data_dir": o.data_dir, "seed": o.seed, "item_id_feature": False})
  )
  return bench.Shapes(st.fields, st.tables, st.scen.train), o.shapes


def setup_config(o, shapes, spec: dict) -> types.SimpleNamespace:
  """Everything one configuration needs on the device: learner, data, initial parameters, step."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from metarec_jax import runtime
  from metarec_jax.learners import FitContext, create_learner
  from metarec_jax.models import create_model
  from metarec_jax.training.state import create_train_state
  from metarec_jax.data.episodes import device_data, featurize_episodes
  from metarec_jax.training.step import make_epoch_order, make_train_step

  name, B = spec["learner"], spec["meta_batch_size"]
  mesh = runtime.task_mesh(o.devices)
  runtime.check_divisible(B, mesh)
  model = create_model(o.model, fields=shapes.fields, embed_dim=32, hidden=(64, 64), output_bias=3.5, linear=False)
  learner = create_learner(
    name,
    model,
    inner_lr=o.inner_lr,
    inner_steps=spec["inner_steps"] or 1,
    adapt=spec["adapt"] or "head",
    first_order=bool(spec["first_order"]),
  )
  arrays = shapes.episodes.arrays()
  T = len(shapes.episodes)
  data = runtime.replicate(device_data(shapes.episodes, shapes.tables), mesh)
  example = featurize_episodes(data["tables"], jax.tree.map(lambda a: a[:1], data["episodes"]))
  r = arrays["support_rating"][arrays["support_mask"]]
  ctx = FitContext(
    model=model,
    fields=shapes.fields,
    n_items=0,
    train_users=np.zeros(len(r), np.int32),
    train_items=np.zeros(len(r), np.int32),
    train_ratings=r,
  )
  params0 = learner.init(jax.random.key(o.seed), example, ctx)
  params0 = jax.tree.map(np.asarray, params0)  # a host copy: every timed run starts from it
  tx = optax.adam(1e-3)

  def fresh_state():
    return runtime.replicate(create_train_state(jax.random.key(1), jax.tree.map(jnp.asarray, params0), tx), mesh)

  traces = []
  step_fn = make_train_step(learner, mesh=mesh, task_chunk=spec["task_chunk"], on_trace=lambda: traces.append(1))
  _, order = make_epoch_order(T, B, mesh)(runtime.replicate(jax.random.key(2), mesh))
  return types.SimpleNamespace(
    model=model,
    learner=learner,
    data=data,
    params0=params0,
    fresh_state=fresh_state,
    traces=traces,
    step_fn=step_fn,
    order=order,
    mesh=mesh,
  )


def precompile(o, shapes, specs: list[dict], threads: int) -> list:
  """Sets up and compiles every configuration in parallel threads (XLA compiles outside the
  GIL); the compiled executables land in the persistent cache, so each configuration's
  first call afterwards is a cache hit. Returns [(setup, cold compile seconds)]."""
  from concurrent.futures import ThreadPoolExecutor

  def job(spec):
    s = setup_config(o, shapes, spec)
    t0 = time.perf_counter()
    s.step_fn.lower(s.fresh_state(), s.data, s.order).compile()
    seconds = time.perf_counter() - t0
    return s, seconds

  with ThreadPoolExecutor(threads) as pool:
    return list(pool.map(job, specs))


def run_config(o, shapes, spec: dict, prepared=None) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from metarec_jax import bench
  from metarec_jax.training.step import make_train_step

  B = spec["meta_batch_size"]
  out = dict(spec)
  s, precompile_s = prepared if prepared else (setup_config(o, shapes, spec), None)
  learner, model, data, params0, fresh_state, order, mesh = (
    s.learner,
    s.model,
    s.data,
    s.params0,
    s.fresh_state,
    s.order,
    s.mesh,
  )
  step_fn, traces = s.step_fn, s.traces
  out["devices"] = 1 if mesh is None else mesh.size
  out["n_params"] = int(sum(np.size(v) for v in jax.tree.leaves(params0)))

  def call(state):
    return step_fn(state, data, order)[0]

  state, first, times = bench.time_loop(call, fresh_state(), warmup=o.warmup, steps=o.steps)
  out["compiles"] = len(traces)
  out["first_call_s"] = first
  # Cold compile: the first call, or the parallel precompile (a persistent-cache hit follows).
  out["compile_s"] = first if precompile_s is None else precompile_s
  out["precompiled"] = precompile_s is not None
  out["step"] = bench.summarise(times)
  out["tasks_per_s"] = B / out["step"]["median_s"]
  if spec["task_chunk"] and spec["task_chunk"] < B:
    # XLA counts a scan body once; the unchunked step does the same math in one piece.
    flops = bench.cost_flops(make_train_step(learner, mesh=mesh), state, data, order)
  else:
    flops = bench.cost_flops(step_fn, state, data, order)
  out["flops_per_step"] = flops
  out["achieved_flops"] = flops / out["step"]["median_s"] if flops else None
  if flops and o.peak_flops:
    out["share_of_peak"] = out["achieved_flops"] / o.peak_flops
  if flops and GEMM.get("flops"):
    out["share_of_gemm_ceiling"] = out["achieved_flops"] / GEMM["flops"]
  del state
  if o.cached_compile:
    # A second compile of the same configuration, from a cleared in-memory cache.
    jax.clear_caches()
    step_again = make_train_step(learner, mesh=mesh, task_chunk=spec["task_chunk"])
    t0 = time.perf_counter()
    jax.block_until_ready(step_again(fresh_state(), data, order))
    out["compile_cached_s"] = time.perf_counter() - t0
  out["peak_host_mb"] = bench.peak_host_mb()
  out["device_memory"] = bench.device_memory()

  order_np = np.asarray(order)
  key = (spec["learner"], B, spec["inner_steps"], spec["adapt"], spec["first_order"])
  cached = BASELINE_CACHE.setdefault(key, {})
  if "jax_loop" in spec["baselines"] and "jax_loop" in cached:
    out["jax_loop"] = cached["jax_loop"]
    out["speedup_vs_jax_loop"] = out["jax_loop"]["step"]["median_s"] / out["step"]["median_s"]
  elif "jax_loop" in spec["baselines"]:
    loop_step = bench.make_jax_loop_step(learner, data["tables"])
    tids = [jnp.int32(t) for t in range(B)]
    _, first_l, times_l = bench.time_loop(
      lambda s: loop_step(s, data, order, tids), fresh_state(), warmup=1, steps=o.baseline_steps
    )
    out["jax_loop"] = {"first_call_s": first_l, "step": bench.summarise(times_l)}
    out["speedup_vs_jax_loop"] = out["jax_loop"]["step"]["median_s"] / out["step"]["median_s"]
    cached["jax_loop"] = out["jax_loop"]
  if "torch" in spec["baselines"]:
    if "torch_loop" not in cached:
      cached["torch_loop"] = tr.torch_baseline(o, learner, model, params0, shapes, data, order_np, spec)
    out["torch_loop"] = cached["torch_loop"]
    if "step" in out["torch_loop"]:
      out["speedup_vs_torch_loop"] = out["torch_loop"]["step"]["median_s"] / out["step"]["median_s"]
  return out


def machine() -> dict:
  import jax

  dev = jax.local_devices()[0]
  info = {
    "platform": dev.platform,
    "device_kind": dev.device_kind,
    "n_devices": jax.device_count(),
    "cpu_count": os.cpu_count(),
    "processor": platform.processor() or platform.machine(),
    "python": platform.python_version(),
    "jax": jax.__version__,
  }
  try:
    import torch

    info["torch"] = torch.__version__
  except ImportError:
    info["torch"] = None
  return info


def run(o, command: str) -> dict:
  """Runs the suite `o.suite` with the options `o` (the binary's flags); writes and returns the JSON."""
  from metarec_jax import runtime
  from metarec_jax.writers import write_json_atomic

  if getattr(o, "workload_cores", 0):  # before the backend starts: XLA sizes its pool from the mask
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: o.workload_cores])
  if o.suite == "workload_trace":  # XLA reads its flags when the backend starts
    from metarec_jax.bench_workload import TRACEME_FLAG

    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TRACEME_FLAG}".strip()
  cache = tempfile.mkdtemp(prefix="metarec-bench-cache-") if o.cold_compile else o.compilation_cache_dir
  runtime.configure(compilation_cache_dir=cache, distributed=o.distributed)
  t_start = time.perf_counter()
  result = {"command": command, "suite": o.suite, "machine": machine(), "peak_flops": o.peak_flops or None}
  if o.suite == "workload_trace":
    from metarec_jax import bench_workload

    result["trace"] = bench_workload.trace_steps(o)
  elif o.suite in ("workload", "workload_one"):
    from metarec_jax import bench, bench_workload

    if o.suite == "workload_one":  # the pinned child of the workload suite
      result["jax"] = bench_workload.jax_epoch(o)
    else:
      GEMM["flops"] = bench.gemm_ceiling_flops()
      result["machine"]["gemm_2048_flops"] = GEMM["flops"]
      result["workload"] = bench_workload.workload(o)
      result["speedup_vs_melu_style"] = result["workload"]["speedup_vs_melu_style"]
  elif o.suite == "growth_one":
    result["growth"] = bench_growth.growth_one(o, int(o.growth_users[0]))
  elif o.suite == "growth":
    result["growth"] = []
    for n in o.growth_users:
      with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "one.json")
        args = [
          sys.executable,
          "-m",
          "experiments.benchmark",
          "--suite=growth_one",
          f"--growth_users={n}",
          f"--growth_items={o.growth_items}",
          f"--growth_learner={o.growth_learner}",
          f"--growth_batch={o.growth_batch}",
          f"--growth_inner_steps={o.growth_inner_steps}",
          f"--seed={o.seed}",
          f"--out={path}",
        ]
        done = subprocess.run(args, capture_output=True, text=True)
        if done.returncode:
          raise RuntimeError(f"growth run for {n} users failed:\n{done.stderr[-3000:]}")
        with open(path) as f:
          one = json.load(f)["growth"]
      result["growth"].append(one)
      write_json_atomic(o.out, result)
      print(json.dumps(one), flush=True)
  else:
    from metarec_jax import bench

    GEMM["flops"] = bench.gemm_ceiling_flops()
    result["machine"]["gemm_2048_flops"] = GEMM["flops"]
    shapes, shapes_name = load_shapes(o)
    result["shapes"] = {
      "name": shapes_name,
      "n_tasks": len(shapes.episodes),
      "support": int(shapes.episodes.support_item.shape[1]),
      "query": int(shapes.episodes.query_item.shape[1]),
      "fields": {f.name: f.vocab_size for f in shapes.fields},
    }
    result["configs"] = []
    specs = suite_rows(o, o.suite)
    prepared = [None] * len(specs)
    if o.precompile_threads > 0:
      t0 = time.perf_counter()
      prepared = precompile(o, shapes, specs, o.precompile_threads)
      result["precompile_wall_s"] = time.perf_counter() - t0
      print(f"precompiled {len(specs)} configurations in {result['precompile_wall_s']:.0f}s", flush=True)
    for spec, prep in zip(specs, prepared):
      r = run_config(o, shapes, spec, prep)
      result["configs"].append(r)
      write_json_atomic(o.out, result)  # partial results survive an interrupted run
      logging.info("%s", json.dumps(r))
      extra = "".join(f"  {k} {r[k]:.1f}x" for k in ("speedup_vs_torch_loop", "speedup_vs_jax_loop") if k in r)
      print(
        f"{r['learner']:>14} B={r['meta_batch_size']:<5} K={r['inner_steps']} adapt={r['adapt']} "
        f"chunk={r['task_chunk']}: "
        f"{r['step']['median_s'] * 1e3:8.2f} ms/step  {r['tasks_per_s']:9.0f} tasks/s  "
        f"compile {r['compile_s']:.1f}s (cached {r.get('compile_cached_s', float('nan')):.1f}s){extra}",
        flush=True,
      )
  result["wall_s"] = time.perf_counter() - t_start
  write_json_atomic(o.out, result)
  print(f"wrote {o.out} ({result['wall_s']:.0f}s)")
  return result
