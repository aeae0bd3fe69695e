"""Checkpoints (orbax), kill-and-resume, determinism, the NaN stop and atomic writes."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import TINY_RUN as TINY
from conftest import run_binary
from metarec_jax import writers
from metarec_jax.checkpoint import FitCheckpoints
from metarec_jax.training.state import FitState, Progress, create_train_state

pytestmark = pytest.mark.slow  # end-to-end runs (binaries or train_and_evaluate) and real data


def _final_bytes(workdir) -> bytes:
  with open(os.path.join(workdir, "final_metrics.json"), "rb") as f:
    return f.read()


@pytest.fixture(scope="module")
def uninterrupted(tiny_trained_run):
  return tiny_trained_run


def test_checkpoint_policy_keeps_the_latest_k_and_the_best(tmp_path):
  ck = FitCheckpoints(str(tmp_path / "ck"), keep=2, every=5)
  params = {"w": jnp.arange(4.0)}
  train = create_train_state(jax.random.key(0), params, optax.adam(1e-3))
  state = FitState(train=train, epoch_key=jax.random.key(1), best_params=params, progress=Progress())
  # (step, validation criterion or None for a mid-epoch checkpoint)
  for step, val in [(0, 0.9), (5, None), (10, 0.7), (15, None), (20, 0.8), (25, None), (30, 0.75)]:
    st = state.replace(
      train=train.replace(params={"w": params["w"] + step}, step=jnp.int32(step)),
      progress=Progress(epoch=step, best_step=10, records=({"step": step},)),
    )
    ck.save(step, st, val)
  assert ck.steps() == [10, 25, 30]  # latest two + the best (lowest criterion, step 10)
  np.testing.assert_array_equal(ck.restore_params(10, params)["w"], np.arange(4.0) + 10)
  back = ck.restore(30, state)
  assert back.progress.epoch == 30 and back.progress.records == ({"step": 30},) and int(back.train.step) == 30
  np.testing.assert_array_equal(back.train.params["w"], np.arange(4.0) + 30)
  assert isinstance(back.train.opt_state, type(train.opt_state))
  assert jax.random.key_data(back.epoch_key).tolist() == jax.random.key_data(state.epoch_key).tolist()
  assert ck.best_step() == 10


def test_run_keeps_latest_k_plus_best_and_records_them(uninterrupted):
  folder = os.path.join(uninterrupted, "checkpoints", "maml")
  done = json.load(open(os.path.join(folder, "done.json")))
  steps = sorted(int(d) for d in os.listdir(folder) if d.isdigit())
  final_step = done["info"]["steps"]
  assert final_step in steps and done["best_step"] in steps
  assert len(steps) <= 3  # keep 2 + the best
  assert [r["epoch"] for r in done["records"]] == list(range(1, done["info"]["epochs_run"] + 1))
  assert os.path.isfile(os.path.join(uninterrupted, "checkpoints", "pooled", "done.json"))


@pytest.mark.parametrize("exit_at_step", [14])  # epoch 2 of 3 (11 steps each), two steps after the checkpoint at 12
def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path, uninterrupted, exit_at_step):
  workdir = str(tmp_path / "run")
  proc = run_binary(
    "experiments.train", *TINY, f"--workdir={workdir}", env_extra={"METAREC_EXIT_AT_STEP": str(exit_at_step)}
  )
  assert proc.returncode == 75, proc.stderr[-2000:]  # killed: no final metrics yet
  assert not os.path.exists(os.path.join(workdir, "final_metrics.json"))
  proc = run_binary("experiments.train", *TINY, f"--workdir={workdir}", "--resume")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "resumed from step" in proc.stderr
  assert _final_bytes(workdir) == _final_bytes(uninterrupted)
  lines = lambda w: [
    (r["learner"], r["epoch"], r["train/loss"], r["val/mae"])
    for r in map(json.loads, open(os.path.join(w, "metrics.jsonl")))
  ]
  assert lines(workdir) == lines(uninterrupted)


def test_same_seed_and_flags_give_byte_identical_final_metrics(tmp_path, uninterrupted):
  # The same results with the baselines after the learner, in its thread and on its device, as
  # with them beside it on a second device (the default, here over the tests' 4 host devices).
  workdir = str(tmp_path / "again")
  proc = run_binary("experiments.train", *TINY, f"--workdir={workdir}", "--nooverlap_baselines")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert _final_bytes(workdir) == _final_bytes(uninterrupted)  # results only: byte-identical
  final = json.load(open(os.path.join(workdir, "final_metrics.json")))
  timing = json.load(open(os.path.join(workdir, "timing.json")))
  assert "timing" not in final and timing["total_s"] > 0  # timings live in their own file


def test_resume_with_different_flags_is_refused(tmp_path, uninterrupted):
  proc = run_binary("experiments.train", *TINY[:-2], "--outer_lr=0.5", f"--workdir={uninterrupted}", "--resume")
  assert proc.returncode == 2
  assert "has outer_lr=0.001 but this run has outer_lr=0.5" in proc.stderr.strip().splitlines()[-1]


def test_a_fresh_run_into_a_workdir_with_checkpoints_is_refused(uninterrupted):
  before = sorted(os.listdir(os.path.join(uninterrupted, "checkpoints")))
  mtime = os.path.getmtime(os.path.join(uninterrupted, "config.json"))
  proc = run_binary("experiments.train", *TINY, f"--workdir={uninterrupted}")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert "holds checkpoints of an earlier run; continue it with --resume" in proc.stderr.strip().splitlines()[-1]
  assert sorted(os.listdir(os.path.join(uninterrupted, "checkpoints"))) == before  # nothing touched
  assert os.path.getmtime(os.path.join(uninterrupted, "config.json")) == mtime


def test_a_failing_learner_reports_its_own_error_while_the_baselines_run(tmp_path):
  # The pooled network fails first (it is trained with the same outer rate); the baselines'
  # thread, on its own device, is waiting for it and must neither hang nor mask the error.
  workdir = str(tmp_path / "nan_with_baselines")
  proc = run_binary(
    "experiments.train", *TINY[:-2], "--outer_lr=1e30", "--baselines=global_mean,pooled", f"--workdir={workdir}"
  )
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  msg = proc.stderr.strip().splitlines()[-1]
  assert msg.startswith("error: pooled: non-finite") and "at step" in msg
  assert not os.path.exists(os.path.join(workdir, "final_metrics.json"))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path / "nan")
  proc = run_binary(
    "experiments.train", *TINY[:-2], "--checkpoint_every=1", "--outer_lr=1e30", "--baselines=", f"--workdir={workdir}"
  )
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  msg = proc.stderr.strip().splitlines()[-1]
  assert "non-finite" in msg and "at step" in msg and "last finite training loss" in msg
  assert "the last good checkpoint is step" in msg
  good = int(msg.split("the last good checkpoint is step ")[1].split()[0])
  bad = int(msg.split(" at step ")[1].split()[0])
  assert good < bad
  folder = msg.split(" in ")[-1].split(";")[0]
  assert folder.startswith(os.path.join(workdir, "checkpoints"))
  assert not os.path.exists(os.path.join(folder, "done.json"))
  assert max(int(d) for d in os.listdir(folder) if d.isdigit()) == good


def test_json_writes_are_atomic(tmp_path):
  path = str(tmp_path / "out.json")
  writers.write_json_atomic(path, {"a": 1})

  class Boom:
    pass

  with pytest.raises(TypeError):
    writers.write_json_atomic(path, {"a": 2, "b": Boom()})  # fails half-way through json.dump
  assert json.load(open(path)) == {"a": 1}  # the old file is untouched
  assert os.listdir(tmp_path) == ["out.json"]  # and no temp file is left behind


def test_the_best_parameters_copy_outlives_the_donated_state_and_the_guard_sees_every_leaf():
  from metarec_jax.runtime import copy_tree
  from metarec_jax.training.loop import _all_finite

  params = {"a": jnp.arange(3.0), "b": {"c": jnp.ones((2, 2)), "d": jnp.zeros((), jnp.int32)}}
  best = copy_tree(params)
  jax.tree.map(lambda x: x.delete(), params)  # what a step that donates its state does to it
  np.testing.assert_array_equal(best["a"], [0.0, 1.0, 2.0])
  np.testing.assert_array_equal(best["b"]["c"], np.ones((2, 2)))
  assert _all_finite(best)
  for bad in (jnp.nan, jnp.inf):
    assert not _all_finite({**best, "b": {**best["b"], "c": best["b"]["c"].at[1, 0].set(bad)}})
