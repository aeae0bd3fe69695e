"""End-to-end runs of `experiments.compare` and `experiments.aggregate` on a tiny synthetic config."""

import json
import os

from conftest import run_binary
from metarec_jax.data.tasks import SCENARIOS
import pytest

pytestmark = pytest.mark.slow  # end-to-end runs (binaries or train_and_evaluate) and real data


def test_compare_then_aggregate(tmp_path):
  out = str(tmp_path / "cmp")
  proc = run_binary(
    "experiments.compare",
    "--synthetic_users=120",
    "--synthetic_items=150",
    "--model=content",
    "--epochs=1",
    "--learners=fomaml,matching",
    "--base=",
    "--baselines=support_mean,bias_foldin",
    "--seeds=0,1",
    "--few_shot_ks=1,3",
    "--few_shot_scenarios=user_cold,item_cold",
    f"--out={out}",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.load(open(os.path.join(out, "results.json")))
  assert [(r["learner"], r["seed"]) for r in results["runs"]] == [
    ("fomaml", 0),
    ("matching", 0),
    ("fomaml", 1),
    ("matching", 1),
  ]
  summary = results["summary"]
  assert set(summary["results"]) == {"fomaml", "matching", "support_mean", "bias_foldin"}
  for name in summary["results"]:
    assert summary["results"][name]["user_cold"]["mae"][2] == 2  # mean, std, n over both seeds
    assert set(summary["few_shot"][name]) == {"1", "3"}
  table = open(os.path.join(out, "table.md")).read()
  assert "| fomaml | optimisation |" in table and "| matching | metric |" in table
  assert "| bias_foldin | baseline |" in table and "k=3" in table
  for r in results["runs"]:
    assert set(r["final"]["few_shot"]) == {"user_cold", "item_cold"}
    assert "few_shot_user_cold" not in r["final"] and r["timing"]["total_s"] > 0
  report = open(os.path.join(out, "report.md")).read()
  for name in summary["results"]:
    assert f"| {name} |" in report
  for fig in ("comparison", "few_shot", "learning_curves"):
    assert os.path.getsize(os.path.join(out, "figures", f"{fig}.png")) > 0

  proc = run_binary(
    "experiments.aggregate", f"--runs={out}/fomaml_seed*", "--labels=fo", "--metrics=mae", f"--out={tmp_path}/agg.md"
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  agg = json.load(open(tmp_path / "agg.json"))
  assert set(agg["fo"]) == {"fomaml", "support_mean", "bias_foldin"}
  assert set(agg["fo"]["fomaml"]) == set(SCENARIOS) | {"val"}
  assert agg["fo"]["fomaml"]["val"][2] == 2  # the best validation MAE of both seeds
  assert agg["fo"]["support_mean"]["val"] is None  # nothing selected
  # support_mean ran only with the first learner of each seed, so it has both seeds here too.
  assert agg["fo"]["support_mean"]["user_cold"]["mae"][2] == 2


def test_aggregate_rejects_an_empty_glob(tmp_path):
  proc = run_binary("experiments.aggregate", f"--runs={tmp_path}/nothing*")
  assert proc.returncode == 2 and "matches no run folder" in proc.stderr


def test_compare_tables_binary_runs_with_the_binary_metrics():
  from metarec_jax.report import BINARY_METRICS, build_table

  res = {"auc": 0.7, "logloss": 0.6, "precision@5": 0.5, "recall@5": 0.4, "ndcg@5": 0.8, "n_tasks": 3}
  runs = [
    {
      "learner": "maml",
      "seed": s,
      "wall_s": 1.0,
      "timing": {"training": {"maml": {"tasks_per_s": 10.0}}},
      "final": {
        "families": {"maml": "optimisation"},
        "few_shot": {},
        "results": {
          "maml": {
            "user_cold": {**res, "auc": 0.7 + 0.1 * s},
            "warm": {"n_tasks": 0},
            "item_cold": {"n_tasks": 0},
            "user_item_cold": {"n_tasks": 0},
          }
        },
      },
    }
    for s in (0, 1)
  ]
  md, summary = build_table(runs, ["maml"], [])
  assert set(summary["results"]["maml"]["user_cold"]) == set(BINARY_METRICS)
  mean, std, n = summary["results"]["maml"]["user_cold"]["auc"]
  assert (round(mean, 6), round(std, 6), n) == (0.75, 0.05, 2)
  assert "### auc (mean ± std over seeds)" in md and "### mae" not in md and "few-shot" not in md


def test_compare_with_a_base_says_so_and_stacked_prototypes_use_residual_levels(tmp_path):
  out = str(tmp_path / "stacked")
  proc = run_binary(
    "experiments.compare",
    "--synthetic_users=120",
    "--synthetic_items=150",
    "--model=content",
    "--epochs=2",
    "--learners=prototype",
    "--baselines=als_foldin,pooled",
    "--seeds=0",
    "--few_shot_ks=",
    "--base=als_foldin",
    "--base_folds=2",
    "--noreport",
    f"--out={out}",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  table = open(os.path.join(out, "table.md")).read()
  assert "predicts the residual of `als_foldin`" in table and "| prototype | metric |" in table
  res = json.load(open(os.path.join(out, "results.json")))["runs"][0]["final"]["results"]
  assert set(res) == {"prototype", "als_foldin", "pooled"}
  # The prototypes are built per residual level (the label levels less the middle one): with
  # the raw 1-5 levels every residual would fall outside them and the stack would be far off.
  for s in ("warm", "user_cold"):
    assert res["prototype"][s]["mae"] < 1.1 * res["als_foldin"][s]["mae"], (s, res)


def test_compare_jobs_runs_in_pinned_workers_with_the_same_results(tmp_path):
  """--jobs=2: the runs go to two spawned worker processes (one core each): the same runs in the
  same order, with the metrics of one after another in this process up to rounding (a worker
  has one XLA thread; this short run does not amplify it). More jobs than cores: one error."""
  from metarec_jax.compare import compare
  from metarec_jax.config import resolve

  base = resolve("smoke", {"model": "content", "base": "", "epochs": 1, "baselines": ("support_mean",)})
  outs = {}
  for jobs in (1, 2):
    compare(base, ["fomaml"], [0, 1], str(tmp_path / f"j{jobs}"), write_report=False, jobs=jobs)
    outs[jobs] = json.load(open(tmp_path / f"j{jobs}" / "results.json"))["runs"]
  assert [(r["learner"], r["seed"]) for r in outs[2]] == [("fomaml", 0), ("fomaml", 1)]
  for a, b in zip(outs[1], outs[2]):
    for name in a["final"]["results"]:
      for s in SCENARIOS:
        assert b["final"]["results"][name][s]["mae"] == pytest.approx(a["final"]["results"][name][s]["mae"], abs=1e-3)
  seed_gap = abs(
    outs[2][0]["final"]["results"]["fomaml"]["user_cold"]["mae"]
    - outs[2][1]["final"]["results"]["fomaml"]["user_cold"]["mae"]
  )
  assert seed_gap > 2e-3  # the seeds' runs differ by more than the tolerance: a swapped run would fail
  with pytest.raises(ValueError, match=r"jobs=\d+ but this process may use \d+ core"):
    compare(base, ["fomaml"], [0], str(tmp_path / "many"), write_report=False, jobs=len(os.sched_getaffinity(0)) + 1)
