"""Evaluation compiles once per learner and device: a validation grid's options are traced; a
split's chunks alternate between the two CPU devices and give the one-device predictions."""

import jax
import numpy as np
import pytest

from metarec_jax.config import resolve
from metarec_jax.learners import attach_options
from metarec_jax.setup import build_setup
from helpers import compiles


@pytest.fixture(scope="module")
def st():
  return build_setup(resolve("smoke"))


def test_a_traced_grid_compiles_once_per_parameter_shape(st):
  assert len(st.evaluator.devices) == 2  # a split's chunks alternate between two devices: one compile on each
  best = st.select("bias_foldin")  # 9 grid points, one shape
  assert best["predict_fn"]._cache_size() == 2
  best = st.select("als_foldin")  # ranks 8 and 24: two shapes
  assert best["predict_fn"]._cache_size() == 4


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


@pytest.mark.parametrize("name", ["maml", "als_foldin", "finetune"])
def test_a_split_on_two_devices_gives_the_one_device_predictions_bit_for_bit(st, name):
  from metarec_jax.evaluate import Evaluator

  spec = st.select(name) if name != "maml" else None
  learner = spec["learner"] if spec else st.make(name)
  params = spec["params"] if spec else st.init_params(learner)
  tables = st.evaluator.tables
  ev = Evaluator(tables, chunk=8, label=st.scen.label, buckets=3, helper=jax.devices()[1])
  one = Evaluator(tables, chunk=8, label=st.scen.label, buckets=3)
  assert st.evaluator.devices == ev.devices == tuple(jax.devices()[:2]) and one.devices == (jax.devices()[0],)
  for key, eps in (("val", st.scen.val), (("test", "item_cold"), st.scen.test["item_cold"])):
    both = ev.predict(learner, params, key, eps)
    np.testing.assert_array_equal(both, one.predict(learner, params, key, eps))
    chunks = [c for _, _, part in ev._arrays[key] for c in part]
    assert {next(iter(c["user"].devices())) for c in chunks} == set(jax.devices()[:2])  # both really ran
    # another chunk size (the CPU default 16 against the accelerators' 128): the same predictions
    # up to float rounding (a vmap of another width may order its reductions differently)
    big = Evaluator(tables, chunk=128, label=st.scen.label, buckets=3)
    np.testing.assert_allclose(both, big.predict(learner, params, key, eps), rtol=0, atol=1e-5)


def test_the_fold_ins_solve_without_lapack_so_two_devices_cannot_starve_the_thread_pool(st):
  """XLA's CPU LAPACK kernels wait inside the intra-op pool (as many threads as cores): one such
  wait per device at once hung a run. The fold-ins' support solve is plain XLA (spd_solve)."""
  from metarec_jax.evaluate import make_predict_fn
  from metarec_jax.learners.foldin import spd_solve

  rng = np.random.default_rng(0)
  for n in (1, 9, 25):
    x = rng.standard_normal((3 * n, n))
    a, b = x.T @ x + 3.0 * np.eye(n), rng.standard_normal(n)
    np.testing.assert_allclose(
      jax.jit(spd_solve)(a.astype(np.float32), b.astype(np.float32)), np.linalg.solve(a, b), rtol=2e-4, atol=1e-5
    )
  for name in ("als_foldin", "bias_foldin"):
    best = st.select(name)
    chunk = {k: v[:4] for k, v in st.scen.val.arrays().items()}
    hlo = make_predict_fn(best["learner"]).lower(best["params"], st.data["tables"], chunk).as_text()
    assert "custom_call" not in hlo, name
  assert "custom_call" in jax.jit(jax.numpy.linalg.solve).lower(a, b).as_text()  # what the check would see


def test_a_split_goes_to_the_device_without_compiling_a_program_per_array(st):
  """Host arrays are placed (`jax.device_put`), not converted by `jnp.asarray`, which compiles a
  copy program for every shape and dtype: dozens of programs in an ML-1M run's set-up."""
  from metarec_jax.data.episodes import device_data, device_episodes

  eps = st.scen.val.take(np.arange(7))  # shapes no earlier test put on the device
  tables = {k: np.asarray(v)[:-1] for k, v in st.tables.items()}
  with compiles() as seen:
    placed = device_data(eps, tables)
    device_episodes(eps, 3)
  assert seen == []
  for k, v in eps.arrays().items():
    assert isinstance(placed["episodes"][k], jax.Array)
    np.testing.assert_array_equal(placed["episodes"][k], v)
  with compiles() as seen:  # a shape nothing else converts: what `jnp.asarray` would compile
    jax.numpy.asarray(np.zeros((7, 31, 3), np.int64))
  assert len(seen) == 1
