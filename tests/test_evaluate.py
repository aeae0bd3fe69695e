"""Evaluation compiles once per learner: a validation grid's options are traced."""

import jax
import numpy as np
import pytest

from metarec_jax.config import resolve
from metarec_jax.learners import attach_options
from metarec_jax.setup import build_setup


@pytest.fixture(scope="module")
def st():
  return build_setup(resolve("smoke"))


def test_a_traced_grid_compiles_once_per_parameter_shape(st):
  best = st.select("bias_foldin")  # 9 grid points, one shape
  assert best["predict_fn"]._cache_size() == 1
  best = st.select("als_foldin")  # ranks 8 and 24: two shapes
  assert best["predict_fn"]._cache_size() == 2


def test_traced_fine_tuning_predicts_what_the_closed_over_options_predict(st):
  pooled = st.make("pooled")
  params = st.init_params(pooled)
  params = jax.tree.map(lambda a: a + 0.01, params)  # any network
  ev = st.evaluator
  options = {"inner_lr": 0.03, "inner_steps": 5}
  plain = st.make("finetune", **options)
  closed = ev.predict(plain, params, "val", st.scen.val)  # options from the closure
  other = st.make("finetune", inner_lr=0.3, inner_steps=1)  # another grid point's function
  traced = ev.predict(other, attach_options("finetune", params, options), "val", st.scen.val)
  np.testing.assert_allclose(traced, closed, rtol=1e-5, atol=1e-6)
  assert not np.allclose(ev.predict(other, params, "val", st.scen.val), closed, atol=1e-4)  # options matter


def test_each_split_goes_to_the_device_once(st):
  learner = st.make("item_mean")
  params = st.init_params(learner)
  st.evaluator.predict(learner, params, ("test", "warm"), st.scen.test["warm"])
  arrays = st.evaluator._arrays[("test", "warm")]
  st.evaluator.predict(learner, params, ("test", "warm"), st.scen.test["warm"])
  assert st.evaluator._arrays[("test", "warm")] is arrays
