"""The benchmark's workload suite (`--suite=workload --dataset=ml-1m`): the run's default learner
(second-order MAML, head, its inner steps, meta-batch 32) over the dataset's real training tasks,
against the reference code's execution style on the same tasks.

- `jax`: one epoch of the training step over every training task (the loop's own step and
  epoch order), timed after one untimed step per compiled shape; plain (support padded to the
  width), with `--length_buckets` (one compile per bucket), and, where the process has a second
  CPU device, bucketed in two parts with the second on that device (`buckets_2dev`: what a run's
  fit does there, `training.step.PartStep`).
- `torch_melu_style`: MeLU's way, a Python loop over each meta-batch's tasks, each task's
  support *unpadded* (cut to its own ratings), `create_graph=True`, one Adam step; timed on the
  first `--workload_batches` meta-batches of the same epoch order. `torch_padded`: the same
  loop on the padded tasks (the targets suite's reference).
- The meta-gradients are checked equal first (JAX, torch padded, torch unpadded).
- Per core: torch with one thread against JAX in a child process pinned to one core
  (`--workload_cores=1`: `os.sched_setaffinity` before JAX starts its backend, whose thread pool
  is sized from the affinity mask); whole machine: torch with every thread against JAX on every core.
  `speedup_vs_melu_style` = torch unpadded seconds per task / JAX seconds per task, for each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def _config(o):
  """The dataset's default run config; one clear error unless it is what the torch reference
  implements (MAML on the content model, no base)."""
  from metarec_jax.config import resolve

  over = {"dataset": o.dataset, "seed": o.seed, "length_buckets": o.length_buckets}
  if getattr(o, "workload_inner_steps", 0):
    over["inner_steps"] = o.workload_inner_steps
  if o.data_dir:
    over["data_dir"] = o.data_dir
  config = resolve("default", over)
  if config.model != "content" or config.base or config.learner != "maml":
    raise ValueError(
      f"--suite=workload times MAML on the content model, which the torch reference implements; "
      f"--dataset={o.dataset}'s default run is --learner={config.learner} --model={config.model}"
      f"{f' --base={config.base}' if config.base else ''} (use ml-1m or ml-100k)"
    )
  return config


def _setup(o):
  from metarec_jax.setup import build_setup

  return build_setup(_config(o))


def jax_epoch(o) -> dict:
  """One epoch of the default learner's step over the real training tasks, plain and bucketed."""
  import jax
  import optax

  from metarec_jax import runtime
  from metarec_jax.data.buckets import make_bucket_order, split_by_length
  from metarec_jax.training.loop import data_on
  from metarec_jax.training.state import create_train_state
  from metarec_jax.training.step import make_epoch_order, make_train_step

  st = _setup(o)
  c = st.config
  learner = st.make(c.learner)
  params = jax.tree.map(np.asarray, st.init_params(learner))  # host copy: the step donates its state
  B = c.meta_batch_size
  n = len(st.scen.train)
  out = {"learner": c.learner, "inner_steps": c.inner_steps, "adapt": c.adapt, "meta_batch_size": B, "n_tasks": n}
  out["support_width"] = int(st.scen.train.support_mask.shape[1])
  out["support_fill"] = float(st.scen.train.support_mask.mean())
  variants = {"padded": (st.data, None)}
  if o.length_buckets > 1:
    b = split_by_length(st.scen.train, o.length_buckets)
    data = [{"episodes": jax.tree.map(jax.numpy.asarray, e.arrays()), "tables": st.data["tables"]} for e in b.episodes]
    variants["buckets"] = (data, [len(m) for m in b.members])
    out["bucket_sizes"] = list(b.sizes)

  tx = optax.adam(c.outer_lr)  # one optimiser: it is static state metadata, a new one would retrace

  def fresh():
    return create_train_state(jax.random.key(1), jax.tree.map(jax.numpy.asarray, params), tx)

  chunk = runtime.task_chunk(c.task_chunk, B)
  helper = runtime.helper_device()
  if helper is not None and "buckets" in variants and runtime.step_parts(-1, B, chunk, inner_loop=True) == 2:
    # the run's step on a machine with a second CPU device: half of each meta-batch's chunks there
    variants["buckets_2dev"] = variants["buckets"]
  for name, (data, counts) in variants.items():
    traces = []
    parts = 2 if name.endswith("_2dev") else 1
    step = make_train_step(learner, task_chunk=chunk, parts=parts, on_trace=lambda traces=traces: traces.append(1))
    if counts is None:
      _, order = make_epoch_order(n, B)(jax.random.key(3))
      schedule, datas = np.zeros(order.shape[0], int), [data]
    else:
      _, order, ids = make_bucket_order(counts, B)(jax.random.key(3))
      schedule, datas = np.asarray(ids), data
    far = (helper, data_on(datas, helper), jax.device_put(order, helper)) if parts > 1 else None
    compile_s, epoch_s = _time_epoch(step, fresh, datas, order, schedule, far)
    out[name] = {
      "epoch_s": epoch_s,
      "steps": int(order.shape[0]),
      "s_per_task": epoch_s / (order.shape[0] * B),
      "compile_s": compile_s,
      "compiles": len(traces),
      "devices": 2 if parts > 1 else 1,
    }
  if "buckets" in variants:  # the bucketed epoch's FLOPs and what share of the matmul ceiling they reach
    from metarec_jax import bench

    data, counts = variants["buckets"]
    _, order, ids = make_bucket_order(counts, B)(jax.random.key(3))
    flops = steps_flops(learner, fresh, data, order, np.asarray(ids))
    out["flops_per_epoch"] = flops
    out["gemm_2048_gflops"] = bench.gemm_ceiling_flops() / 1e9
    for name in [v for v in ("buckets", "buckets_2dev") if v in out]:
      out[name]["gflops"] = flops / out[name]["epoch_s"] / 1e9
      out[name]["share_of_gemm_ceiling"] = out[name]["gflops"] / out["gemm_2048_gflops"]
  return out


