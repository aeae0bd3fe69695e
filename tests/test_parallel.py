"""Device-resident training: sharded over 4 fake devices equals one device, no host->device
transfer inside the step loop, one compile, clear errors for bad device counts."""

import os
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import episode_batch, fast_first, tiny_setup
from metarec_jax import runtime
from metarec_jax.learners import create_learner
from metarec_jax.training.state import create_train_state
from metarec_jax.data.episodes import device_data
from metarec_jax.training.step import make_epoch_order, make_train_step, run_epoch


@pytest.fixture(scope="module")
def setup():
  return tiny_setup()


def _train(setup, name, mesh, steps=6, adapt="head", batch=8, task_chunk=0):
  _, scen, model, ctx, tables = setup
  learner = create_learner(name, model, inner_lr=0.1, inner_steps=2, adapt=adapt)
  params = learner.init(jax.random.key(0), episode_batch(tables, scen.train, 1), ctx)
  data = runtime.replicate(device_data(scen.train, tables), mesh)
  state = runtime.replicate(create_train_state(jax.random.key(1), params, optax.adam(1e-2)), mesh)
  traces = []
  step = make_train_step(
    learner, id_dropout=0.1, redraw=True, mesh=mesh, task_chunk=task_chunk, on_trace=lambda: traces.append(1)
  )
  key, order = make_epoch_order(len(scen.train), batch, mesh)(runtime.replicate(jax.random.key(2), mesh))
  losses = []
  for _ in range(steps):
    state, aux = step(state, data, order)
    losses.append(float(aux["loss"]))
  return state, np.array(losses), traces


@pytest.mark.parametrize("name,adapt", fast_first([("maml", "head"), ("maml", "all"), ("neural_process", "head")]))
def test_sharded_over_four_devices_equals_one_device(setup, name, adapt):
  assert len(jax.devices()) >= 4, "conftest asks XLA for 4 host devices"
  mesh = runtime.task_mesh(4)
  assert mesh.size == 4
  one, losses_one, _ = _train(setup, name, None, adapt=adapt)
  four, losses_four, traces = _train(setup, name, mesh, adapt=adapt)
  assert len(traces) == 1
  np.testing.assert_allclose(losses_four, losses_one, rtol=2e-5, atol=1e-6)
  # atol: the all-reduce's rounding, through Adam's normalised steps (each moves a parameter by
  # up to lr = 1e-3), reached 5e-6 on one entry of 8,192 (the neural process).
  chex.assert_trees_all_close(four.params, one.params, rtol=1e-4, atol=1e-5)
  # The parameters really live on all four devices.
  leaf = jax.tree.leaves(four.params)[0]
  assert len(leaf.sharding.device_set) == 4
  # And training moved them: the comparison is not between two untouched inits.
  assert losses_one[0] != losses_one[-1]


@pytest.mark.parametrize("name,devices", fast_first([("maml", 1), ("maml", 4), ("prototype", 1)]))
def test_task_chunks_give_the_same_update_as_one_vmap(setup, name, devices):
  mesh = runtime.task_mesh(devices)
  whole, losses_whole, _ = _train(setup, name, mesh, steps=4)
  chunked, losses_chunked, traces = _train(setup, name, mesh, steps=4, task_chunk=4)
  assert len(traces) == 1
  np.testing.assert_allclose(losses_chunked, losses_whole, rtol=2e-5, atol=1e-6)
  chex.assert_trees_all_close(chunked.params, whole.params, rtol=1e-4, atol=1e-6)


def _train_in_parts(setup, parts, helper, steps=6, name="maml"):
  _, scen, model, ctx, tables = setup
  learner = create_learner(name, model, inner_lr=0.1, inner_steps=2, adapt="head")
  params = learner.init(jax.random.key(0), episode_batch(tables, scen.train, 1), ctx)
  data = device_data(scen.train, tables)
  state = create_train_state(jax.random.key(1), params, optax.adam(1e-2))
  step = make_train_step(learner, id_dropout=0.1, redraw=True, task_chunk=2, parts=parts)
  _, order = make_epoch_order(len(scen.train), 8)(jax.random.key(2))
  far = None
  if helper:
    device = jax.devices()[1]
    far = (device, jax.device_put(data, device), jax.device_put(order, device))
  state, losses = run_epoch(step, state, data, order, 0, steps, None, far)
  return state, np.asarray(losses)


