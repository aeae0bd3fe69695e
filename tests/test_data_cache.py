"""The dataset cache: a loaded real dataset read back, equal to the files', and rebuilt whenever
its files, the data code or the options change, or its entry cannot be read."""

import dataclasses
import os
import shutil

import numpy as np
import pytest

from metarec_jax.data import DataError, cache, load_dataset, movielens, synthetic
from metarec_jax.data.schema import Dataset
from test_data import write_ml100k


def assert_same(a, b, path="dataset"):
  if isinstance(a, Dataset):
    assert type(b) is Dataset, path
    for f in dataclasses.fields(a):
      assert_same(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    assert_same(vars(a), vars(b), f"{path} attributes")
  elif isinstance(a, np.ndarray):
    assert (a.dtype, a.shape) == (b.dtype, b.shape), path
    assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), path
  elif isinstance(a, dict):
    assert a.keys() == b.keys(), path
    for k in a:
      assert_same(a[k], b[k], f"{path}[{k!r}]")
  elif isinstance(a, (list, tuple)):
    assert type(a) is type(b) and len(a) == len(b), path
    for i, (x, y) in enumerate(zip(a, b)):
      assert_same(x, y, f"{path}[{i}]")
  else:
    assert a == b or (a != a and b != b), (path, a, b)


@pytest.fixture
def counted(monkeypatch, tmp_path):
  """The cache in a fresh folder and the ml-100k loader's calls counted."""
  monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
  monkeypatch.delenv(cache.SWITCH_ENV, raising=False)
  calls = []
  real = movielens.load_ml100k

  def load(data_dir):
    calls.append(data_dir)
    return real(data_dir)

  monkeypatch.setattr(movielens, "load_ml100k", load)
  return calls


def test_a_second_load_reads_the_entry_back_equal_to_the_files(tmp_path, counted):
  data = write_ml100k(tmp_path / "data")
  first = load_dataset("ml-100k", data_dir=data)
  assert os.path.isfile(tmp_path / "cache" / "datasets" / "ml-100k.pkl")
  again = load_dataset("ml-100k", data_dir=data)
  assert len(counted) == 1
  assert again is not first
  assert_same(first, again)
  assert_same(movielens.load_ml100k(data), again)


def test_a_changed_source_file_loads_from_the_files_again(tmp_path, counted):
  data = write_ml100k(tmp_path / "data")
  assert load_dataset("ml-100k", data_dir=data).n_ratings == 4
  with open(os.path.join(data, "ml-100k", "u.data"), "a") as f:
    f.write("2\t10\t2\t881250953\n")
  assert load_dataset("ml-100k", data_dir=data).n_ratings == 5
  assert load_dataset("ml-100k", data_dir=data).n_ratings == 5
  assert len(counted) == 2


def test_a_change_to_the_data_code_loads_from_the_files_again(tmp_path, counted, monkeypatch):
  code = tmp_path / "code"
  shutil.copytree(os.path.dirname(cache.__file__), code, ignore=shutil.ignore_patterns("__pycache__"))
  monkeypatch.setattr(cache, "_CODE_DIR", str(code))
  data = write_ml100k(tmp_path / "data")
  load_dataset("ml-100k", data_dir=data)
  load_dataset("ml-100k", data_dir=data)
  assert len(counted) == 1
  with open(code / "movielens.py", "a") as f:
    f.write("# edited\n")
  load_dataset("ml-100k", data_dir=data)
  assert len(counted) == 2


def test_options_have_their_own_entries(tmp_path, monkeypatch):
  monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
  folder = tmp_path / "src"
  folder.mkdir()
  (folder / "f.txt").write_text("x")
  made = []

  def load(seed):
    made.append(seed)
    return synthetic.generate(n_users=20, n_items=30, min_ratings=3, max_ratings=6, seed=seed)

  a0 = cache.cached("toy", [str(folder)], {"seed": 0}, lambda: load(0))
  a1 = cache.cached("toy", [str(folder)], {"seed": 1}, lambda: load(1))
  assert_same(cache.cached("toy", [str(folder)], {"seed": 0}, lambda: load(0)), a0)
  assert_same(cache.cached("toy", [str(folder)], {"seed": 1}, lambda: load(1)), a1)
  assert made == [0, 1]
  assert sorted(os.listdir(tmp_path / "cache" / "datasets")) == ["toy-seed0.pkl", "toy-seed1.pkl"]


