"""The benchmark binary and its pieces: MeLU shapes, the torch reference's meta-gradient,
the per-task JAX loop, and the JSON the binary writes."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import run_binary
from metarec_jax import bench
from metarec_jax.learners import create_learner
from metarec_jax.models import create_model
from metarec_jax.training.state import create_train_state
from metarec_jax.data.episodes import device_data, featurize_episodes
from metarec_jax.training.step import make_epoch_order, make_train_step


def benchmark_json(tmp_path, *flags) -> dict:
  """The benchmark binary's JSON for `flags` (it must exit 0)."""
  out = tmp_path / "bench.json"
  done = run_binary("experiments.benchmark", *flags, f"--out={out}")
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(out.read_text())


@pytest.fixture(scope="module")
def melu():
  shapes = bench.melu_shapes(n_tasks=16, n_users=50, n_items=40, support=20, query=5, min_ratings=8)
  model = create_model("content", fields=shapes.fields, embed_dim=4, hidden=(8, 8), output_bias=3.5)
  data = device_data(shapes.episodes, shapes.tables)
  return shapes, model, data


def test_melu_shapes_are_valid_padded_episodes(melu):
  shapes, _, _ = melu
  ep = shapes.episodes
  for spec in shapes.fields:
    t = shapes.tables[spec.name]
    assert t.max() < spec.vocab_size and t.min() >= (-1 if spec.kind == "multihot" else 0)
    if spec.kind == "multihot":
      assert ((t >= 0).sum(1) >= 1).all()
  n = ep.support_mask.sum(1)
  assert n.min() >= 3 and n.max() <= 20
  assert (ep.support_rating[~ep.support_mask] == 0).all()
  assert set(np.unique(ep.query_rating)) <= {1.0, 2.0, 3.0, 4.0, 5.0}


@pytest.mark.slow
@pytest.mark.parametrize("adapt,first_order,steps", [("head", False, 2), ("all", False, 1), ("head", True, 1)])
def test_torch_reference_meta_gradient_equals_ours(melu, adapt, first_order, steps):
  tr = pytest.importorskip("metarec_jax.torch_reference")
  if not tr.available():
    pytest.skip("torch is not installed (pip install -e .[bench])")
  shapes, model, data = melu
  learner = create_learner("maml", model, inner_lr=0.3, inner_steps=steps, adapt=adapt, first_order=first_order)
  ep = featurize_episodes(data["tables"], jax.tree.map(lambda a: a[:3], data["episodes"]))
  params = learner.init(jax.random.key(0), ep, None)
  g = jax.grad(lambda p: learner.meta_loss(p, ep, None)[0])(params)

  def reference(inner_lr):
    return tr.TorchMAML(
      model,
      jax.tree.map(np.asarray, params["model"]),
      shapes.tables,
      shapes.episodes.arrays(),
      inner_lr=inner_lr,
      inner_steps=steps,
      first_order=first_order,
      adapt=adapt,
    )

  diff, scale = tr.max_grad_diff(reference(0.3).meta_grads(np.arange(3)), g["model"])
  assert scale > 1e-3
  assert diff <= 1e-5 * max(1.0, scale)
  # The check can fail: a different inner learning rate gives a different meta-gradient.
  assert tr.max_grad_diff(reference(0.1).meta_grads(np.arange(3)), g["model"])[0] > 1e-4


@pytest.mark.slow
def test_torch_reference_unpadded_and_linear_has_our_meta_gradient(melu):
  # MeLU's way (each task's support cut to its own ratings) on the default content model (--linear)
  tr = pytest.importorskip("metarec_jax.torch_reference")
  if not tr.available():
    pytest.skip("torch is not installed (pip install -e .[bench])")
  shapes, _, data = melu
  model = create_model("content", fields=shapes.fields, embed_dim=4, hidden=(8,), output_bias=3.5, linear=True)
  learner = create_learner("maml", model, inner_lr=0.3, inner_steps=2, adapt="head")
  ep = featurize_episodes(data["tables"], jax.tree.map(lambda a: a[:4], data["episodes"]))
  params = learner.init(jax.random.key(0), ep, None)
  g = jax.jit(jax.grad(lambda p: learner.meta_loss(p, ep, None)[0]))(params)
  kw = dict(inner_lr=0.3, inner_steps=2, first_order=False, adapt="head")
  host = jax.tree.map(np.asarray, params["model"])
  for unpadded in (False, True):
    ref = tr.TorchMAML(model, host, shapes.tables, shapes.episodes.arrays(), unpadded=unpadded, **kw)
    diff, scale = tr.max_grad_diff(ref.meta_grads(np.arange(4)), g["model"])
    assert scale > 1e-3 and diff <= 1e-5 * max(1.0, scale), (unpadded, diff)