def steps_flops(learner, fresh, datas, order, schedule) -> float:
  """XLA's FLOP count of the steps whose buckets `schedule` lists (host ints; one step per entry),
  each counted on the same update made in one vmap (the run's step scans over task chunks, and
  XLA counts a loop's body once). `fresh()`: a start state; `datas`: the buckets' step data."""
  from metarec_jax import bench
  from metarec_jax.training.step import make_train_step

  one_vmap = make_train_step(learner)
  rows = np.bincount(schedule, minlength=len(datas))
  return float(sum(int(r) * bench.cost_flops(one_vmap, fresh(), d, order) for r, d in zip(rows, datas) if r))


def _time_epoch(step, fresh, datas, order, schedule, helper):
  """(seconds compiling every bucket's step, seconds of one epoch) of `step` over `order`'s rows,
  stepped as a fit steps (`run_epoch`); `helper`: run_epoch's, for a step in parts (None: one call)."""
  import jax

  from metarec_jax import runtime
  from metarec_jax.training.step import bucket_helper, run_epoch

  here = runtime.device_of(datas[0])

  def start():  # committed to the data's device, as after a step: one compile per shape
    return jax.device_put(fresh(), here)

  t0 = time.perf_counter()
  for b in range(len(datas)):  # compile every shape, untimed (the step donates its state: a fresh one each)
    args = () if helper is None else (bucket_helper(helper, b),)
    jax.block_until_ready(step(start(), datas[b], order, *args)[0].params)
  compile_s = time.perf_counter() - t0
  state = start()
  t0 = time.perf_counter()
  state, losses = run_epoch(step, state, datas, order, 0, None, schedule, helper)
  jax.block_until_ready((state.params, losses))
  return compile_s, time.perf_counter() - t0