def test_an_unreadable_entry_is_logged_and_rebuilt(tmp_path, counted, caplog):
  data = write_ml100k(tmp_path / "data")
  entry = tmp_path / "cache" / "datasets" / "ml-100k.pkl"
  entry.parent.mkdir(parents=True)
  entry.write_bytes(b"not a pickle")
  with caplog.at_level("WARNING"):
    ds = load_dataset("ml-100k", data_dir=data)
  assert ds.n_ratings == 4 and len(counted) == 1
  assert "cannot read the dataset cache's" in caplog.text and str(entry) in caplog.text
  assert_same(load_dataset("ml-100k", data_dir=data), ds)  # the rebuilt entry is read back
  assert len(counted) == 1


def test_an_unwritable_cache_folder_is_logged_and_the_load_goes_on(tmp_path, counted, monkeypatch, caplog):
  blocker = tmp_path / "a file"
  blocker.write_text("")
  monkeypatch.setenv(cache.CACHE_ENV, str(blocker))
  data = write_ml100k(tmp_path / "data")
  with caplog.at_level("WARNING"):
    assert load_dataset("ml-100k", data_dir=data).n_ratings == 4
  assert "cannot write the dataset cache's" in caplog.text


def test_a_file_the_hash_cannot_read_is_logged_and_loaded_from_the_files(tmp_path, counted, monkeypatch, caplog):
  def unreadable(h, root, label):
    raise PermissionError(13, "Permission denied", os.path.join(root, "u.data"))

  monkeypatch.setattr(cache, "_hash_tree", unreadable)
  data = write_ml100k(tmp_path / "data")
  with caplog.at_level("WARNING"):
    assert load_dataset("ml-100k", data_dir=data).n_ratings == 4
  assert "cannot hash the dataset's files for the cache" in caplog.text and "u.data" in caplog.text
  assert len(counted) == 1 and not (tmp_path / "cache").exists()


def test_the_switch_turns_the_cache_off(tmp_path, counted, monkeypatch):
  monkeypatch.setenv(cache.SWITCH_ENV, "0")
  data = write_ml100k(tmp_path / "data")
  load_dataset("ml-100k", data_dir=data)
  load_dataset("ml-100k", data_dir=data)
  assert len(counted) == 2
  assert not (tmp_path / "cache").exists()


def test_bad_input_still_gets_the_loaders_error(tmp_path, counted):
  with pytest.raises(DataError, match="ml-100k: directory not found"):
    load_dataset("ml-100k", data_dir=str(tmp_path / "nowhere"))
  data = write_ml100k(tmp_path / "data", data="1\t10\t7\t881250949\n")
  with pytest.raises(DataError, match=r"u.data:1: field 'rating' must be in \[1, 5\]"):
    load_dataset("ml-100k", data_dir=data)
  assert not (tmp_path / "cache" / "datasets" / "ml-100k.pkl").exists()


@pytest.mark.slow
def test_ml1m_read_back_equals_the_files(shared_data_dir, tmp_path, monkeypatch):
  from metarec_jax.data import melu_ml1m

  monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
  monkeypatch.setenv(cache.SWITCH_ENV, "0")
  files = load_dataset("ml-1m", data_dir=shared_data_dir)
  calls, real = [], melu_ml1m.load_melu_ml1m
  monkeypatch.setattr(melu_ml1m, "load_melu_ml1m", lambda d: calls.append(d) or real(d))
  monkeypatch.setenv(cache.SWITCH_ENV, "1")
  load_dataset("ml-1m", data_dir=shared_data_dir)  # loads from the files and writes the entry
  again = load_dataset("ml-1m", data_dir=shared_data_dir)
  assert len(calls) == 1  # the second load read the entry back
  assert_same(files, again)
  assert os.path.isfile(tmp_path / "cache" / "datasets" / "ml-1m.pkl")