@pytest.mark.parametrize("parts", fast_first([2, 4]))
def test_a_step_in_parts_gives_the_one_call_update_wherever_its_parts_run(setup, parts):
  one, losses_one = _train_in_parts(setup, 1, False)
  local, losses_local = _train_in_parts(setup, parts, False)
  far, losses_far = _train_in_parts(setup, parts, True)
  # Against one call: the chunks' gradients are added in another order (and id dropout and the
  # redrawn split are the same draws, or the losses would differ far more).
  np.testing.assert_allclose(losses_local, losses_one, rtol=2e-5, atol=1e-6)
  chex.assert_trees_all_close(local.params, one.params, rtol=1e-4, atol=1e-5)
  # Where the parts run changes no bit; the state stays on the first device.
  np.testing.assert_array_equal(losses_far, losses_local)
  jax.tree.map(np.testing.assert_array_equal, far.params, local.params)
  assert jax.tree.leaves(far.params)[0].devices() == {jax.devices()[0]}
  assert losses_one[0] != losses_one[-1]


def test_a_step_in_parts_needs_whole_chunks_per_part_and_no_mesh(setup):
  _, scen, model, ctx, tables = setup
  learner = create_learner("maml", model, inner_lr=0.1, inner_steps=1)
  with pytest.raises(ValueError, match="needs task chunks"):
    make_train_step(learner, parts=2)
  with pytest.raises(ValueError, match="does not combine with a mesh"):
    make_train_step(learner, parts=2, task_chunk=2, mesh=runtime.task_mesh(2))
  with pytest.raises(ValueError, match=r"meta_batch_size=8 in task chunks of 4 does not split into 3 equal parts"):
    _train_parts_of(setup, learner, parts=3, chunk=4)


def _train_parts_of(setup, learner, parts, chunk):
  _, scen, model, ctx, tables = setup
  params = learner.init(jax.random.key(0), episode_batch(tables, scen.train, 1), ctx)
  state = create_train_state(jax.random.key(1), params, optax.adam(1e-2))
  _, order = make_epoch_order(len(scen.train), 8)(jax.random.key(2))
  return make_train_step(learner, task_chunk=chunk, parts=parts)(state, device_data(scen.train, tables), order)


def test_step_parts_resolve_by_learner_and_devices():
  assert len(jax.devices()) >= 2  # the tests' 4 host devices: a second one for the second part
  assert runtime.step_parts(-1, 32, 4, inner_loop=True) == 2
  assert runtime.step_parts(-1, 32, 4, inner_loop=False) == 1  # the pooled network's cheap step
  assert runtime.step_parts(-1, 32, 0, inner_loop=True) == 1  # no task chunks
  assert runtime.step_parts(-1, 12, 4, inner_loop=True) == 1  # 3 chunks: no even split
  assert runtime.step_parts(-1, 32, 4, runtime.task_mesh(2), inner_loop=True) == 1
  assert runtime.step_parts(3, 32, 4, inner_loop=False) == 3


def test_task_chunk_must_divide_the_meta_batch(setup):
  with pytest.raises(ValueError, match=r"meta_batch_size=8 does not divide into task chunks of 3"):
    _train(setup, "maml", None, steps=1, task_chunk=3)


def test_meta_batch_must_divide_by_device_count(setup):
  with pytest.raises(ValueError, match=r"meta_batch_size=6 does not divide by the 4 devices"):
    _train(setup, "maml", runtime.task_mesh(4), steps=1, batch=6)


def test_too_many_devices_is_a_clear_error():
  with pytest.raises(ValueError, match=r"devices=99 but only \d+ cpu device"):
    runtime.task_mesh(99)


