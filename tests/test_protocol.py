"""train_and_evaluate: results apart from timings, under names that say what they hold."""

import json
import os

import pytest

from metarec_jax.config import resolve
from metarec_jax.protocol import FINAL_METRICS, TIMING, FinalMetrics, train_and_evaluate

pytestmark = pytest.mark.slow  # end-to-end runs (binaries or train_and_evaluate) and real data


def test_final_metrics_hold_results_under_names_that_say_what_they_hold(tmp_path):
  # (byte-identical for the same seed: tests/test_checkpoints.py)
  config = resolve("smoke", {"baselines": ("item_mean", "pooled", "finetune", "bias_foldin"), "few_shot_ks": (2,)})
  workdir = str(tmp_path / "run")
  final = train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, FINAL_METRICS)) as f:
    assert json.load(f) == json.loads(json.dumps(final))
  with open(os.path.join(workdir, TIMING)) as f:
    timing = json.load(f)
  assert timing["total_s"] > 0 and timing["training"]["maml"]["tasks_per_s"] > 0
  assert set(timing["learners"]) == {"maml", "item_mean", "pooled", "finetune", "bias_foldin"}
  assert set(final) == set(FinalMetrics.__annotations__)
  # Names say what they hold: the validation criterion is named, never "val_mae" for another metric.
  assert set(final["training"]["finetune"]) == {"selected", "val/mae"}
  assert "best_val/mae" in final["training"]["maml"]
  assert set(final["adaptation"]["user_cold"]) == {"mean_abs_change", "mae_without_adaptation"}
  assert set(final["few_shot"]["user_cold"]) == {"maml", "item_mean", "pooled", "finetune", "bias_foldin"}
