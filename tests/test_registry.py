"""The learner registry carries behaviour: a learner registered from this file runs through
`train_and_evaluate` and `experiments.compare` without editing anything else."""

import json
import os

import jax
import jax.numpy as jnp
import pytest
from absl import flags

from metarec_jax import learners
from metarec_jax.config import resolve
from metarec_jax.learners import Learner, LearnerSpec, get_spec, register, unregister
from metarec_jax.protocol import train_and_evaluate

TOY = "toy_offset_mean"


def _build_toy(model, **_):
  """The support's mean rating plus one meta-learned offset: trained, adapts by reading."""

  def init(rng, example, ctx):
    del rng, example, ctx
    return {"offset": jnp.zeros(())}

  def adapt(params, support):
    n = support.mask.sum()
    return {"mean": jnp.sum(support.y * support.mask) / jnp.maximum(n, 1)}

  def predict(params, state, x):
    return jnp.full(x["item"].shape, state["mean"] + params["offset"])

  def meta_loss(params, episodes, rng):
    del rng

    def one(support, query):
      pred = predict(params, adapt(params, support), query.x)
      return jnp.sum(query.mask * (pred - query.y) ** 2) / jnp.maximum(query.mask.sum(), 1)

    loss = jax.vmap(one)(episodes.support, episodes.query).mean()
    return loss, {"loss": loss}

  return Learner(name=TOY, family="model", init=init, adapt=adapt, predict=predict, meta_loss=meta_loss)


@pytest.fixture
def toy():
  register(LearnerSpec(name=TOY, family="model", build=_build_toy))
  yield TOY
  unregister(TOY)


def test_registry_errors_name_the_choices():
  with pytest.raises(ValueError, match="Unsupported learner: 'nope'; choose one of .*maml"):
    get_spec("nope")
  with pytest.raises(ValueError, match="registered already"):
    register(get_spec("maml"))
  with pytest.raises(ValueError, match="params_from"):
    LearnerSpec(name="x", family="baseline", build=_build_toy, source="reuse")


def test_name_lists_come_from_the_specs():
  assert learners.BASELINES == (
    "global_mean",
    "item_mean",
    "support_mean",
    "pooled",
    "finetune",
    "bias_foldin",
    "als_foldin",
  )
  assert set(learners.FOLDIN) == {"bias_foldin", "als_foldin"}
  assert all(get_spec(n).trained for n in learners.META_LEARNERS)
  assert get_spec("finetune").params_from == learners.POOLED and get_spec("cooc_knn").select_metric == "auc"


def test_a_toy_learner_runs_through_train_and_evaluate(toy, tmp_path):
  assert toy in learners.LEARNERS  # the name lists read the registry when asked
  config = resolve("smoke", {"learner": toy, "baselines": ("support_mean",), "checkpoints": False})
  final = train_and_evaluate(config, str(tmp_path / "run"))
  assert set(final["results"]) == {toy, "support_mean"}
  assert final["families"][toy] == "model" and final["training"][toy]["steps"] > 0
  assert final["training"][toy]["epochs_run"] == 2 and 0 < final["training"][toy]["best_val/mae"] < 2
  # Same splits as the baseline.
  assert final["results"][toy]["user_cold"]["n_tasks"] == final["results"]["support_mean"]["user_cold"]["n_tasks"] > 0


def _run_compare_in_process(argv):
  import experiments.compare as compare_binary

  fl = flags.FLAGS
  fl.unparse_flags()
  try:
    fl(["compare", *argv])
    compare_binary.main([])
  finally:
    fl.unparse_flags()


def test_a_toy_learner_runs_through_experiments_compare(toy, tmp_path):
  out = str(tmp_path / "cmp")
  _run_compare_in_process(
    [
      "--preset=smoke",
      f"--learners={toy},maml",
      "--seeds=0",
      "--few_shot_ks=2",
      "--baselines=support_mean",
      "--noreport",
      "--nocheckpoints",
      "--inner_lr=0.05",
      f"--out={out}",
    ]
  )
  with open(os.path.join(out, "results.json")) as f:
    res = json.load(f)
  assert [r["learner"] for r in res["runs"]] == [toy, "maml"]
  assert toy in res["summary"]["results"] and "support_mean" in res["summary"]["results"]
  # Every Config field is a compare flag: --inner_lr reaches each run's config.
  for name in (toy, "maml"):
    with open(os.path.join(out, f"{name}_seed0", "config.json")) as f:
      config = json.load(f)
    assert config["inner_lr"] == 0.05 and config["epochs"] == 2 and config["few_shot_ks"] == [2]
