"""Benchmark pieces reusable from other JAX code: MeLU-shaped synthetic shapes, a timed
step loop, XLA's cost analysis, memory readings, and the per-task jitted loop that
isolates what vmap adds.

MeLU-shaped: MeLU's eight ML-1M feature fields with its vocabulary sizes (gender 2, age 7,
occupation 21, zip 3402; rate 6, genre 25, director 2186, actor 8030), multi-hot widths of
the real metadata (genre <= 7, director <= 12, actor 4), 32-d embeddings and a 64-64 MLP;
tasks of 13-100 ratings, 10 of them the query, padded to a support of 90.
"""

from __future__ import annotations

import dataclasses
import resource
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from metarec_jax.data.schema import FieldSpec
from metarec_jax.data.tasks import Episodes
from metarec_jax.data.episodes import featurize_episodes

MELU_FIELDS = (
  FieldSpec("user/gender", "categorical", 2),
  FieldSpec("user/age", "categorical", 7),
  FieldSpec("user/occupation", "categorical", 21),
  FieldSpec("user/zip", "categorical", 3402),
  FieldSpec("item/rate", "categorical", 6),
  FieldSpec("item/genre", "multihot", 25),
  FieldSpec("item/director", "multihot", 2186),
  FieldSpec("item/actor", "multihot", 8030),
)
# Multi-hot (max width, [min, max] ids per item) from MeLU's movies_extrainfos.dat.
_MULTIHOT = {"item/genre": (7, 1, 4), "item/director": (12, 1, 2), "item/actor": (4, 4, 4)}


@dataclasses.dataclass
class Shapes:
  fields: tuple[FieldSpec, ...]
  tables: dict[str, np.ndarray]
  episodes: Episodes


def melu_shapes(
  *,
  n_tasks: int = 2048,
  n_users: int = 6040,
  n_items: int = 3881,
  support: int = 90,
  query: int = 10,
  min_ratings: int = 13,
  seed: int = 0,
) -> Shapes:
  """Random ids and ratings in MeLU's shapes (the values do not matter for speed)."""
  rng = np.random.default_rng(seed)
  tables = {}
  for spec in MELU_FIELDS:
    n = n_users if spec.name.startswith("user/") else n_items
    if spec.kind == "categorical":
      tables[spec.name] = rng.integers(0, spec.vocab_size, n).astype(np.int32)
    else:
      width, lo, hi = _MULTIHOT[spec.name]
      ids = rng.integers(0, spec.vocab_size, (n, width)).astype(np.int32)
      count = rng.integers(lo, hi + 1, n)
      tables[spec.name] = np.where(np.arange(width)[None, :] < count[:, None], ids, -1).astype(np.int32)
  n_support = rng.integers(min_ratings - query, support + 1, n_tasks)
  smask = np.arange(support)[None, :] < n_support[:, None]
  ep = Episodes(
    user=rng.integers(0, n_users, n_tasks).astype(np.int32),
    support_item=np.where(smask, rng.integers(0, n_items, (n_tasks, support)), 0).astype(np.int32),
    support_rating=np.where(smask, rng.integers(1, 6, (n_tasks, support)), 0).astype(np.float32),
    support_mask=smask,
    query_item=rng.integers(0, n_items, (n_tasks, query)).astype(np.int32),
    query_rating=rng.integers(1, 6, (n_tasks, query)).astype(np.float32),
    query_mask=np.ones((n_tasks, query), bool),
  )
  return Shapes(MELU_FIELDS, tables, ep)


def peak_host_mb() -> float:
  """Peak resident memory of this process so far (Linux reports KiB): a running maximum, so
  in a multi-configuration run it is the peak up to and including that configuration."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def device_memory() -> dict[str, float] | None:
  """Device memory in MB where the backend reports it (GPU/TPU), else None; `peak_mb` is
  the running maximum of the process, like `peak_host_mb`."""
  stats = jax.local_devices()[0].memory_stats()
  if not stats:
    return None
  names = {"peak_bytes_in_use": "peak_mb", "bytes_in_use": "in_use_mb", "bytes_limit": "limit_mb"}
  return {names[k]: v / 2**20 for k, v in stats.items() if k in names}


def cost_flops(jitted: Callable, *args) -> float | None:
  """FLOPs of one call from XLA's cost analysis of the compiled executable."""
  cost = jitted.lower(*args).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


