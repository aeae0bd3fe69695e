"""Length buckets (data/buckets.py): the split, the meta-gradient, and one compile per bucket."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarec_jax.config import resolve
from metarec_jax.data.buckets import bucket_sizes, make_bucket_order, pack_support, split_by_length
from metarec_jax.data.episodes import featurize_episodes
from metarec_jax.setup import build_setup

from helpers import compiles


@pytest.fixture(scope="module")
def setup():
  config = resolve("smoke", {"synthetic_users": 160, "length_buckets": 3, "meta_batch_size": 8})
  return build_setup(config)


def test_bucket_sizes_are_quantiles_rounded_up_and_end_at_the_width():
  lengths = np.array([3, 5, 9, 17, 30, 31, 60, 88])
  # quantiles 0.25, 0.5, 0.75, 1: 8, 23.5, 37.5, 88 -> 8, 24, 40, 88, and the padded width
  assert bucket_sizes(lengths, 4, 90) == (8, 24, 40, 88, 90)
  assert bucket_sizes(lengths, 1, 90) == (90,) and bucket_sizes(lengths, 0, 90) == (90,)


def test_every_task_is_in_one_bucket_with_its_whole_support(setup):
  train = setup.scen.train
  b = split_by_length(train, 3)
  assert len(b) >= 2 and b.sizes[-1] <= train.support_mask.shape[1]
  everyone = np.concatenate(b.members)
  assert sorted(everyone) == list(range(len(train)))
  for size, idx, ep in zip(b.sizes, b.members, b.episodes):
    assert ep.support_item.shape[1] == size
    np.testing.assert_array_equal(ep.support_mask.sum(1), train.support_mask[idx].sum(1))
    np.testing.assert_array_equal(ep.query_item, train.query_item[idx])
  # a support with gaps (a capped one) is packed first: the same valid entries, in order
  gaps = dataclasses.replace(train, support_mask=train.support_mask & (np.arange(train.support_mask.shape[1]) % 2 == 0))
  packed = pack_support(gaps)
  for t in range(len(train)):
    np.testing.assert_array_equal(
      packed.support_item[t][packed.support_mask[t]], gaps.support_item[t][gaps.support_mask[t]]
    )
    assert not np.any(np.diff(packed.support_mask[t].astype(int)) > 0)  # valid entries first


def test_bucketed_evaluation_gives_the_padded_predictions(setup):
  from metarec_jax.evaluate import Evaluator

  learner = setup.make("maml")
  params = setup.init_params(learner)
  eps = setup.scen.test["user_cold"]
  plain = Evaluator(setup.data["tables"], chunk=16, label=setup.scen.label)
  bucketed = Evaluator(setup.data["tables"], chunk=16, label=setup.scen.label, buckets=3)
  for key, ep in (("full", eps), ("cap3", eps.cap_support(3))):  # the key: the split's cache entry
    np.testing.assert_allclose(
      bucketed.predict(learner, params, key, ep), plain.predict(learner, params, key, ep), rtol=1e-5, atol=1e-5
    )
  assert len(bucketed._arrays["cap3"]) == 1  # a support of 3 fits the smallest bucket


@pytest.mark.parametrize("name", ["maml", pytest.param("in_context", marks=pytest.mark.slow)])
def test_a_bucketed_batch_has_the_padded_batchs_meta_gradient(setup, name):
  b = split_by_length(setup.scen.train, 3)
  tables = setup.data["tables"]
  learner = setup.make(name)
  params = setup.init_params(learner)
  idx = b.members[0][:6]
  full = featurize_episodes(tables, {k: jnp.asarray(v[idx]) for k, v in setup.scen.train.arrays().items()})
  short = featurize_episodes(tables, {k: jnp.asarray(v[:6]) for k, v in b.episodes[0].arrays().items()})
  assert short.support.y.shape[1] < full.support.y.shape[1]
  grad = jax.jit(jax.grad(lambda p, ep: learner.meta_loss(p, ep, jax.random.key(0))[0]))
  g_full, g_short = grad(params, full), grad(params, short)
  for a, c in zip(jax.tree.leaves(g_full), jax.tree.leaves(g_short)):
    np.testing.assert_allclose(a, c, rtol=2e-4, atol=2e-6)


def test_the_order_draws_each_meta_batch_from_one_bucket_and_covers_every_task():
  order = make_bucket_order([5, 12, 3], 4)
  _, rows, ids = jax.device_get(order(jax.random.key(0)))
  assert rows.shape == (2 + 3 + 1, 4) and sorted(ids.tolist()) == [0, 0, 1, 1, 1, 2]
  for b, n in enumerate([5, 12, 3]):
    seen = rows[ids == b].ravel()
    assert seen.max() < n and set(seen.tolist()) == set(range(n))


def test_training_compiles_once_per_bucket(setup, monkeypatch):
  from metarec_jax.training import loop

  traces, parts = [], []
  real = loop.make_train_step
  monkeypatch.setattr(
    loop,
    "make_train_step",
    lambda *a, **kw: parts.append(kw["parts"]) or real(*a, **kw, on_trace=lambda: traces.append(1)),
  )
  learner = setup.make("maml")
  config = dataclasses.replace(setup.config, epochs=3)
  loop.fit(
    learner,
    setup.init_params(learner),
    setup.data,
    config,
    n_tasks=len(setup.scen.train),
    val_score=None,
    select="mae",
  )
  # one trace per bucket (the default splits a step in two parts, PartStep, one program), none
  # after the first epoch, though the second part runs on another device
  assert parts == [2] and len(setup.data["buckets"]) >= 2
  assert len(traces) == len(setup.data["buckets"])


def test_steps_compiled_ahead_are_not_traced_again_by_the_fit(setup, monkeypatch):
  from metarec_jax.training import loop

  traces = []
  real = loop.make_train_step
  monkeypatch.setattr(loop, "make_train_step", lambda *a, **kw: real(*a, **kw, on_trace=lambda: traces.append(1)))
  learner, config = setup.make("maml"), dataclasses.replace(setup.config, epochs=2)
  params = setup.init_params(learner)
  kw = dict(n_tasks=len(setup.scen.train), val_score=None, select="mae")
  steps = loop.make_steps(learner, setup.data, config, kw["n_tasks"], params)
  assert steps.step_fn.parts == 2 and steps.helper == jax.devices()[1]
  compiled = []
  monkeypatch.setattr(
    jax.stages.Lowered,
    "compile",
    lambda self, *a, real=jax.stages.Lowered.compile: compiled.append(1) or real(self, *a),
  )
  loop.compile_steps(steps, params, config)  # what protocol's Deferred runs in its thread
  n = len(traces)
  assert n == len(setup.data["buckets"])  # each bucket's part program, for both parts
  # compiled for this device, loaded on the helper (compiled there where the persistent cache served
  # it from before the bytes were kept: `PartStep._load_far`), and the update that adds them
  assert len(compiled) == 2 * len(setup.data["buckets"]) + steps.step_fn.far_compiled
  fresh = lambda: jax.tree.map(jnp.copy, params)  # noqa: E731 (a fit donates its start)
  with compiles() as seen:
    ahead, _ = loop.fit(learner, fresh(), setup.data, config, steps=steps, **kw)
  assert len(traces) == n  # the fit stepped with the compiled steps: no trace,
  assert not [m for m in seen if "part_sums" in m or "combine" in m], seen  # no compile either
  with compiles() as seen:  # a fit that makes its own steps compiles them: the observer sees it
    plain, _ = loop.fit(learner, fresh(), setup.data, config, **kw)
  assert [m for m in seen if "part_sums" in m]
  jax.tree.map(np.testing.assert_array_equal, ahead, plain)


def test_the_cpu_devices_and_the_baselines_device(monkeypatch):
  from metarec_jax import runtime

  assert runtime.cpu_device_count(3) == 3
  assert runtime.cpu_device_count(-1) is None  # XLA_FLAGS forces the tests' 4 devices: left alone
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0})
  assert runtime.cpu_device_count(-1) == 1  # one usable core (a pinned compare --jobs worker)
  monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: set(range(16)))
  assert runtime.cpu_device_count(-1) == 2
  assert runtime.baseline_device(True, 1) == jax.devices()[1]
  assert runtime.baseline_device(False, 1) is None and runtime.baseline_device(True, 2) is None


def test_malloc_arenas_are_capped_unless_the_environment_sets_them(monkeypatch):
  from metarec_jax import runtime

  monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
  assert runtime.limit_malloc_arenas() is True  # glibc on Linux: mallopt accepted the cap
  monkeypatch.setenv("MALLOC_ARENA_MAX", "2")  # glibc read it at start-up: left to it
  assert runtime.limit_malloc_arenas() is False


def test_the_device_defaults_resolve_by_data_size_and_backend():
  from metarec_jax import runtime
  from metarec_jax.data.buckets import n_buckets

  assert (n_buckets(-1, 1999), n_buckets(-1, 2000), n_buckets(3, 10), n_buckets(0, 10**5)) == (0, 4, 3, 0)
  assert jax.default_backend() == "cpu"
  assert runtime.task_chunk(-1, 32) == 4  # CPU: chunks of 4
  assert runtime.task_chunk(-1, 6) == 0  # 4 does not divide the meta-batch: one vmap
  assert runtime.task_chunk(-1, 4) == 0  # a single chunk is the whole meta-batch
  assert (runtime.task_chunk(0, 32), runtime.task_chunk(8, 32)) == (0, 8)
  mesh = runtime.task_mesh(2)  # sharded over host devices: each device's share in one vmap
  assert runtime.task_chunk(-1, 32, mesh) == 0 and runtime.task_chunk(4, 32, mesh) == 4


def test_freed_heap_pages_go_back_to_the_system():
  from metarec_jax import runtime

  def rss_kib():
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

  blocks = [np.ones(4096 // 8) for _ in range(40_000)]  # ~160 MiB of small heap blocks
  keep = blocks[-1]  # pins the heap's top, so free() cannot give the pages back by itself
  del blocks
  before = rss_kib()
  assert runtime.release_free_memory() is True
  assert before - rss_kib() > 50 * 1024, "malloc_trim gave less than 50 MiB back"
  del keep  # held until the trim