def _jax_pinned(o, cores: int) -> dict:
  """jax_epoch in a child process pinned to `cores` cores (XLA sizes its thread pool from them)."""
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "one.json")
    args = [sys.executable, "-m", "experiments.benchmark", "--suite=workload_one", f"--dataset={o.dataset}"]
    args += [f"--seed={o.seed}", f"--length_buckets={o.length_buckets}", f"--workload_cores={cores}", f"--out={path}"]
    args.append(f"--workload_inner_steps={getattr(o, 'workload_inner_steps', 0)}")
    if o.data_dir:
      args.append(f"--data_dir={o.data_dir}")
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode:
      raise RuntimeError(f"the pinned JAX epoch failed:\n{done.stderr[-3000:]}")
    with open(path) as f:
      return json.load(f)["jax"]


def torch_loops(o, threads: int) -> dict:
  """The per-task torch loop on the first meta-batches of the epoch, unpadded and padded, after
  the meta-gradient check."""
  import jax
  import torch

  from metarec_jax import torch_reference as tr
  from metarec_jax.data.episodes import featurize_episodes
  from metarec_jax.training.step import make_epoch_order

  torch.set_num_threads(threads)
  st = _setup(o)
  c = st.config
  learner = st.make(c.learner)
  params = jax.tree.map(np.asarray, st.init_params(learner))
  arrays = st.scen.train.arrays()
  _, order = make_epoch_order(len(st.scen.train), c.meta_batch_size)(jax.random.key(3))
  order = np.asarray(order)[: o.workload_batches]
  kw = dict(inner_lr=c.inner_lr, inner_steps=c.inner_steps, first_order=c.first_order, adapt=c.adapt)
  refs = {
    "padded": tr.TorchMAML(st.model, params["model"], st.tables, arrays, **kw),
    "melu_style": tr.TorchMAML(st.model, params["model"], st.tables, arrays, unpadded=True, **kw),
  }
  k = o.grad_check_tasks
  ep = featurize_episodes(st.data["tables"], jax.tree.map(lambda a: a[:k], st.data["episodes"]))
  g_jax = jax.jit(jax.grad(lambda p: learner.meta_loss(p, ep, None)[0]))(params)
  out = {"threads": threads, "batches": int(len(order)), "grad_check": {}}
  for name, ref in refs.items():
    diff, scale = tr.max_grad_diff(ref.meta_grads(np.arange(k)), g_jax["model"])
    ok = diff <= 1e-5 * max(1.0, scale)
    out["grad_check"][name] = {"tasks": k, "max_abs_diff": diff, "max_abs_grad": scale, "ok": ok}
    if not ok:
      raise AssertionError(f"torch ({name}) and JAX meta-gradients differ by {diff:.3g} (max |grad| {scale:.3g})")
  for name, ref in refs.items():
    ref.step(torch.from_numpy(order[0].copy()).long())  # warm-up
    t0 = time.perf_counter()
    for row in order:
      ref.step(torch.from_numpy(row.copy()).long())
    seconds = time.perf_counter() - t0
    out[name] = {"seconds": seconds, "s_per_task": seconds / order.size}
  return out


def validation_pass(o, chunks=(128, 16), reps: int = 3) -> dict:
  """Seconds of one validation pass (every validation scenario, the run's `val_score`) of the
  default learner, by evaluation chunk and on one device or alternating between two (median of
  `reps` after a warm-up pass); the predictions agree to float rounding whatever the chunk."""
  import dataclasses

  st = _setup(o)
  learner = st.make(st.config.learner)
  params = st.init_params(learner)
  ev, out = st.evaluator, {}
  two = ev.devices[1:]  # the helper device, when the run has one
  for chunk in chunks:
    for devices in (1, 2) if two else (1,):
      run = dataclasses.replace(st, evaluator=ev.variant(chunk=chunk, helper=two[0] if devices == 2 else None))
      run.val_score(learner, params)
      times = []
      for _ in range(reps):
        t0 = time.perf_counter()
        run.val_score(learner, params)  # host floats: the pass has finished when it returns
        times.append(time.perf_counter() - t0)
      out[f"chunk_{chunk}_devices_{devices}_s"] = float(np.median(times))
  out["tasks"] = len(st.scen.val) + sum(len(e) for e in st.scen.val_cold.values())
  return out


