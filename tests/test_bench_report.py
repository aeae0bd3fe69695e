"""The markdown tables made from benchmark JSON."""

from metarec_jax import bench_report


def _config(name, b, k, tps, **extra):
  return {
    "learner": name,
    "meta_batch_size": b,
    "inner_steps": k,
    "adapt": "head" if k else None,
    "task_chunk": 0,
    "step": {"median_s": b / tps, "p10_s": b / tps * 0.9, "p90_s": b / tps * 1.1},
    "tasks_per_s": tps,
    "compile_s": 2.0,
    "flops_per_step": 1e9,
    "achieved_flops": 1e9 * tps / b,
    "compiles": 1,
    **extra,
  }


def test_scaling_table_is_learner_by_batch():
  res = {
    "configs": [
      _config("maml", 8, 1, 100.0),
      _config("maml", 32, 1, 300.0),
      _config("prototype", 8, None, 50.0),
      _config("maml", 8, 5, 20.0),
    ]
  }
  lines = bench_report.scaling_table(res).splitlines()
  assert lines[0] == "| learner | K | B=8 | B=32 |"
  assert lines[2] == "| maml | 1 | 100 | 300 |"
  assert lines[3] == "| maml | 5 | 20 | – |"
  assert lines[4] == "| prototype | – | 50 | – |"


def test_config_table_shows_ratios_and_share():
  res = {
    "command": "python -m experiments.benchmark",
    "machine": {"device_kind": "cpu", "platform": "cpu", "cpu_count": 2, "jax": "0", "gemm_2048_flops": 2e11},
    "configs": [
      _config("maml", 32, 1, 1600.0, speedup_vs_torch_loop=5.04, speedup_vs_jax_loop=1.26, share_of_gemm_ceiling=0.25)
    ],
  }
  row = bench_report.config_table(res).splitlines()[-1]
  assert "| 20.00 (18.00–22.00) | 1600 |" in row
  assert "| 5.0× | 1.3× | 1 |" in row and "| 25 |" in row