def test_step_loop_makes_no_host_to_device_transfer(setup):
  _, scen, model, ctx, tables = setup
  learner = create_learner("maml", model, inner_lr=0.1, inner_steps=1)
  params = learner.init(jax.random.key(0), episode_batch(tables, scen.train, 1), ctx)
  data = device_data(scen.train, tables)
  state = create_train_state(jax.random.key(1), params, optax.adam(1e-3))
  step = make_train_step(learner, redraw=True, id_dropout=0.1)
  order_fn = make_epoch_order(len(scen.train), 8)
  key = jax.random.key(2)
  key, order = order_fn(key)
  state, _ = run_epoch(step, state, data, order)  # compile outside the guard
  with jax.transfer_guard("disallow"):
    for _ in range(2):
      key, order = order_fn(key)
      state, losses = run_epoch(step, state, data, order)
  assert int(state.step) == 3 * order.shape[0]
  assert np.isfinite(np.asarray(losses)).all()
  # The guard is live: an implicit host->device copy inside it is refused.
  with jax.transfer_guard("disallow"), pytest.raises(Exception, match="host-to-device"):
    step(state, data, np.asarray(order))


def test_the_fit_loop_steps_through_run_epoch_with_no_host_to_device_transfer(setup, monkeypatch):
  from helpers import fit_on
  from metarec_jax.config import Config
  from metarec_jax.training import loop

  _, scen, model, ctx, tables = setup
  learner = create_learner("maml", model, inner_lr=0.1, inner_steps=1)
  params = learner.init(jax.random.key(0), episode_batch(tables, scen.train, 1), ctx)
  calls = []

  def guarded(step_fn, state, data, order, start=0, stop=None, schedule=None, helper=None):
    if calls:  # the first call compiles the step
      with jax.transfer_guard_host_to_device("disallow"):
        out = run_epoch(step_fn, state, data, order, start, stop, schedule, helper)
    else:
      out = run_epoch(step_fn, state, data, order, start, stop, schedule, helper)
    calls.append((start, stop))
    return out

  monkeypatch.setattr(loop, "run_epoch", guarded)
  config = Config(epochs=3, patience=3, meta_batch_size=8, eval_chunk=16)
  _, info = fit_on(learner, params, device_data(scen.train, tables), scen, config)
  n_batches = -(-len(scen.train) // 8)
  assert calls == [(0, n_batches)] * 3 and info["steps"] == 3 * n_batches


def test_epoch_order_is_a_permutation_with_wraparound():
  key, order = make_epoch_order(10, 4)(jax.random.key(0))
  order = np.asarray(order)
  assert order.shape == (3, 4)
  flat = order.reshape(-1)
  assert sorted(flat[:10].tolist()) == list(range(10))
  np.testing.assert_array_equal(flat[10:], flat[:2])
  _, again = make_epoch_order(10, 4)(key)
  assert not np.array_equal(np.asarray(again), order)


def test_a_one_device_program_loads_on_another_device_and_gives_its_result_there():
  d0, d1 = jax.devices()[:2]
  c = float(np.random.default_rng().uniform(1, 2))  # a program no cache has served: compiled here
  f = jax.jit(lambda w, x: jnp.tanh(x @ w) * c + jnp.arange(x.shape[1]))
  w, x = jax.device_put((jnp.full((16, 16), 0.1), jnp.ones((4, 16))), d0)
  near = f.lower(w, x).compile()
  blob = runtime.executable_bytes(near)
  far = runtime.load_on(blob, near, d1)
  assert far is not None
  out = far(*jax.device_put((w, x), d1))
  assert out.devices() == {d1}
  np.testing.assert_array_equal(out, near(w, x))
  # a program over two devices is not moved
  mesh = runtime.task_mesh(2)
  two = jax.jit(lambda a: a * 2).lower(runtime.replicate(jnp.ones(4), mesh)).compile()
  assert runtime.load_on(runtime.executable_bytes(two), two, d1) is None
  assert runtime.load_on(b"not an executable", near, d1) is None


def _parts_on_two_devices(setup, monkeypatch, path, inner_lr):
  """(losses, params, the step) of 4 steps of a step in 2 parts, the second on device 1, with
  the part program's kept bytes at `path`. Nothing goes into the persistent cache: `inner_lr`
  makes a program it has not served."""
  with monkeypatch.context() as m:
    m.setattr(runtime, "program_path", lambda lowered: str(path))
    _, scen, model, ctx, tables = setup
    learner = create_learner("maml", model, inner_lr=inner_lr, inner_steps=1, adapt="head")
    params = learner.init(jax.random.key(0), episode_batch(tables, scen.train, 1), ctx)
    data = device_data(scen.train, tables)
    state = create_train_state(jax.random.key(1), params, optax.adam(1e-2))
    step = make_train_step(learner, id_dropout=0.1, task_chunk=2, parts=2)
    _, order = make_epoch_order(len(scen.train), 8)(jax.random.key(2))
    device = jax.devices()[1]
    far = (device, jax.device_put(data, device), jax.device_put(order, device))
    floor = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1e9)
    try:
      step.compile(state, data, order, far)
      state, losses = run_epoch(step, state, data, order, 0, 4, None, far)
    finally:
      jax.config.update("jax_persistent_cache_min_compile_time_secs", floor)
    return np.asarray(losses), state.params, step