@pytest.mark.slow
def test_jax_loop_step_equals_vmapped_step(melu):
  shapes, model, data = melu
  learner = create_learner("maml", model, inner_lr=0.3, inner_steps=1)
  ex = featurize_episodes(data["tables"], jax.tree.map(lambda a: a[:1], data["episodes"]))
  params = learner.init(jax.random.key(0), ex, None)
  _, order = make_epoch_order(16, 4)(jax.random.key(1))
  fresh = lambda: create_train_state(jax.random.key(2), jax.tree.map(jnp.copy, params), optax.adam(1e-2))  # noqa: E731
  vm = make_train_step(learner)(fresh(), data, order)[0]  # donates its state
  loop = bench.make_jax_loop_step(learner, data["tables"])
  lp = loop(fresh(), data, order, [jnp.int32(t) for t in range(4)])
  assert int(lp.step) == int(vm.step) == 1
  for a, b in zip(jax.tree.leaves(lp.params), jax.tree.leaves(vm.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_benchmark_binary_writes_timings_ratios_and_one_compile(tmp_path):
  res = benchmark_json(
    tmp_path,
    "--learners=maml,prototype",
    "--meta_batch_sizes=4",
    "--inner_steps=1",
    "--steps=3",
    "--warmup=0",
    "--baseline_steps=1",
    "--n_tasks=32",
    "--nocached_compile",
  )
  assert res["machine"]["platform"] == "cpu" and res["machine"]["gemm_2048_flops"] > 0
  maml, proto = res["configs"]
  for r in (maml, proto):
    assert r["compiles"] == 1
    assert r["step"]["n"] == 3 and r["step"]["p10_s"] <= r["step"]["median_s"] <= r["step"]["p90_s"]
    assert r["tasks_per_s"] == pytest.approx(4 / r["step"]["median_s"])
    assert r["flops_per_step"] > 0 and r["achieved_flops"] > 0
    assert r["peak_host_mb"] > 0 and r["compile_s"] > 0
    assert r["speedup_vs_jax_loop"] == pytest.approx(r["jax_loop"]["step"]["median_s"] / r["step"]["median_s"])
  assert proto["torch_loop"]["skipped"].startswith(("no torch reference", "torch is not installed"))
  if "step" in maml["torch_loop"]:
    assert maml["torch_loop"]["grad_check"]["ok"]
    assert maml["speedup_vs_torch_loop"] > 0


@pytest.mark.slow
def test_benchmark_rejects_a_meta_batch_that_does_not_divide_the_devices(tmp_path):
  done = run_binary(
    "experiments.benchmark",
    "--learners=maml",
    "--meta_batch_sizes=6",
    "--devices=4",
    "--steps=1",
    "--baselines=",
    "--n_tasks=32",
    f"--out={tmp_path / 'x.json'}",
  )
  assert done.returncode == 2
  assert "meta_batch_size=6 does not divide by the 4 devices" in done.stderr
  assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_growth_suite_reports_each_phase(tmp_path):
  rows = benchmark_json(
    tmp_path, "--suite=growth", "--growth_users=200,400", "--growth_items=150", "--growth_batch=16"
  )["growth"]
  assert [r["n_users"] for r in rows] == [200, 400]
  for r in rows:
    for phase in ("generate", "episodes", "epoch"):
      assert r[phase]["s"] > 0 and r[phase]["peak_host_mb"] > 0
    assert r["epoch"]["finite"] and r["epoch"]["steps"] == -(-r["n_train_tasks"] // 16)
  assert rows[1]["n_ratings"] > rows[0]["n_ratings"]


@pytest.mark.slow
def test_workload_suite_on_real_tasks_checks_gradients_and_labels_each_scope(tmp_path, shared_data_dir):
  """ml-100k, 1 inner step, 2 buckets, 1 timed torch meta-batch: the shape of the JSON, one compile
  per bucket (per part on two devices), the gradient check, and the ratio it reports."""
  res = benchmark_json(
    tmp_path,
    "--suite=workload",
    "--dataset=ml-100k",
    f"--data_dir={shared_data_dir}",
    "--workload_batches=1",
    "--workload_inner_steps=1",
    "--length_buckets=2",
  )
  w = res["workload"]
  assert res["speedup_vs_melu_style"] == w["per_core"]["speedup_vs_melu_style"]
  for scope, threads in (("per_core", 1), ("whole_machine", w["cores"])):
    r = w[scope]
    jx, torch = r["jax"], r["torch"]
    assert torch["threads"] == threads and torch["batches"] == 1
    assert torch["grad_check"]["melu_style"]["ok"] and torch["grad_check"]["padded"]["ok"]
    assert (jx["learner"], jx["inner_steps"], jx["adapt"], jx["meta_batch_size"]) == ("maml", 1, "head", 32)
    assert len(jx["bucket_sizes"]) == 2 and jx["padded"]["compiles"] == 1 and jx["buckets"]["compiles"] == 2
    assert 0 < jx["buckets"]["share_of_gemm_ceiling"] < 1
    best = jx[r["jax_variant"]]["s_per_task"]
    assert best == min(jx[v]["s_per_task"] for v in ("padded", "buckets", "buckets_2dev") if v in jx)
    assert r["speedup_vs_melu_style"] == pytest.approx(torch["melu_style"]["s_per_task"] / best)
  two = w["whole_machine"]["jax"]["buckets_2dev"]  # the tests' fake devices give the run a second one
  # one trace per bucket: the two parts are one program (PartStep)
  assert two["devices"] == 2 and two["compiles"] == 2 and two["steps"] == w["whole_machine"]["jax"]["buckets"]["steps"]
  val = w["whole_machine"]["validation"]
  assert val["tasks"] > 0 and all(val[f"chunk_{c}_devices_{d}_s"] > 0 for c in (128, 16) for d in (1, 2))


def test_workload_suite_refuses_a_dataset_whose_default_run_the_torch_reference_cannot_run(tmp_path):
  done = run_binary("experiments.benchmark", "--suite=workload", "--dataset=synthetic", f"--out={tmp_path / 'w.json'}")
  assert done.returncode == 2 and "Traceback" not in done.stderr
  assert "--dataset=synthetic's default run is --learner=maml --model=cf --base=als_foldin" in done.stderr
  assert not (tmp_path / "w.json").exists()


def test_trace_op_seconds_count_each_ops_own_time_by_kind():
  from metarec_jax.bench_workload import op_kind, op_seconds

  assert op_kind("ynn_fusion.3") == op_kind("dot_general") == "matmul"
  assert op_kind("wrapped_scatter.1") == "scatter" and op_kind("copy_bitcast_fusion") == "copy / transpose"
  assert op_kind("add_select_fusion.7") == "element-wise fusions, other"
  assert all(
    op_kind(n) is None
    for n in ("ThunkExecutor::Execute", "PjitFunction(f)", "$api.py:1 f", "end: dot", "Wait for usage holds")
  )
  ev = lambda name, ts, dur, tid=1: {"ph": "X", "name": name, "ts": ts, "dur": dur, "pid": 1, "tid": tid}  # noqa: E731
  events = [
    ev("while.1", 0, 100),  # holds a matmul (30) and a fusion (20): its own time is 50
    ev("dot.2", 10, 30),
    ev("add_fusion", 50, 20),
    ev("dot.3", 0, 40, tid=2),  # another thread, overlapping in time: counted too
    ev("ThunkExecutor::Execute", 0, 500),  # the runtime: not an op, and no parent of one
    {"ph": "i", "name": "dot.9", "ts": 5},  # not a complete event
  ]
  out = op_seconds(events)
  assert out["events"] == 4
  assert out["seconds"] == pytest.approx({"matmul": 70e-6, "element-wise fusions, other": 70e-6})
