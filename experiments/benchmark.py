"""Meta-train step benchmark: compile time, step time, tasks/s, FLOP/s, memory, compiles, and
the same meta-update run the reference code's way (PyTorch, one task at a time) and as our
own per-task jitted loop, all measured in one run.

  python -m experiments.benchmark --suite=targets --out=experiments/results/targets_cpu.json
  python -m experiments.benchmark --suite=scaling --out=experiments/results/scaling_cpu.json
  python -m experiments.benchmark --suite=growth --out=experiments/results/growth_cpu.json
  python -m experiments.benchmark --learners=maml --meta_batch_sizes=32,128 --inner_steps=1,5 --out=b.json

Suites:
  custom   learners x meta_batch_sizes x inner_steps from the flags.
  targets  second-order MAML, MeLU shapes, meta-batch 32: head 1 step, head 5 steps, all
           parameters 1 step (each with both baselines), then every meta-learner at its
           default (5 inner steps) for compile times.
  scaling  tasks/s against meta-batch 8..1024 and inner steps 1, 3, 5 for maml, fomaml,
           neural_process, in_context, prototype (no baselines).
  gpu      meta-batch 1024 rows plus the scaling sweep (experiments/gpu_check.sh).
  growth   synthetic users 10k/100k/1M: time and peak memory of generating, building the
           episodes and one epoch, each size in a fresh process.

Compile time: by default the run uses a fresh, empty compilation cache, so the first call
of each configuration is a cold compile; the configuration is then compiled again from
a cleared in-memory cache (`compile_cached_s`), which is a persistent-cache hit.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import types

from absl import app, flags, logging

from experiments import runtime_flags

flags.DEFINE_enum("suite", "custom", ["custom", "targets", "scaling", "gpu", "growth", "growth_one"], "What to run.")
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
flags.DEFINE_integer("task_chunk", 0, "Tasks per vmapped chunk inside the step (0: the whole meta-batch); "
                     "custom, scaling and gpu suites. The targets suite times 0 and this (default 4).")
flags.DEFINE_list("baselines", ["torch", "jax_loop"], "Baselines timed next to each custom configuration.")
flags.DEFINE_integer("baseline_steps", 20, "Timed steps of each baseline.")
flags.DEFINE_integer("grad_check_tasks", 4, "Tasks in the torch-vs-JAX meta-gradient check.")
flags.DEFINE_integer("n_tasks", 2048, "Device-resident tasks to sample meta-batches from (melu shapes).")
flags.DEFINE_float("peak_flops", 0.0, "FP32 peak of the machine in FLOP/s, to report the share achieved (0: skip).")
flags.DEFINE_integer("precompile_threads", 0, "Compile every configuration first in this many threads "
                     "(0: compile each on its first call). Needs the persistent cache (--cold_compile does it).")
flags.DEFINE_bool("cached_compile", True, "Also time a second compile of each configuration (persistent-cache hit).")
flags.DEFINE_bool("cold_compile", True, "Use a fresh, empty compilation cache so first calls are cold compiles.")
flags.DEFINE_list("growth_users", ["10000", "100000", "1000000"], "Synthetic users (growth suite).")
flags.DEFINE_integer("growth_items", 3000, "Synthetic items (growth suite).")
flags.DEFINE_string("growth_learner", "maml", "Learner of the growth suite's epoch.")
flags.DEFINE_integer("growth_batch", 256, "Meta-batch of the growth suite's epoch.")
flags.DEFINE_integer("growth_inner_steps", 1, "Inner steps of the growth suite's epoch.")
flags.DEFINE_integer("seed", 0, "Seed of the shapes and the parameters.")
flags.DEFINE_string("out", "runs/benchmark.json", "Output JSON path.")
FLAGS = flags.FLAGS

GRADIENT = ("maml", "fomaml", "metasgd", "anil", "reptile")
META = GRADIENT + ("neural_process", "in_context", "prototype", "matching")
SCALING_LEARNERS = ("maml", "fomaml", "neural_process", "in_context", "prototype")
SCALING_BATCHES = (8, 32, 128, 512, 1024)
SCALING_STEPS = (1, 3, 5)
TORCH_LEARNERS = ("maml", "fomaml", "anil")
GEMM = {}  # the machine's measured dense-matmul FLOP/s, filled once per run
BASELINE_CACHE = {}  # baselines depend on the configuration, not on --task_chunk: timed once


def row(learner, batch, steps, *, adapt="head", first_order=False, baselines=(), chunk=None):
  return {"learner": learner, "meta_batch_size": batch, "inner_steps": steps if learner in GRADIENT else None,
          "adapt": adapt if learner in GRADIENT else None,
          "first_order": (first_order or learner == "fomaml") if learner in GRADIENT else None,
          "task_chunk": FLAGS.task_chunk if chunk is None else chunk, "baselines": list(baselines)}


def suite_rows(suite: str) -> list[dict]:
  if suite == "custom":
    rows = []
    for name in FLAGS.learners:
      for b in FLAGS.meta_batch_sizes:
        for k in (FLAGS.inner_steps if name in GRADIENT else FLAGS.inner_steps[:1]):
          rows.append(row(name, int(b), int(k), adapt=FLAGS.adapt, first_order=FLAGS.first_order,
                          baselines=[x for x in FLAGS.baselines if x]))
    return rows
  if suite == "targets":
    both = ("torch", "jax_loop")
    c = FLAGS.task_chunk or 4
    rows = []
    for k, adapt, base in ((1, "head", both), (5, "head", both), (1, "all", both), (5, "all", ("jax_loop",))):
      rows += [row("maml", 32, k, adapt=adapt, baselines=base, chunk=0),
               row("maml", 32, k, adapt=adapt, baselines=base, chunk=c)]
    return rows + [row(n, 32, 5, chunk=0) for n in META]
  if suite == "scaling":
    return [row(n, b, k) for n in SCALING_LEARNERS for k in (SCALING_STEPS if n in GRADIENT else (1,))
            for b in SCALING_BATCHES]
  if suite == "gpu":
    rows = [row("maml", 1024, 1, baselines=("jax_loop",)), row("maml", 1024, 5), row("maml", 1024, 1, adapt="all"),
            row("fomaml", 1024, 5), row("neural_process", 1024, 1), row("in_context", 1024, 1),
            row("prototype", 1024, 1)]
    return rows + suite_rows("scaling")
  raise ValueError(suite)


def load_shapes():
  from metarec_jax import bench
  if FLAGS.shapes == "melu":
    return bench.melu_shapes(n_tasks=FLAGS.n_tasks, seed=FLAGS.seed), "melu"
  import numpy as np
  from metarec_jax.data import load_dataset
  from metarec_jax.data.features import feature_tables
  from metarec_jax.data.tasks import TaskConfig, build_scenarios
  ds = load_dataset(FLAGS.shapes, data_dir=FLAGS.data_dir, seed=FLAGS.seed)
  scen = build_scenarios(ds, TaskConfig(), FLAGS.seed)
  known = np.zeros(ds.n_items, bool)
  known[scen.train_ratings[1]] = True
  fields, tables = feature_tables(ds, known_items=known, item_id=False)
  return bench.Shapes(fields, tables, scen.train), FLAGS.shapes


def setup_config(shapes, spec: dict) -> types.SimpleNamespace:
  """Everything one configuration needs on the device: learner, data, initial parameters, step."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from metarec_jax import runtime
  from metarec_jax.learners import FitContext, create_learner
  from metarec_jax.models import create_model
  from metarec_jax.train import (create_train_state, device_data, featurize_episodes, make_epoch_order,
                                  make_train_step)

  name, B = spec["learner"], spec["meta_batch_size"]
  mesh = runtime.task_mesh(runtime_flags.FLAGS.devices)
  runtime.check_divisible(B, mesh)
  model = create_model(FLAGS.model, fields=shapes.fields, embed_dim=32, hidden=(64, 64), output_bias=3.5, linear=False)
  learner = create_learner(name, model, inner_lr=FLAGS.inner_lr, inner_steps=spec["inner_steps"] or 1,
                           adapt=spec["adapt"] or "head", first_order=bool(spec["first_order"]))
  arrays = shapes.episodes.arrays()
  T = len(shapes.episodes)
  data = runtime.replicate(device_data(shapes.episodes, shapes.tables), mesh)
  example = featurize_episodes(data["tables"], jax.tree.map(lambda a: a[:1], data["episodes"]))
  r = arrays["support_rating"][arrays["support_mask"]]
  ctx = FitContext(model=model, fields=shapes.fields, n_items=0, train_users=np.zeros(len(r), np.int32),
                   train_items=np.zeros(len(r), np.int32), train_ratings=r)
  params0 = learner.init(jax.random.key(FLAGS.seed), example, ctx)
  params0 = jax.tree.map(np.asarray, params0)  # a host copy: every timed run starts from it
  tx = optax.adam(1e-3)

  def fresh_state():
    return runtime.replicate(create_train_state(jax.random.key(1), jax.tree.map(jnp.asarray, params0), tx), mesh)

  traces = []
  step_fn = make_train_step(learner, mesh=mesh, task_chunk=spec["task_chunk"], on_trace=lambda: traces.append(1))
  _, order = make_epoch_order(T, B, mesh)(runtime.replicate(jax.random.key(2), mesh))
  return types.SimpleNamespace(model=model, learner=learner, data=data, params0=params0, fresh_state=fresh_state,
                               traces=traces, step_fn=step_fn, order=order, mesh=mesh)


