"""Test setup: 4 fake CPU devices (set before jax is imported) and a persistent compile cache."""

import os
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The dataset and text-vector caches of the tests' runs: a temporary folder, not the user's.
os.environ.setdefault("METAREC_CACHE_DIR", os.path.join(tempfile.gettempdir(), "metarec-jax-test-files"))

import jax  # noqa: E402
import pytest  # noqa: E402

_CACHE = os.environ.get("METAREC_TEST_COMPILE_CACHE", os.path.join(tempfile.gettempdir(), "metarec-jax-test-cache"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def shared_data_dir():
  """The real-data folder from $METAREC_DATA_DIR: skip when unset, fail loudly when set but missing."""
  path = os.environ.get("METAREC_DATA_DIR")
  if not path:
    pytest.skip("METAREC_DATA_DIR is not set; real-data tests skipped")
  if not os.path.isdir(path):
    pytest.fail(f"METAREC_DATA_DIR={path!r} is set but is not a directory")
  return path


def run_binary(module: str, *args: str, timeout: int = 600, env_extra: dict | None = None):
  """Runs `python -m module args...` from the repo root (with `env_extra` added to the
  environment); returns the CompletedProcess."""
  import subprocess

  env = {**os.environ, **(env_extra or {})}
  env["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  return subprocess.run(
    [sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
  )


# A tiny synthetic run with checkpoints, shared by the checkpoint and recommendation tests.
TINY_RUN = [
  "--dataset=synthetic",
  "--model=content",  # not the synthetic data's defaults (cf stacked on ALS): the content model
  "--base=",
  "--synthetic_users=100",
  "--synthetic_items=120",
  "--epochs=3",
  "--meta_batch_size=8",
  "--hidden=16",
  "--embed_dim=8",
  "--inner_steps=1",
  "--baselines=global_mean,item_mean,support_mean,pooled,finetune",
  "--checkpoint_every=4",
  "--keep_checkpoints=2",
]


@pytest.fixture(scope="session")
def tiny_trained_run(tmp_path_factory):
  """The workdir of one uninterrupted `experiments.train` run with TINY_RUN flags."""
  workdir = str(tmp_path_factory.mktemp("tiny_run") / "run")
  proc = run_binary("experiments.train", *TINY_RUN, f"--workdir={workdir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir
