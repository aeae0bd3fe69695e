"""Figures and the report from small synthetic results files."""

import json
import os

import numpy as np
import pytest

from conftest import run_binary
from metarec_jax import plots, report
from metarec_jax.data.tasks import SCENARIOS

LEARNERS = {"maml": "optimisation", "neural_process": "model", "support_mean": "baseline"}
KS = (1, 3, 5)


def _metrics(rng):
  return {
    "mae": float(rng.uniform(0.7, 0.9)),
    "rmse": float(rng.uniform(0.9, 1.1)),
    "ndcg@3": float(rng.uniform(0.6, 0.8)),
    "ndcg@5": float(rng.uniform(0.6, 0.8)),
    "n_tasks": 10,
  }


def _final(seed):
  rng = np.random.default_rng(seed)
  few = {s: {n: {str(k): _metrics(rng) for k in KS} for n in LEARNERS} for s in ("user_cold", "item_cold")}
  return {
    "dataset": {
      "name": "toy",
      "n_users": 5,
      "n_items": 7,
      "n_ratings": 30,
      "n_train_tasks": 3,
      "n_val_tasks": 1,
      "n_test_tasks": {s: 1 for s in SCENARIOS},
    },
    "learner": "maml",
    "families": LEARNERS,
    "results": {n: {s: _metrics(rng) for s in SCENARIOS} for n in LEARNERS},
    "few_shot": few,
  }


def _write_compare(folder, seeds=(0, 1, 2)):
  os.makedirs(folder, exist_ok=True)
  runs = []
  for seed in seeds:
    for n in ("maml", "neural_process"):
      runs.append({"learner": n, "seed": seed, "final": _final(seed * 10 + len(n)), "wall_s": 1.0})
      run_dir = os.path.join(folder, f"{n}_seed{seed}")
      os.makedirs(run_dir, exist_ok=True)
      with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        for ep in range(1, 4):
          f.write(
            json.dumps({"epoch": ep, "learner": n, "train/loss": 1.0 / ep + seed, "val/mae": 0.8 - 0.01 * ep}) + "\n"
          )
  with open(os.path.join(folder, "results.json"), "w") as f:
    json.dump({"command": "python -m experiments.compare --out=x", "runs": runs, "summary": {}}, f)
  return runs


def _write_bench(path):
  configs = [
    {
      "learner": l,
      "meta_batch_size": b,
      "inner_steps": 1,
      "adapt": "head",
      "task_chunk": 0,
      "tasks_per_s": 100.0 * b**0.5,
    }
    for l in ("maml", "fomaml")
    for b in (8, 32, 128)
  ]
  configs[1]["torch_loop"] = {"step": {"median_s": 0.128}}
  with open(path, "w") as f:
    json.dump({"command": "python -m experiments.benchmark", "machine": {"device_kind": "cpu"}, "configs": configs}, f)


def test_summaries_are_the_mean_and_std_over_seeds(tmp_path):
  runs = _write_compare(str(tmp_path / "cmp"))
  res = plots.load_results([str(tmp_path / "cmp")])
  assert res.dataset == "toy" and len(res.runs) == 6 and len(res.curves) == 6
  vals = [r["final"]["results"]["maml"]["warm"]["mae"] for r in runs]
  mean, std, n = plots.scenario_stats(res, "mae")["maml"]["warm"]
  assert n == 6 and mean == pytest.approx(np.mean(vals)) and std == pytest.approx(np.std(vals))
  few = plots.few_shot_data(res)
  assert set(few) == {"user_cold", "item_cold"} and sorted(few["item_cold"]["maml"]) == list(KS)
  assert [m["mae"] for m in few["user_cold"]["maml"][3]] == [
    r["final"]["few_shot"]["user_cold"]["maml"]["3"]["mae"] for r in runs
  ]
  # Baselines last in the family order: optimisation before model before metric.
  assert plots.learner_order(res) == ["support_mean", "maml", "neural_process"]


@pytest.mark.parametrize("name", list(plots.FIGURES))
def test_each_figure_writes_a_non_empty_png(tmp_path, name):
  _write_compare(str(tmp_path / "cmp"))
  _write_bench(str(tmp_path / "bench.json"))
  res = plots.load_results([str(tmp_path / "cmp"), str(tmp_path / "bench.json")])
  assert plots.available(res) == list(plots.FIGURES)
  paths = plots.save_figure(plots.FIGURES[name](res), str(tmp_path / "out" / name))
  assert [os.path.splitext(p)[1] for p in paths] == [".png", ".svg"]
  with open(paths[0], "rb") as f:
    head = f.read(8)
  assert head == b"\x89PNG\r\n\x1a\n" and os.path.getsize(paths[0]) > 5000
  assert not [f for f in os.listdir(tmp_path / "out") if f.startswith(".tmp")]


def test_report_lists_every_learner_and_scenario(tmp_path):
  folder = str(tmp_path / "cmp")
  _write_compare(folder)
  path = report.write_report(folder, "| table |", "python -m experiments.compare --out=cmp", 12.0)
  text = open(path).read()
  for n, fam in LEARNERS.items():
    assert f"| {n} | {fam} |" in text
  for s in SCENARIOS:
    assert f"{s} 1" in text
  assert "python -m experiments.compare --out=cmp" in text and "| table |" in text
  for fig in ("comparison", "few_shot", "learning_curves"):
    assert f"](figures/{fig}.png)" in text and os.path.getsize(os.path.join(folder, "figures", f"{fig}.png")) > 0


@pytest.mark.slow
def test_plot_binary_draws_every_available_figure(tmp_path):
  _write_compare(str(tmp_path / "cmp"))
  _write_bench(str(tmp_path / "bench.json"))
  proc = run_binary(
    "experiments.plot", f"--results={tmp_path}/cmp,{tmp_path}/bench.json", f"--out={tmp_path}/figs", "--formats=png"
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert sorted(os.listdir(tmp_path / "figs")) == sorted(f"{n}.png" for n in plots.FIGURES)


@pytest.mark.parametrize(
  "content, message",
  [
    ("{not json", "not valid JSON"),
    ('{"runs": [{"learner": "maml", "seed": 0}]}', "field runs[0].'final' is missing"),
    (
      '{"runs": [{"learner": "maml", "seed": 0, "final": {"results": {"maml": {"cold": {}}}}}]}',
      "'cold' is not a scenario",
    ),
    ('{"configs": [{"learner": "maml", "meta_batch_size": 8}]}', "field configs[0].'tasks_per_s' is missing"),
    ('{"hello": 1}', "not a results file"),
  ],
)
def test_malformed_results_get_one_clear_error(tmp_path, content, message):
  path = tmp_path / "results.json"
  path.write_text(content)
  with pytest.raises(plots.ResultsError, match=None) as err:
    plots.load_results([str(path)])
  assert str(path) in str(err.value) and message in str(err.value)


@pytest.mark.slow
def test_plot_binary_exits_2_on_a_malformed_file(tmp_path):
  bad = tmp_path / "run" / "metrics.jsonl"
  bad.parent.mkdir()
  bad.write_text('{"epoch": 1, "train/loss": 1.0}\n{"loss": 2}\n')
  proc = run_binary("experiments.plot", f"--results={tmp_path}/run", f"--out={tmp_path}/figs")
  assert proc.returncode == 2
  assert (
    proc.stderr.strip().splitlines()[-1]
    == f"error: {bad}, line 2: field 'epoch' is missing; expected one record per epoch"
  )
  proc = run_binary("experiments.plot", f"--results={tmp_path}/nothing", f"--out={tmp_path}/figs")
  assert proc.returncode == 2 and "no such file" in proc.stderr