def precompile(shapes, specs: list[dict], threads: int) -> list:
  """Sets up and compiles every configuration in parallel threads (XLA compiles outside the
  GIL); the compiled executables land in the persistent cache, so each configuration's
  first call afterwards is a cache hit. Returns [(setup, cold compile seconds)]."""
  from concurrent.futures import ThreadPoolExecutor

  def job(spec):
    s = setup_config(shapes, spec)
    t0 = time.perf_counter()
    s.step_fn.lower(s.fresh_state(), s.data, s.order).compile()
    seconds = time.perf_counter() - t0
    return s, seconds

  with ThreadPoolExecutor(threads) as pool:
    return list(pool.map(job, specs))


def run_config(shapes, spec: dict, prepared=None) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from metarec_jax import bench
  from metarec_jax.train import make_train_step

  B = spec["meta_batch_size"]
  out = dict(spec)
  s, precompile_s = prepared if prepared else (setup_config(shapes, spec), None)
  learner, model, data, params0, fresh_state, order, mesh = (s.learner, s.model, s.data, s.params0, s.fresh_state,
                                                             s.order, s.mesh)
  step_fn, traces = s.step_fn, s.traces
  out["devices"] = 1 if mesh is None else mesh.size
  out["n_params"] = int(sum(np.size(v) for v in jax.tree.leaves(params0)))

  def call(state):
    return step_fn(state, data, order)[0]

  state, first, times = bench.time_loop(call, fresh_state(), warmup=FLAGS.warmup, steps=FLAGS.steps)
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
  if flops and FLAGS.peak_flops:
    out["share_of_peak"] = out["achieved_flops"] / FLAGS.peak_flops
  if flops and GEMM.get("flops"):
    out["share_of_gemm_ceiling"] = out["achieved_flops"] / GEMM["flops"]
  del state
  if FLAGS.cached_compile:
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
    _, first_l, times_l = bench.time_loop(lambda s: loop_step(s, data, order, tids), fresh_state(),
                                          warmup=1, steps=FLAGS.baseline_steps)
    out["jax_loop"] = {"first_call_s": first_l, "step": bench.summarise(times_l)}
    out["speedup_vs_jax_loop"] = out["jax_loop"]["step"]["median_s"] / out["step"]["median_s"]
    cached["jax_loop"] = out["jax_loop"]
  if "torch" in spec["baselines"]:
    if "torch_loop" not in cached:
      cached["torch_loop"] = torch_baseline(learner, model, params0, shapes, data, order_np, spec)
    out["torch_loop"] = cached["torch_loop"]
    if "step" in out["torch_loop"]:
      out["speedup_vs_torch_loop"] = out["torch_loop"]["step"]["median_s"] / out["step"]["median_s"]
  return out


