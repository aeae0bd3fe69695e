"""End-to-end runs of `python -m experiments.train`."""

import json
import os

import pytest

from conftest import TINY_RUN, run_binary
from metarec_jax.data.tasks import SCENARIOS

pytestmark = pytest.mark.slow  # end-to-end runs (binaries or train_and_evaluate) and real data

TINY = [
  "--dataset=synthetic",
  "--model=content",
  "--base=",
  "--synthetic_users=120",
  "--synthetic_items=150",
  "--epochs=2",
  "--meta_batch_size=8",
  "--hidden=16",
  "--embed_dim=8",
]


def _check_outputs(workdir, learner, baselines, epochs):
  config = json.load(open(os.path.join(workdir, "config.json")))
  assert config["learner"] == learner and config["epochs"] == epochs
  for key in ("inner_lr", "inner_steps", "outer_lr", "meta_batch_size", "adapt", "first_order", "seed"):
    assert key in config
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  mine = [l for l in lines if l["learner"] == learner]
  assert [l["epoch"] for l in mine] == list(range(1, len(mine) + 1)) and 1 <= len(mine) <= epochs
  for key in ("train/loss", "val/mae", "val/rmse", "val/ndcg@3", "time/epoch_s", "step"):
    assert key in mine[0]
  final = json.load(open(os.path.join(workdir, "final_metrics.json")))
  assert set(final["results"]) == {learner, *baselines}
  for name, res in final["results"].items():
    assert set(res) == set(SCENARIOS)
    for scenario, m in res.items():
      assert m["n_tasks"] == final["dataset"]["n_test_tasks"][scenario]
      if m["n_tasks"]:
        for key in (
          "mae",
          "rmse",
          "mae_pooled",
          "rmse_pooled",
          "ndcg@1",
          "ndcg@3",
          "ndcg@5",
          "accuracy",
          "precision",
          "recall",
        ):
          assert m[key] is not None and m[key] >= 0, (name, scenario, key)
  timing = json.load(open(os.path.join(workdir, "timing.json")))
  assert timing["total_s"] > 0 and "timing" not in final
  return final


def test_binary_tiny_synthetic_writes_promised_json(tiny_trained_run):
  workdir = tiny_trained_run  # experiments.train with conftest.TINY_RUN flags
  final = _check_outputs(workdir, "maml", ["global_mean", "item_mean", "support_mean", "pooled", "finetune"], 3)
  assert set(final["adaptation"]) == set(SCENARIOS)
  assert final["training"]["finetune"]["selected"]["inner_steps"] in (1, 5)


def test_binary_rejects_bad_flags(tmp_path):
  proc = run_binary("experiments.train", *TINY, "--inner_lr=-1", f"--workdir={tmp_path}")
  assert proc.returncode == 2 and "inner_lr must be >= 0" in proc.stderr


def test_binary_ml100k_one_epoch(tmp_path, shared_data_dir):
  workdir = str(tmp_path / "ml100k")
  proc = run_binary(
    "experiments.train",
    "--dataset=ml-100k",
    f"--data_dir={shared_data_dir}",
    "--epochs=1",
    "--baselines=item_mean,support_mean",
    f"--workdir={workdir}",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  final = _check_outputs(workdir, "maml", ["item_mean", "support_mean"], 1)
  assert final["dataset"]["n_ratings"] == 100000
  # stdout: the end-of-run table (learner and baselines x scenarios) and the files written
  out = proc.stdout.strip().splitlines()
  assert out[0].startswith("maml and 2 baselines on ml-100k, test tasks; MAE (lower is better) / nDCG@3")
  assert [line.split()[0] for line in out[3:6]] == ["maml", "item_mean", "support_mean"]
  assert out[-1].startswith(f"wrote {workdir}/final_metrics.json, {workdir}/timing.json")
  # stderr: each phase's start and end, and no TPU probe noise
  for phase in ("ml-100k: load: started", "maml: meta-training: started", "baselines: done in"):
    assert phase in proc.stderr
  assert "libtpu" not in proc.stderr
  assert all(final["dataset"]["n_test_tasks"][s] > 20 for s in SCENARIOS)


def test_binary_sharded_and_chunked_equals_plain(tmp_path, tiny_trained_run):
  # The same flags as the shared tiny run, sharded over 4 devices in chunks of 4 tasks.
  workdir = str(tmp_path / "sharded")
  # (--baselines= only skips the baselines: the learner's training does not depend on them.)
  proc = run_binary(
    "experiments.train",
    *TINY_RUN,
    f"--workdir={workdir}",
    "--devices=4",
    "--task_chunk=4",
    "--baselines=",
    f"--compilation_cache_dir={tmp_path / 'cache'}",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert os.listdir(tmp_path / "cache"), "the persistent compilation cache was not written"
  plain = json.load(open(os.path.join(tiny_trained_run, "final_metrics.json")))
  sharded = json.load(open(os.path.join(workdir, "final_metrics.json")))
  for scenario in SCENARIOS:
    a, b = plain["results"]["maml"][scenario], sharded["results"]["maml"][scenario]
    if a["n_tasks"]:
      assert b["mae"] == pytest.approx(a["mae"], abs=1e-4), scenario


@pytest.mark.parametrize(
  "flags,message",
  [
    (["--devices=4", "--meta_batch_size=6"], "meta_batch_size=6 does not divide by the 4 devices"),
    (["--task_chunk=3"], "meta_batch_size=8 does not divide into task chunks of 3"),
    (["--devices=64"], "devices=64 but only 4 cpu device"),
  ],
)
def test_binary_rejects_bad_device_flags(tmp_path, flags, message):
  proc = run_binary("experiments.train", *TINY, "--baselines=", f"--workdir={tmp_path}", *flags)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert message in proc.stderr and "Traceback" not in proc.stderr