def workload(o) -> dict:
  """The suite: per core and for the whole machine, JAX against torch (module docstring)."""
  _config(o)  # its error before any child process starts
  cores = len(os.sched_getaffinity(0))
  res = {"dataset": o.dataset, "cores": cores}
  res["per_core"] = {"jax": _jax_pinned(o, 1), "torch": torch_loops(o, 1)}
  res["whole_machine"] = {"jax": jax_epoch(o), "torch": torch_loops(o, cores), "validation": validation_pass(o)}
  for scope in ("per_core", "whole_machine"):
    r = res[scope]
    variants = [v for v in ("padded", "buckets", "buckets_2dev") if v in r["jax"]]
    r["jax_variant"] = min(variants, key=lambda v: r["jax"][v]["s_per_task"])
    best = r["jax"][r["jax_variant"]]["s_per_task"]
    r["speedup_vs_melu_style"] = r["torch"]["melu_style"]["s_per_task"] / best
    r["speedup_vs_padded_loop"] = r["torch"]["padded"]["s_per_task"] / best
  res["speedup_vs_melu_style"] = res["per_core"]["speedup_vs_melu_style"]
  return res


TRACEME_FLAG = "--xla_cpu_enable_xprof_traceme=true"  # XLA's CPU runtime then records each op

# An XLA op's kind from its instruction name (the trace's event name, numeric suffix dropped).
_OP_KINDS = (
  ("matmul", ("ynn", "dot", "gemm", "convolution", "xnn", "onednn")),
  ("scatter", ("scatter",)),
  ("gather / slice", ("gather", "slice")),
  ("reduce", ("reduce",)),
  ("copy / transpose", ("copy", "transpose", "concatenate", "pad", "broadcast")),
)
_RUNTIME = ("$", "end: ", "shard_args")  # Python frames, end markers, JAX's argument sharding


def op_kind(name: str) -> str | None:
  """The kind of an XLA op event of a CPU trace (HLO names: lower case, `kind_fusion.12`); None
  for the runtime's own events (CamelCase C++ scopes, Python frames)."""
  if not name or name[0].isupper() or name.startswith(_RUNTIME) or "::" in name or " " in name:
    return None
  base = name.split(".")[0].lower()
  for kind, keys in _OP_KINDS:
    if any(k in base for k in keys):
      return kind
  return "element-wise fusions, other"


def op_seconds(events) -> dict:
  """Seconds of each op kind in perfetto "X" events, counting each op's own time (an op's
  nested ops are subtracted, per thread), and the number of op events."""
  by_thread: dict = {}
  for e in events:
    if e.get("ph") == "X" and op_kind(e.get("name", "")) is not None:
      by_thread.setdefault((e.get("pid"), e.get("tid")), []).append(e)
  out, n = {}, 0
  for evs in by_thread.values():
    evs.sort(key=lambda e: (e["ts"], -e.get("dur", 0)))
    stack = []  # [end, kind, own time]
    for e in evs + [None]:
      while stack and (e is None or e["ts"] >= stack[-1][0]):
        end, kind, own = stack.pop()
        out[kind] = out.get(kind, 0.0) + own / 1e6
      if e is None:
        break
      dur = float(e.get("dur", 0))
      if stack:
        stack[-1][2] -= dur
      stack.append([e["ts"] + dur, op_kind(e["name"]), dur])
      n += 1
  return {"seconds": out, "events": n}