def torch_baseline(learner, model, params0, shapes, data, order_np, spec) -> dict:
  import jax
  import numpy as np

  from experiments import torch_reference as tr
  from metarec_jax import bench
  from metarec_jax.train import featurize_episodes

  if not tr.available():
    return {"skipped": "torch is not installed (pip install -e .[bench])"}
  if spec["learner"] not in TORCH_LEARNERS:
    return {"skipped": f"no torch reference for {spec['learner']}"}
  import torch
  ref = tr.TorchMAML(model, params0["model"], shapes.tables, shapes.episodes.arrays(), inner_lr=FLAGS.inner_lr,
                     inner_steps=spec["inner_steps"], first_order=bool(spec["first_order"]), adapt=spec["adapt"])
  # Same meta-gradient first (fresh parameters, the first tasks).
  k = FLAGS.grad_check_tasks
  ep = featurize_episodes(data["tables"], jax.tree.map(lambda a: a[:k], data["episodes"]))
  g_jax = jax.jit(jax.grad(lambda p: learner.meta_loss(p, ep, None)[0]))(jax.tree.map(np.asarray, params0))
  diff, scale = tr.max_grad_diff(ref.meta_grads(np.arange(k)), g_jax["model"])
  res = {"grad_check": {"tasks": k, "max_abs_diff": diff, "max_abs_grad": scale, "ok": diff <= 1e-5 * max(1.0, scale)},
         "threads": torch.get_num_threads(), "version": torch.__version__}
  if not res["grad_check"]["ok"]:
    raise AssertionError(f"torch and JAX meta-gradients differ by {diff:.3g} (max |grad| {scale:.3g})")
  rows = [torch.from_numpy(order_np[i % len(order_np)].copy()).long() for i in range(FLAGS.baseline_steps + 2)]
  it = iter(rows)
  _, first, times = bench.time_loop(lambda _: ref.step(next(it)), None, warmup=1, steps=FLAGS.baseline_steps)
  res.update({"first_call_s": first, "step": bench.summarise(times)})
  return res


