"""A multi-process run for real: two processes on this machine, each with two fake CPU devices,
joined by `jax.distributed` (coordinator on 127.0.0.1, gloo collectives)."""

import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import REPO, TINY_RUN, run_binary

DROP = ("--checkpoint_every", "--keep_checkpoints", "--epochs", "--baselines")
RUN = [a for a in TINY_RUN if not a.startswith(DROP)] + ["--devices=0", "--epochs=1", "--baselines=global_mean"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _two_processes(workdirs, port):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        "-m",
        "experiments.train",
        *RUN,
        "--distributed",
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={i}",
        f"--workdir={workdirs[i]}",
        "--compilation_cache_dir=",
      ],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in (0, 1)
  ]
  try:
    return [(p.wait(timeout=300), *p.communicate()) for p in procs]
  finally:
    for p in procs:
      p.kill()


@pytest.mark.slow
def test_two_processes_of_two_devices_give_one_process_of_four_devices_metrics(tmp_path):
  shared = str(tmp_path / "two")
  results = _two_processes([shared, shared], _free_port())
  for rc, _, err in results:
    assert rc == 0, err[-3000:]
  one = str(tmp_path / "one")
  proc = run_binary(
    "experiments.train", *RUN, f"--workdir={one}", env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  two_final = json.load(open(os.path.join(shared, "final_metrics.json")))
  one_final = json.load(open(os.path.join(one, "final_metrics.json")))

  def leaves(d, path=""):
    for k, v in d.items():
      yield from leaves(v, f"{path}/{k}") if isinstance(v, dict) else [(f"{path}/{k}", v)]

  two_leaves, one_leaves = dict(leaves(two_final)), dict(leaves(one_final))
  assert two_leaves.keys() == one_leaves.keys()
  for k, v in two_leaves.items():  # equal, up to the all-reduce's summation order
    w = one_leaves[k]
    assert (v == pytest.approx(w, rel=1e-5, abs=1e-7)) if isinstance(v, float) else v == w, k

  # one metrics.jsonl, written once (process 0), and the checkpoints orbax wrote from both
  def log(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return [{k: v for k, v in r.items() if not k.startswith("time/") and k != "learner"} for r in rows]

  two_log, one_log = log(shared), log(one)
  assert [(r["epoch"], r["step"]) for r in two_log] == [(r["epoch"], r["step"]) for r in one_log]
  for a, b in zip(two_log, one_log):  # the all-reduce sums in another order: rounding only
    assert a == pytest.approx(b, rel=1e-6)
  assert os.path.isfile(os.path.join(shared, "checkpoints", "maml", "done.json"))


@pytest.mark.slow
def test_processes_with_different_workdirs_stop_with_one_error(tmp_path):
  results = _two_processes([str(tmp_path / "a"), str(tmp_path / "b")], _free_port())
  for rc, _, err in results:
    assert rc == 2 and "every process of a --distributed run must use the same --workdir" in err
  assert not os.path.exists(tmp_path / "b" / "config.json")


def test_only_process_zero_writes_files(tmp_path, monkeypatch):
  import jax

  from metarec_jax import writers

  monkeypatch.setattr(jax, "process_index", lambda: 1)
  writers.write_json_atomic(str(tmp_path / "x.json"), {"a": 1})
  log = writers.MetricsLog(str(tmp_path / "run"))
  log.write({"step": 1})
  with writers.atomic_path(str(tmp_path / "y.npz")) as tmp:
    open(tmp, "w").write("scratch")
  assert os.listdir(tmp_path) == []
  monkeypatch.setattr(jax, "process_index", lambda: 0)
  writers.write_json_atomic(str(tmp_path / "x.json"), {"a": 1})
  assert os.listdir(tmp_path) == ["x.json"]