def trace_steps(o) -> dict:
  """A profiler trace of the default run's training steps on the real tasks, built as the run
  builds them (`loop.make_steps`: its buckets, chunks and parts), and the time its XLA ops take
  by kind. `--trace_steps` rows of the epoch order are traced after as many untimed ones; the
  trace (TensorBoard and perfetto files) goes to `--trace_dir`. Needs XLA's per-op trace events
  (`TRACEME_FLAG` in XLA_FLAGS, which `bench_suites.run` adds)."""
  import glob
  import gzip

  import jax

  from metarec_jax import bench
  from metarec_jax.training.loop import _start_state, compile_steps, make_steps
  from metarec_jax.training.step import run_epoch

  st = _setup(o)
  c = st.config
  learner = st.make(c.learner)
  host = jax.tree.map(np.asarray, st.init_params(learner))  # the step donates its state: fresh copies

  def params():
    return jax.tree.map(jax.numpy.asarray, host)

  steps = make_steps(learner, st.data, c, len(st.scen.train), params())
  compile_steps(steps, params(), c)
  state = _start_state(steps, params(), c)
  _, order, schedule = steps.order_fn(jax.random.key(c.seed + 2))
  schedule = None if schedule is None else np.asarray(schedule)
  helper = steps.helper_args(order)
  n = min(o.trace_steps, order.shape[0] // 2)
  state, losses = run_epoch(steps.step_fn, state, steps.step_data, order, 0, n, schedule, helper)
  jax.block_until_ready(losses)
  os.makedirs(o.trace_dir, exist_ok=True)
  with jax.profiler.trace(o.trace_dir, create_perfetto_trace=True):
    t0 = time.perf_counter()
    state, losses = run_epoch(steps.step_fn, state, steps.step_data, order, n, 2 * n, schedule, helper)
    jax.block_until_ready(losses)
    wall = time.perf_counter() - t0
  files = sorted(
    glob.glob(os.path.join(o.trace_dir, "**", "perfetto_trace.json.gz"), recursive=True), key=os.path.getmtime
  )
  if not files:
    raise RuntimeError(f"the profiler wrote no perfetto trace under {o.trace_dir}")
  with gzip.open(files[-1]) as f:
    trace = json.load(f)
  ops = op_seconds(trace["traceEvents"] if isinstance(trace, dict) else trace)
  if not ops["events"]:
    raise RuntimeError(f"no XLA op events in {files[-1]}: run with XLA_FLAGS={TRACEME_FLAG}")
  datas = steps.step_data if isinstance(steps.step_data, list) else [steps.step_data]
  traced = schedule[n : 2 * n] if schedule is not None else np.zeros(n, int)
  flops = steps_flops(learner, lambda: _start_state(steps, params(), c), datas, order, traced)
  cores = len(os.sched_getaffinity(0))
  total = sum(ops["seconds"].values())
  ceiling = bench.gemm_ceiling_flops()
  matmul_s = ops["seconds"].get("matmul", 0.0)
  return {
    "trace": files[-1],
    "steps": int(n),
    "parts": getattr(steps.step_fn, "parts", 1),
    "devices": 2 if steps.helper is not None else 1,
    "cores": cores,
    "wall_s": wall,
    "s_per_task": wall / (n * c.meta_batch_size),
    "op_events": ops["events"],
    "op_seconds": dict(sorted(ops["seconds"].items(), key=lambda kv: -kv[1])),
    "op_share": {k: v / total for k, v in sorted(ops["seconds"].items(), key=lambda kv: -kv[1])},
    "cores_busy_share": total / (wall * cores),
    "flops": float(flops),
    "gflops": flops / wall / 1e9,
    "gemm_2048_gflops": ceiling / 1e9,
    "share_of_gemm_ceiling": flops / wall / ceiling,
    "matmul_gflops_while_running": flops / matmul_s / 1e9 if matmul_s else None,
  }
