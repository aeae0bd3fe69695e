"""What a run tells a person: progress lines, the end-of-run table, the grouped help, the
data-folder fallback."""

import dataclasses
import io
import re

from conftest import run_binary
from metarec_jax.config import FIELD_GROUP, Config
from metarec_jax.progress import Progress, eta
from metarec_jax.summary import summary_table


class Terminal(io.StringIO):
  def isatty(self):
    return True


def test_progress_logs_start_progress_with_time_left_and_end_off_a_terminal(caplog):
  caplog.set_level("INFO", logger="absl")
  stream = io.StringIO()
  with Progress("phase", 4, "step", every_s=0.0, stream=stream) as bar:
    for _ in range(4):
      bar.update(1, note="loss 0.5")
  text = caplog.text
  assert "phase: started (4 steps)" in text and re.search(r"phase: done in \d+ s", text)
  assert re.search(r"phase: 1/4 steps; loss 0.5; about \d+ s left", text)
  assert "phase: 4/4" not in text  # nothing left to estimate at the end: the end line says it
  assert stream.getvalue() == ""  # no bar off a terminal


def test_progress_draws_a_bar_on_a_terminal(caplog):
  caplog.set_level("INFO", logger="absl")
  stream = Terminal()
  with Progress("phase", 3, "step", every_s=0.0, stream=stream) as bar:
    for _ in range(3):
      bar.update(1)
  assert re.search(r"phase: +\d+%\|.*\| \d/3", stream.getvalue())  # tqdm's bar
  assert "phase: 1/3" not in caplog.text  # the bar replaces the progress lines


def test_eta():
  assert eta(1, 4, 10.0) == "about 30 s left"
  assert eta(0, 4, 10.0) == "" and eta(4, 4, 10.0) == ""
  assert eta(1, 2, 125.0) == "about 2 min 05 s left"


def final_of(results):
  n = {s: 10 for s in ("warm", "user_cold", "item_cold", "user_item_cold")}
  return {"learner": "maml", "dataset": {"name": "toy", "n_test_tasks": n}, "results": results}


def test_summary_table_marks_the_best_of_each_scenario_and_lists_the_files():
  def m(mae, ndcg):
    return {
      s: {"n_tasks": 10, "mae": mae, "ndcg@3": ndcg} for s in ("warm", "user_cold", "item_cold", "user_item_cold")
    }

  results = {"maml": m(0.7, 0.80), "item_mean": m(0.8, 0.85)}
  results["item_mean"]["item_cold"] = {"n_tasks": 0}
  out = summary_table(final_of(results), "runs/x", ("final_metrics.json", "timing.json")).splitlines()
  assert out[0].startswith("maml and 1 baseline on toy, test tasks; MAE (lower is better) / nDCG@3")
  assert out[1].split() == ["learner", "warm", "user_cold", "item_cold", "user_item_cold"]
  maml, item = out[3], out[4]
  assert maml.split()[:4] == ["maml", "0.7000*", "/", "0.8000"]  # best MAE, not the best nDCG@3
  assert item.split()[:4] == ["item_mean", "0.8000", "/", "0.8500*"]
  assert "   -   " in item  # no item-cold tasks for this row
  assert out[-1] == "wrote runs/x/final_metrics.json, runs/x/timing.json"


def test_summary_table_of_binary_labels_shows_auc():
  results = {"maml": {"user_cold": {"n_tasks": 5, "auc": 0.7, "ndcg@3": 0.6, "logloss": 0.5}}}
  out = summary_table(final_of(results), "w")
  assert "AUC / nDCG@3" in out.splitlines()[0] and "0.7000*" in out


def test_help_groups_every_config_flag_by_concern_and_lists_every_choice():
  proc = run_binary("experiments.train", "--helpfull")  # absl exits 1 after printing the help
  assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  text = proc.stdout
  heads = {m.group(1): m.start() for m in re.finditer(r"^(\w+) flags:$", text, re.M)}
  assert set(heads) == {"data", "model", "learner", "training", "evaluation", "checkpoints", "runtime"}
  starts = sorted(heads.values()) + [len(text)]
  section = {g: text[p : starts[starts.index(p) + 1]] for g, p in heads.items()}
  for f in dataclasses.fields(Config):
    flag = f"--{f.name}:" if f.type != "bool" else f"--[no]{f.name}:"
    assert flag in section[FIELD_GROUP[f.name]], (f.name, FIELD_GROUP[f.name])
  baselines = " ".join(section["learner"].split("--baselines:")[1].split("(default")[0].split())
  for name in ("popularity", "cooc_knn", "als_foldin", "finetune"):
    assert name in baselines
  assert "exit_at_step" not in text  # a testing aid, not a flag
  assert "./data" in section["data"]  # the data-dir fallback


def test_data_dir_fallback_is_logged(caplog, monkeypatch):
  from metarec_jax.data.io import resolve_data_dir

  caplog.set_level("INFO", logger="absl")
  monkeypatch.delenv("METAREC_DATA_DIR", raising=False)
  assert resolve_data_dir(None) == "data"
  assert "data folder: ./data (no --data_dir given and $METAREC_DATA_DIR is unset)" in caplog.text
  monkeypatch.setenv("METAREC_DATA_DIR", "/somewhere")
  assert resolve_data_dir(None) == "/somewhere" and resolve_data_dir("given") == "given"
