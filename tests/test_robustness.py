"""Bad input to the binaries: one error line naming the file, line and field, and exit code 2."""

import pytest

from conftest import run_binary
from test_data import DATA, USERS, write_ml100k

pytestmark = pytest.mark.slow  # end-to-end runs (binaries or train_and_evaluate) and real data

TRAIN = ["--dataset=ml-100k", "--epochs=1", "--baselines=", "--hidden=8", "--embed_dim=4"]


def _last_line(proc):
  lines = proc.stderr.strip().splitlines()
  return lines[-1] if lines else ""


@pytest.mark.parametrize(
  "files, message",
  [
    ({"data": DATA.replace("\t", ",")}, "u.data:1: expected 4 fields separated by '\\t', found 1"),
    ({"users": USERS.replace("|85711", "")}, "u.user:1: expected 5 fields separated by '|', found 4"),
    ({"data": "1\t10\tfive\t881250949\n"}, "u.data:1: field 'rating' must be a number, got 'five'"),
    ({"data": "1\t10\t5\t1\n1\t20\t0\t2\n"}, "u.data:2: field 'rating' must be in [1, 5], got '0'"),
    ({"data_bytes": b"1\t10\t5\t1\n2\t2\xe90\t3\t1\n"}, "u.data:2: bytes are not valid ascii (byte 0xe9"),
    ({"data": ""}, "u.data: file is empty (expected rows of 4 fields"),
    ({"data": DATA + "7\t10\t4\t1\n"}, "u.data:5: user id 7 is not in"),
    ({"data": DATA + "1\t40\t4\t1\n"}, "u.data:5: item id 40 is not in"),
    ({"users": USERS + "3|30|X|writer|11111\n"}, "u.user:4: field 'gender' must be M or F, got 'X'"),
  ],
)
def test_bad_ml100k_files_exit_2_with_one_line(tmp_path, files, message):
  root = write_ml100k(tmp_path, **files)
  proc = run_binary("experiments.train", *TRAIN, f"--data_dir={root}", f"--workdir={tmp_path}/run")
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert _last_line(proc).startswith("error: ") and message in _last_line(proc), _last_line(proc)


def test_missing_dataset_says_where_it_comes_from(tmp_path):
  proc = run_binary("experiments.train", *TRAIN, f"--data_dir={tmp_path}", f"--workdir={tmp_path}/run")
  assert proc.returncode == 2
  assert f"{tmp_path}/ml-100k: directory not found. MovieLens-100K comes from GroupLens" in _last_line(proc)


def test_duplicate_rows_keep_the_last_and_are_counted_in_the_log(tmp_path):
  root = write_ml100k(tmp_path, data=DATA + "1\t10\t2\t881250999\n2\t20\t5\t881250999\n")
  proc = run_binary("experiments.train", *TRAIN, f"--data_dir={root}", f"--workdir={tmp_path}/run")
  assert "u.data: 2 duplicate (user, item) rows; kept the last of each" in proc.stderr
  # The fixture is too small to train on: the run then stops with its own clear error.
  assert proc.returncode == 2 and "no meta-training tasks survive" in _last_line(proc)


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--outer_lr=-0.1"], "outer_lr must be > 0, got -0.1"),
    (["--inner_lr=-1"], "inner_lr must be >= 0, got -1.0"),
    (["--epochs=0"], "epochs must be >= 1, got 0"),
    (["--meta_batch_size=0"], "meta_batch_size must be > 0, got 0"),
    (["--query_size=3"], "nDCG cut-offs (1, 3, 5) must not exceed the query size 3"),
    (["--learner=mamal"], "Unsupported learner: 'mamal'; choose one of global_mean, item_mean"),
    (["--model=cnn"], "flag --model=cnn: value should be one of <content"),
    (["--dataset=ml-20m"], "flag --dataset=ml-20m: value should be one of <synthetic|ml-100k"),
    (["--baselines=item_mean,knn"], "Unsupported baseline: 'knn'; choose from global_mean, item_mean"),
  ],
)
def test_bad_flags_exit_2_and_list_the_valid_choices(tmp_path, flags, message):
  proc = run_binary("experiments.train", "--dataset=synthetic", *flags, f"--workdir={tmp_path}/run")
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert message in _last_line(proc), _last_line(proc)
  assert "Traceback" not in proc.stderr