def gemm_ceiling_flops(n: int = 2048, reps: int = 5) -> float:
  """Best FLOP/s of an n x n float32 matmul: what this machine's dense math actually reaches."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  jax.block_until_ready(f(a))
  best = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(f(a))
    best = min(best, time.perf_counter() - t0)
  return 2.0 * n**3 / best


def summarise(times: list[float]) -> dict[str, float]:
  q = np.percentile(times, [10, 50, 90])
  return {
    "median_s": float(q[1]),
    "p10_s": float(q[0]),
    "p90_s": float(q[2]),
    "mean_s": float(statistics.fmean(times)),
    "std_s": float(statistics.pstdev(times)),
    "n": len(times),
  }


def time_loop(call: Callable[[Any], Any], carry, *, warmup: int, steps: int) -> tuple[Any, float, list[float]]:
  """carry = call(carry) repeatedly, blocking on each result.

  Returns (carry, seconds of the first call (trace + compile + run), per-step seconds of
  `steps` timed calls after `warmup` more).
  """
  t0 = time.perf_counter()
  carry = jax.block_until_ready(call(carry))
  first = time.perf_counter() - t0
  for _ in range(warmup):
    carry = jax.block_until_ready(call(carry))
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    carry = jax.block_until_ready(call(carry))
    times.append(time.perf_counter() - t0)
  return carry, first, times


def make_jax_loop_step(learner, tables: dict) -> Callable:
  """The same meta-update, one task at a time: a jitted per-task gradient called from a
  Python loop, then one jitted optimiser update. No vmap; everything else is ours.

  Returns step(state, data, order, task_indices) -> state, where task_indices is a list of
  device scalars 0..B-1 (made once, so the loop copies nothing from the host).
  """

  @jax.jit
  def gather(state, data, order):
    idx = order[state.step % order.shape[0]]
    return jax.tree.map(lambda a: a[idx], data["episodes"])

  @jax.jit
  def task_grad(state, acc, batch, t):
    one = jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, t, 1), batch)
    episode = featurize_episodes(tables, one)
    key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), t)
    g = jax.grad(lambda p: learner.meta_loss(p, episode, key)[0])(state.params)
    return jax.tree.map(jnp.add, acc, g)

  @jax.jit
  def update(state, acc, order):
    grads = jax.tree.map(lambda g: g / order.shape[1], acc)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = jax.tree.map(jnp.add, state.params, updates)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state)

  def step(state, data, order, task_indices):
    batch = gather(state, data, order)
    acc = jax.tree.map(jnp.zeros_like, state.params)
    for t in task_indices:
      acc = task_grad(state, acc, batch, t)
    return update(state, acc, order)

  return step


def profile_step(
  *, meta_batch_size: int = 32, inner_steps: int = 1, task_chunk: int = 4, reps: int = 30, command: str = ""
) -> dict:
  """Where a MAML meta-train step's time goes (MeLU shapes): this machine's matmul ceilings and
  the step's parts timed one by one (median of `reps`), in ms and GFLOP/s."""
  import optax

  from metarec_jax.data.episodes import device_data, featurize_episodes
  from metarec_jax.learners import create_learner
  from metarec_jax.models import create_model
  from metarec_jax.training.step import make_epoch_order

  def timed(f, *args):
    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(reps):
      t0 = time.perf_counter()
      jax.block_until_ready(f(*args))
      ts.append(time.perf_counter() - t0)
    return float(np.median(ts))

  B, S = meta_batch_size, 90
  out = {"command": command, "device": jax.devices()[0].device_kind, "meta_batch_size": B, "inner_steps": inner_steps}
  # Matmul ceilings: a large square matmul, the first layer with shared weights (the
  # pre-adaptation forward), and the same with per-task weights (after adaptation).
  out["gemm_2048_gflops"] = gemm_ceiling_flops() / 1e9
  k = jax.random.key(0)
  h = jax.random.normal(k, (B, S, 256))
  w_shared = jax.random.normal(k, (256, 64))
  w_task = jax.random.normal(k, (B, 256, 64))
  flops = 2 * B * S * 256 * 64
  out["first_layer_shared_weights_gflops"] = flops / timed(jax.jit(lambda a, w: a @ w), h, w_shared) / 1e9
  out["first_layer_per_task_weights_gflops"] = (
    flops / timed(jax.jit(lambda a, w: jnp.einsum("bsi,bio->bso", a, w)), h, w_task) / 1e9
  )

  shapes = melu_shapes(n_tasks=2048)
  model = create_model("content", fields=shapes.fields, embed_dim=32, hidden=(64, 64), output_bias=3.5)
  data = device_data(shapes.episodes, shapes.tables)
  learner = create_learner("maml", model, inner_steps=inner_steps, inner_lr=0.1)
  _, order = make_epoch_order(2048, B)(jax.random.key(2))
  ep = featurize_episodes(data["tables"], jax.tree.map(lambda a: a[order[0]], data["episodes"]))
  params = learner.init(jax.random.key(0), ep, None)

  def frozen_embeddings(p, e):
    inner = p["model"]["params"]
    p = {"model": {"params": {**inner, "embed": jax.lax.stop_gradient(inner["embed"])}}}
    return learner.meta_loss(p, e, None)[0]

  c = task_chunk

  def chunked_grad(p, e):
    chunks = jax.tree.map(lambda a: a.reshape((B // c, c) + a.shape[1:]), e)

    def body(acc, ch):
      return jax.tree.map(jnp.add, acc, jax.grad(lambda q: learner.meta_loss(q, ch, None)[0])(p)), None

    return jax.lax.scan(body, jax.tree.map(jnp.zeros_like, p), chunks)[0]

  tx = optax.adam(1e-3)
  opt_state = tx.init(params)
  parts = {
    "featurize_ms": (
      jax.jit(lambda d, o: featurize_episodes(d["tables"], jax.tree.map(lambda a: a[o[0]], d["episodes"]))),
      data,
      order,
    ),
    "meta_loss_forward_ms": (jax.jit(lambda p, e: learner.meta_loss(p, e, None)[0]), params, ep),
    "meta_gradient_ms": (jax.jit(jax.grad(lambda p, e: learner.meta_loss(p, e, None)[0])), params, ep),
    "meta_gradient_frozen_embeddings_ms": (jax.jit(jax.grad(frozen_embeddings)), params, ep),
    f"meta_gradient_chunks_of_{c}_ms": (jax.jit(chunked_grad), params, ep),
    "adam_update_ms": (jax.jit(lambda g, s, p: tx.update(g, s, p)), params, opt_state, params),
  }
  for name, (f, *args) in parts.items():
    out[name] = 1e3 * timed(f, *args)
    print(f"{name}: {out[name]:.2f}", flush=True)
  for name in ("gemm_2048_gflops", "first_layer_shared_weights_gflops", "first_layer_per_task_weights_gflops"):
    print(f"{name}: {out[name]:.0f}")
  return out
