"""examples/: the library used from a user's own JAX code runs, trains and adapts."""

import importlib.util
import os

from conftest import REPO


def load_example(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "examples", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_adapt_new_user_example_learns_and_adapts():
  out = load_example("adapt_new_user").main(steps=150)
  assert out["last_loss"] < 0.8 * out["first_loss"]  # the user's optax loop meta-trains
  # adapted predictions for held-out new users beat each user's own support mean
  assert out["user_cold_mae"] < out["user_cold_mae_support_mean"]
  assert len(set(out["top5"])) == 5


def test_public_api_resolves_is_documented_and_listed_in_readme():
  import inspect

  import metarec_jax
  from metarec_jax import data, learners, models

  with open(os.path.join(REPO, "README.md")) as f:
    readme = f.read()
  for module in (metarec_jax, data, learners, models):
    for name in module.__all__:
      obj = getattr(module, name)
      if callable(obj) and not isinstance(obj, str):
        assert inspect.getdoc(obj), f"{module.__name__}.{name} has no docstring"
  for name in metarec_jax.__all__:
    assert f"`{name}`" in readme, f"README.md does not list {name}"
