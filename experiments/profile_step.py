"""Where a MAML meta-train step's time goes (MeLU shapes): matmul ceilings of this machine
and the step's parts timed one by one.

  python -m experiments.profile_step --out=experiments/results/profile_cpu.json
"""

from __future__ import annotations

import sys
import time

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
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from metarec_jax import bench
  from metarec_jax.learners import create_learner
  from metarec_jax.models import create_model
  from metarec_jax.train import device_data, featurize_episodes, make_epoch_order
  from metarec_jax.writers import write_json_atomic

  def timed(f, *args):
    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(FLAGS.reps):
      t0 = time.perf_counter()
      jax.block_until_ready(f(*args))
      ts.append(time.perf_counter() - t0)
    return float(np.median(ts))

  B, S = FLAGS.meta_batch_size, 90
  out = {"command": "python -m experiments.profile_step " + " ".join(sys.argv[1:]),
         "device": jax.devices()[0].device_kind, "meta_batch_size": B, "inner_steps": FLAGS.inner_steps}
  # Matmul ceilings: a large square matmul, the first layer with shared weights (the
  # pre-adaptation forward), and the same with per-task weights (after adaptation).
  out["gemm_2048_gflops"] = bench.gemm_ceiling_flops() / 1e9
  k = jax.random.key(0)
  h = jax.random.normal(k, (B, S, 256))
  w_shared = jax.random.normal(k, (256, 64))
  w_task = jax.random.normal(k, (B, 256, 64))
  flops = 2 * B * S * 256 * 64
  out["first_layer_shared_weights_gflops"] = flops / timed(jax.jit(lambda a, w: a @ w), h, w_shared) / 1e9
  out["first_layer_per_task_weights_gflops"] = flops / timed(
      jax.jit(lambda a, w: jnp.einsum("bsi,bio->bso", a, w)), h, w_task) / 1e9

  shapes = bench.melu_shapes(n_tasks=2048)
  model = create_model("content", fields=shapes.fields, embed_dim=32, hidden=(64, 64), output_bias=3.5)
  data = device_data(shapes.episodes, shapes.tables)
  learner = create_learner("maml", model, inner_steps=FLAGS.inner_steps, inner_lr=0.1)
  _, order = make_epoch_order(2048, B)(jax.random.key(2))
  ep = featurize_episodes(data["tables"], jax.tree.map(lambda a: a[order[0]], data["episodes"]))
  params = learner.init(jax.random.key(0), ep, None)

  def frozen_embeddings(p, e):
    inner = p["model"]["params"]
    p = {"model": {"params": {**inner, "embed": jax.lax.stop_gradient(inner["embed"])}}}
    return learner.meta_loss(p, e, None)[0]

  c = FLAGS.task_chunk

  def chunked_grad(p, e):
    chunks = jax.tree.map(lambda a: a.reshape((B // c, c) + a.shape[1:]), e)

    def body(acc, ch):
      return jax.tree.map(jnp.add, acc, jax.grad(lambda q: learner.meta_loss(q, ch, None)[0])(p)), None

    return jax.lax.scan(body, jax.tree.map(jnp.zeros_like, p), chunks)[0]

  tx = optax.adam(1e-3)
  opt_state = tx.init(params)
  parts = {
      "featurize_ms": (jax.jit(lambda d, o: featurize_episodes(
          d["tables"], jax.tree.map(lambda a: a[o[0]], d["episodes"]))), data, order),
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
  write_json_atomic(FLAGS.out, out)
  print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
  cli.run(main)