def machine() -> dict:
  import jax
  dev = jax.local_devices()[0]
  info = {"platform": dev.platform, "device_kind": dev.device_kind, "n_devices": jax.device_count(),
          "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
          "python": platform.python_version(), "jax": jax.__version__}
  try:
    import torch
    info["torch"] = torch.__version__
  except ImportError:
    info["torch"] = None
  return info


def growth_one(n_users: int) -> dict:
  """One size: generate, build episodes, one epoch; peak RSS after each phase."""
  import jax
  import numpy as np
  import optax

  from metarec_jax import bench
  from metarec_jax.data import synthetic
  from metarec_jax.data.features import feature_tables
  from metarec_jax.data.tasks import TaskConfig, build_scenarios
  from metarec_jax.learners import FitContext, create_learner
  from metarec_jax.models import create_model
  from metarec_jax.train import (create_train_state, device_data, featurize_episodes, make_epoch_order,
                                  make_train_step, run_epoch)

  res = {"n_users": n_users, "n_items": FLAGS.growth_items}
  t0 = time.perf_counter()
  ds = synthetic.generate(n_users=n_users, n_items=FLAGS.growth_items, min_ratings=15, max_ratings=85, seed=FLAGS.seed)
  res["n_ratings"] = ds.n_ratings
  res["generate"] = {"s": time.perf_counter() - t0, "peak_host_mb": bench.peak_host_mb()}
  t0 = time.perf_counter()
  scen = build_scenarios(ds, TaskConfig(max_ratings=85), FLAGS.seed)
  known = np.zeros(ds.n_items, bool)
  known[scen.train_ratings[1]] = True
  fields, tables = feature_tables(ds, known_items=known, item_id=True)
  data = device_data(scen.train, tables)
  jax.block_until_ready(data)
  res["n_train_tasks"] = len(scen.train)
  res["episodes"] = {"s": time.perf_counter() - t0, "peak_host_mb": bench.peak_host_mb()}
  model = create_model("content", fields=fields, embed_dim=32, hidden=(64, 64), output_bias=3.5, linear=True)
  learner = create_learner(FLAGS.growth_learner, model, inner_lr=FLAGS.inner_lr, inner_steps=FLAGS.growth_inner_steps)
  example = featurize_episodes(data["tables"], jax.tree.map(lambda a: a[:1], data["episodes"]))
  ctx = FitContext(model=model, fields=fields, n_items=ds.n_items, train_users=scen.train_ratings[0],
                   train_items=scen.train_ratings[1], train_ratings=scen.train_ratings[2])
  state = create_train_state(jax.random.key(1), learner.init(jax.random.key(0), example, ctx), optax.adam(1e-3))
  step_fn = make_train_step(learner, redraw=True, id_dropout=0.1)
  order_fn = make_epoch_order(len(scen.train), FLAGS.growth_batch)
  key, order = order_fn(jax.random.key(2))
  # Compile on a one-row order (same shapes per step), then time a full epoch.
  state = jax.block_until_ready(step_fn(state, data, order[:1])[0])
  t0 = time.perf_counter()
  state, losses = run_epoch(step_fn, state, data, order)
  losses = np.asarray(losses)
  res["epoch"] = {"s": time.perf_counter() - t0, "steps": int(order.shape[0]), "meta_batch_size": FLAGS.growth_batch,
                  "learner": FLAGS.growth_learner, "inner_steps": FLAGS.growth_inner_steps,
                  "tasks_per_s": order.size / (time.perf_counter() - t0), "finite": bool(np.isfinite(losses).all()),
                  "peak_host_mb": bench.peak_host_mb()}
  return res


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  from metarec_jax import runtime
  from metarec_jax.writers import write_json_atomic
  cache = tempfile.mkdtemp(prefix="metarec-bench-cache-") if FLAGS.cold_compile else runtime_flags.FLAGS.compilation_cache_dir
  runtime.configure(compilation_cache_dir=cache, distributed=runtime_flags.FLAGS.distributed)
  t_start = time.perf_counter()
  result = {"command": "python -m experiments.benchmark " + " ".join(sys.argv[1:]), "suite": FLAGS.suite,
            "machine": machine(), "peak_flops": FLAGS.peak_flops or None}
  try:
    if FLAGS.suite == "growth_one":
      result["growth"] = growth_one(int(FLAGS.growth_users[0]))
    elif FLAGS.suite == "growth":
      result["growth"] = []
      for n in FLAGS.growth_users:
        with tempfile.TemporaryDirectory() as tmp:
          path = os.path.join(tmp, "one.json")
          args = [sys.executable, "-m", "experiments.benchmark", "--suite=growth_one", f"--growth_users={n}",
                  f"--growth_items={FLAGS.growth_items}", f"--growth_learner={FLAGS.growth_learner}",
                  f"--growth_batch={FLAGS.growth_batch}", f"--growth_inner_steps={FLAGS.growth_inner_steps}",
                  f"--seed={FLAGS.seed}", f"--out={path}"]
          done = subprocess.run(args, capture_output=True, text=True)
          if done.returncode:
            raise RuntimeError(f"growth run for {n} users failed:\n{done.stderr[-3000:]}")
          with open(path) as f:
            one = json.load(f)["growth"]
        result["growth"].append(one)
        write_json_atomic(FLAGS.out, result)
        print(json.dumps(one), flush=True)
    else:
      from metarec_jax import bench
      GEMM["flops"] = bench.gemm_ceiling_flops()
      result["machine"]["gemm_2048_flops"] = GEMM["flops"]
      shapes, shapes_name = load_shapes()
      result["shapes"] = {"name": shapes_name, "n_tasks": len(shapes.episodes),
                          "support": int(shapes.episodes.support_item.shape[1]),
                          "query": int(shapes.episodes.query_item.shape[1]),
                          "fields": {f.name: f.vocab_size for f in shapes.fields}}
      result["configs"] = []
      specs = suite_rows(FLAGS.suite)
      prepared = [None] * len(specs)
      if FLAGS.precompile_threads > 0:
        t0 = time.perf_counter()
        prepared = precompile(shapes, specs, FLAGS.precompile_threads)
        result["precompile_wall_s"] = time.perf_counter() - t0
        print(f"precompiled {len(specs)} configurations in {result['precompile_wall_s']:.0f}s", flush=True)
      for spec, prep in zip(specs, prepared):
        r = run_config(shapes, spec, prep)
        result["configs"].append(r)
        write_json_atomic(FLAGS.out, result)  # partial results survive an interrupted run
        logging.info("%s", json.dumps(r))
        extra = "".join(f"  {k} {r[k]:.1f}x" for k in ("speedup_vs_torch_loop", "speedup_vs_jax_loop") if k in r)
        print(f"{r['learner']:>14} B={r['meta_batch_size']:<5} K={r['inner_steps']} adapt={r['adapt']} "
              f"chunk={r['task_chunk']}: "
              f"{r['step']['median_s'] * 1e3:8.2f} ms/step  {r['tasks_per_s']:9.0f} tasks/s  "
              f"compile {r['compile_s']:.1f}s (cached {r.get('compile_cached_s', float('nan')):.1f}s){extra}", flush=True)
  except (ValueError, AssertionError, RuntimeError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  result["wall_s"] = time.perf_counter() - t_start
  write_json_atomic(FLAGS.out, result)
  print(f"wrote {FLAGS.out} ({result['wall_s']:.0f}s)")


if __name__ == "__main__":
  runtime_flags.run(main)
