"""The GPU scripts' steps that run before a GPU is needed: the offline bundle's checks and the
carried wheels' install (the lent GPU machines reach no network and lack `rdata`)."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import REPO


def _bash(script, env, tmp_path):
  full = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", **env}
  return subprocess.run(
    ["bash", str(Path(REPO) / "experiments" / script)],
    env=full,
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=120,
  )


def _wheel(folder, name="carried_probe"):
  """A minimal pure-Python wheel: one module that says where it was imported from."""
  path = folder / f"{name}-1.0-py3-none-any.whl"
  info = f"{name}-1.0.dist-info"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr(f"{name}/__init__.py", "WHERE = __file__\n")
    z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    z.writestr(f"{info}/RECORD", "")
  return path


def test_prepare_names_the_missing_dataset_folder(tmp_path):
  (tmp_path / "melu-ml-1m").mkdir()
  r = _bash("gpu_prepare.sh", {"DATA_DIR": str(tmp_path), "METAREC_DATA_DIR": ""}, tmp_path)
  assert r.returncode == 2, r.stderr
  assert f"{tmp_path}/ml-1m-ratings-rda: no such folder" in r.stderr


def test_prepare_without_a_data_dir_says_what_to_set(tmp_path):
  r = _bash("gpu_prepare.sh", {"DATA_DIR": "", "METAREC_DATA_DIR": ""}, tmp_path)
  assert r.returncode == 2 and "set DATA_DIR" in r.stderr, r.stderr


def test_workload_rejects_an_empty_wheel_folder(tmp_path):
  (tmp_path / "wheels").mkdir()
  env = {"DATA_DIR": str(tmp_path), "WHEELS": str(tmp_path / "wheels"), "OUT": str(tmp_path / "out")}
  r = _bash("gpu_workload.sh", env, tmp_path)
  assert r.returncode == 2 and "holds no .whl file" in r.stderr, r.stderr


def test_workload_installs_the_carried_wheels_before_the_gpu_check(tmp_path):
  (tmp_path / "wheels").mkdir()
  _wheel(tmp_path / "wheels")
  out = tmp_path / "out"
  env = {"DATA_DIR": str(tmp_path), "WHEELS": str(tmp_path / "wheels"), "OUT": str(out), "JAX_PLATFORMS": "cpu"}
  r = _bash("gpu_workload.sh", env, tmp_path)
  # This machine has no GPU: the script stops at its GPU check, after the install.
  assert r.returncode != 0 and "no GPU backend" in r.stderr, r.stderr
  assert (out / "site" / "carried_probe" / "__init__.py").is_file()
  probe = subprocess.run(
    [sys.executable, "-c", "import carried_probe; print(carried_probe.WHERE)"],
    env={**os.environ, "PYTHONPATH": str(out / "site")},
    capture_output=True,
    text=True,
  )
  assert probe.stdout.strip() == str(out / "site" / "carried_probe" / "__init__.py"), probe.stderr