def test_the_second_part_is_loaded_from_the_first_parts_program_and_its_bytes_kept(setup, monkeypatch, tmp_path):
  lr = float(np.random.default_rng().uniform(0.05, 0.1))  # a program no cache has served
  path = tmp_path / "part"
  losses, params, step = _parts_on_two_devices(setup, monkeypatch, path, lr)
  assert step.far_compiled == 0 and path.exists()  # one compile for both devices; bytes kept
  again, params_again, step = _parts_on_two_devices(setup, monkeypatch, path, lr)
  assert step.far_compiled == 0  # loaded from the kept bytes
  np.testing.assert_array_equal(again, losses)
  jax.tree.map(np.testing.assert_array_equal, params_again, params)

  # Kept bytes that lack the code (as a program the persistent cache served serializes) load but
  # fail the check: this run's compile serializes whole and replaces them. (Bytes that do not load
  # at all: runtime.load_on gives None, tested above.)
  complete = path.read_bytes()
  hollow = runtime.executable_bytes(next(iter(step._far.values())))  # the loaded copy, serialized again
  assert len(hollow) < len(complete)
  path.write_bytes(hollow)
  got, params_got, step = _parts_on_two_devices(setup, monkeypatch, path, lr)
  assert step.far_compiled == 0 and len(path.read_bytes()) > len(hollow)  # whole bytes again
  np.testing.assert_array_equal(got, losses)
  # Where this device's program also came without its code, the helper's is compiled for it.
  path.write_bytes(hollow)
  with monkeypatch.context() as m:
    m.setattr(runtime, "executable_bytes", lambda compiled: hollow)
    got, params_got, step = _parts_on_two_devices(setup, monkeypatch, path, lr)
  assert step.far_compiled == 1
  np.testing.assert_array_equal(got, losses)
  jax.tree.map(np.testing.assert_array_equal, params_got, params)


def test_the_persistent_cache_keeps_every_compile_however_short(tmp_path):
  """A warm run loads even its millisecond programs (an ML-1M run compiles ~150 of them: several
  seconds of XLA and their traces' lowering when they are not kept)."""
  import subprocess
  import sys

  cache = tmp_path / "cache"
  code = (
    "from metarec_jax import runtime\n"
    f"runtime.configure(compilation_cache_dir={str(cache)!r})\n"
    "import jax\n"
    "print(float(jax.jit(lambda x: x * 3 + 1)(2.0)))\n"
  )
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and proc.stdout.strip() == "7.0", proc.stderr[-2000:]
  assert [f for f in os.listdir(cache) if not f.startswith("metarec")], "the tiny program was not cached"
