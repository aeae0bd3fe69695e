import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util
from jax.test_util import check_grads

from helpers import episode_batch, fast_first, task, tiny_setup, to_f64
from metarec_jax.learners import adapt_mask, create_learner, masked_mse
from metarec_jax.training.state import create_train_state
from metarec_jax.data.episodes import device_data
from metarec_jax.training.step import make_train_step


@pytest.fixture(scope="module")
def setup():
  return tiny_setup()


@pytest.mark.parametrize("adapt", fast_first(["head", "all"]))
def test_second_order_meta_gradient_matches_finite_differences(adapt):
  # A linear head (no hidden layer) keeps the meta-loss smooth for finite differences.
  _, scen, model, ctx, tables = tiny_setup(hidden=(), embed_dim=2, n_users=40, n_items=60)
  with jax.enable_x64(True):
    learner = create_learner("maml", model, inner_lr=0.3, inner_steps=2, adapt=adapt)
    ep = to_f64(episode_batch(tables, scen.train, 3))
    params = to_f64(learner.init(jax.random.key(0), ep, ctx))
    f = jax.jit(lambda p: learner.meta_loss(p, ep, None)[0])
    check_grads(f, (params,), order=2, modes=["rev"], atol=1e-5, rtol=1e-5)


def test_first_order_differs_from_second_order(setup):
  _, scen, model, ctx, tables = setup
  ep = episode_batch(tables, scen.train, 4)
  so = create_learner("maml", model, inner_lr=0.5, inner_steps=2)
  fo = create_learner("fomaml", model, inner_lr=0.5, inner_steps=2)
  params = so.init(jax.random.key(0), ep, ctx)
  g_so = jax.jit(jax.grad(lambda p: so.meta_loss(p, ep, None)[0]))(params)
  g_fo = jax.jit(jax.grad(lambda p: fo.meta_loss(p, ep, None)[0]))(params)
  w_so = g_so["model"]["params"]["hidden_0"]["kernel"]
  w_fo = g_fo["model"]["params"]["hidden_0"]["kernel"]
  # The second-order term (the inner Hessian) changes the meta-gradient of the adapted layers.
  assert not np.allclose(w_so, w_fo, atol=1e-7)
  assert np.isfinite(np.asarray(w_fo)).all() and np.abs(np.asarray(w_fo)).sum() > 0


@pytest.mark.parametrize("adapt", fast_first(["head", "all"]))
def test_vmap_equals_python_loop(setup, adapt):
  _, scen, model, ctx, tables = setup
  learner = create_learner("maml", model, inner_lr=0.1, inner_steps=2, adapt=adapt)
  ep = episode_batch(tables, scen.train, 5)
  params = learner.init(jax.random.key(1), ep, ctx)
  vg = jax.jit(jax.value_and_grad(lambda p, e: learner.meta_loss(p, e, None)[0]))
  batched, g_batched = vg(params, ep)
  per_task = [vg(params, jax.tree.map(lambda a: a[t : t + 1], ep)) for t in range(5)]
  np.testing.assert_allclose(batched, np.mean([l for l, _ in per_task]), rtol=1e-5)
  g_loop = jax.tree.map(lambda *gs: sum(gs) / 5, *[g for _, g in per_task])
  chex.assert_trees_all_close(g_batched, g_loop, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("adapt", fast_first(["head", "all"]))
def test_one_inner_step_lowers_support_loss(setup, adapt):
  _, scen, model, ctx, tables = setup
  learner = create_learner("maml", model, inner_lr=0.05, inner_steps=1, adapt=adapt)
  ep = episode_batch(tables, scen.train, 6)
  params = learner.init(jax.random.key(2), ep, ctx)
  for t in range(6):
    s = task(ep, t).support
    before = masked_mse(
      learner.predict(params, learner.adapt(params, s._replace(mask=s.mask & False)), s.x), s.y, s.mask
    )
    after = masked_mse(learner.predict(params, learner.adapt(params, s), s.x), s.y, s.mask)
    assert float(after) < float(before)


@pytest.mark.parametrize("linear", [False, True])
def test_adapting_gathered_rows_equals_adapting_whole_tables(linear):
  """adapt="all" gathers the task's embedding rows; the result must equal plain SGD on all params."""
  _, scen, model, ctx, tables = tiny_setup(linear=linear)
  lr, steps = 0.2, 3
  learner = create_learner("maml", model, inner_lr=lr, inner_steps=steps, adapt="all")
  ep = episode_batch(tables, scen.train, 3)
  params = learner.init(jax.random.key(3), ep, ctx)
  assert model.fields[-1].vocab_size > ep.support.x["item/id"].shape[1]  # item/id is gathered
  for t in range(3):
    e = task(ep, t)
    ours = learner.predict(params, learner.adapt(params, e.support), e.query.x)
    p = params["model"]
    for _ in range(steps):
      g = jax.grad(lambda q: masked_mse(model.apply(q, e.support.x), e.support.y, e.support.mask))(p)
      p = jax.tree.map(lambda a, b: a - lr * b, p, g)
    ref = model.apply(p, e.query.x)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_head_mask_leaves_embeddings_alone(setup):
  _, scen, model, ctx, tables = setup
  learner = create_learner("maml", model)
  params = learner.init(jax.random.key(0), episode_batch(tables, scen.train, 1), ctx)
  mask = traverse_util.flatten_dict(adapt_mask(params["model"], "head"))
  assert all(not v for k, v in mask.items() if "embed" in k)
  assert all(v for k, v in mask.items() if "embed" not in k)
  last = traverse_util.flatten_dict(adapt_mask(params["model"], "last"))
  assert {k for k, v in last.items() if v} == {("params", "out", "kernel"), ("params", "out", "bias")}
  with pytest.raises(ValueError, match="Unsupported adapt mode: 'x'; choose one of head, last, all"):
    adapt_mask(params["model"], "x")


def test_padding_does_not_change_adaptation(setup):
  _, scen, model, ctx, tables = setup
  learner = create_learner("maml", model, inner_lr=0.1, inner_steps=2)
  ep = episode_batch(tables, scen.train, 2)
  params = learner.init(jax.random.key(0), ep, ctx)
  e = task(ep, 0)
  assert not bool(e.support.mask.all())
  noisy = e.support._replace(y=jnp.where(e.support.mask, e.support.y, 100.0))
  a = learner.predict(params, learner.adapt(params, e.support), e.query.x)
  b = learner.predict(params, learner.adapt(params, noisy), e.query.x)
  np.testing.assert_allclose(a, b, rtol=1e-6)


def test_train_step_compiles_once_and_reduces_loss(setup):
  _, scen, model, ctx, tables = setup
  learner = create_learner("maml", model, inner_lr=0.1, inner_steps=1)
  traces = []
  counted = learner.__class__(
    **{**learner.__dict__, "meta_loss": lambda *a: (traces.append(1), learner.meta_loss(*a))[1]}
  )
  data = device_data(scen.train, tables)
  params = learner.init(jax.random.key(0), episode_batch(tables, scen.train, 1), ctx)
  state = create_train_state(jax.random.key(1), jax.tree.map(jnp.copy, params), optax.adam(1e-2))
  step = make_train_step(counted, id_dropout=0.1, redraw=True)
  order = (jnp.arange(30)[:, None] + jnp.arange(8)[None, :]) % len(scen.train)
  first = None
  for i in range(30):
    state, aux = step(state, data, order)
    first = first if first is not None else float(aux["loss"])
  assert len(traces) == 1
  assert int(state.step) == 30
  fixed = episode_batch(tables, scen.train, len(scen.train))
  assert float(learner.meta_loss(state.params, fixed, None)[0]) < float(learner.meta_loss(params, fixed, None)[0])


def test_unknown_learner_lists_choices():
  with pytest.raises(ValueError, match=r"Unsupported learner: 'nope'; choose one of .*maml, fomaml"):
    create_learner("nope")


@pytest.mark.parametrize(
  "name,opts",
  fast_first(
    [
      ("maml", dict(objective="maml", inner_lr=0.3, inner_steps=3)),  # the first layer on its pre-activations
      ("last", dict(objective="maml", inner_lr=0.3, inner_steps=2, adapt="last")),  # encoded once, whole steps
      ("metasgd", dict(objective="maml", inner_lr=0.2, inner_steps=2, learn_inner_lr=True)),
      ("finetune", dict(objective="pooled", inner_lr=0.2, inner_steps=4, traced_steps=True)),
    ]
  ),
)
@pytest.mark.parametrize("linear", [False, True])
def test_encoding_once_gives_the_whole_models_adaptation_and_meta_gradient(name, opts, linear):
  """`encode_once` (the default) against the model applied whole at every inner step: the same
  adapted parameters, predictions and second-order meta-gradient (float64: a float32 run can
  cross a ReLU's kink differently in a few tasks)."""
  from metarec_jax.learners.maml import make_gradient_learner, with_adapt_options

  _, scen, model, ctx, tables = tiny_setup(hidden=(8, 6), linear=linear)
  assert model.splits_at_embeddings
  with jax.enable_x64(True):
    ep = to_f64(episode_batch(tables, scen.train, 4))
    fast, whole = (make_gradient_learner(model, name=name, encode_once=e, **opts) for e in (True, False))
    params = to_f64(whole.init(jax.random.key(0), ep, ctx))
    if opts.get("traced_steps"):
      params = to_f64(with_adapt_options(params, {"inner_lr": 0.2, "inner_steps": 4}))
    adapted = [jax.jit(jax.vmap(lr.adapt, in_axes=(None, 0)))(params, ep.support) for lr in (fast, whole)]
    chex.assert_trees_all_close(adapted[0], adapted[1], rtol=1e-9, atol=1e-12)
    preds = [jax.vmap(lr.predict, in_axes=(None, 0, 0))(params, a, ep.query.x) for lr, a in zip((fast, whole), adapted)]
    np.testing.assert_allclose(preds[0], preds[1], rtol=1e-9)
    a = jax.tree.map(lambda v: v[0], adapted[0])
    if opts["objective"] == "maml":
      g_fast, g_whole = (
        jax.jit(jax.grad(lambda p, lr=lr: lr.meta_loss(p, ep, None)[0]))(params) for lr in (fast, whole)
      )
      chex.assert_trees_all_close(g_fast, g_whole, rtol=1e-8, atol=1e-12)
    start = traverse_util.flatten_dict(params["model"])
    moved = {p: float(jnp.abs(v - start[p]).max()) for p, v in a["fast"].items()}
    assert min(moved.values()) > 1e-6, moved  # every adapted layer moved: the check is not vacuous


def test_the_first_layers_steps_on_pre_activations_are_sgd_on_its_weights():
  """_gram_adapt's W - H^T A equals plain SGD on (W, b) and the rest, step by step."""
  from metarec_jax.learners.maml import _gram_adapt

  _, scen, model, ctx, tables = tiny_setup(hidden=(8,))
  with jax.enable_x64(True):
    ep = to_f64(episode_batch(tables, scen.train, 2))
    variables = to_f64(model.init(jax.random.key(1), task(ep, 0).support.x))
    s = task(ep, 1).support
    flat = traverse_util.flatten_dict(variables)
    fast = {p: v for p, v in flat.items() if "embed" not in p}
    ours = _gram_adapt(model, variables, flat, fast, s, 0.4, 3, masked_mse)
    p = variables
    for _ in range(3):
      g = jax.grad(lambda q: masked_mse(model.apply(q, s.x), s.y, s.mask))(p)
      g = traverse_util.flatten_dict(g)
      p = traverse_util.unflatten_dict(
        {k: v - 0.4 * g[k] if "embed" not in k else v for k, v in traverse_util.flatten_dict(p).items()}
      )
    ref = {k: v for k, v in traverse_util.flatten_dict(p).items() if "embed" not in k}
    assert set(ours) == set(ref)
    for k in ref:
      np.testing.assert_allclose(ours[k], ref[k], rtol=1e-9, atol=1e-12)
    assert float(jnp.abs(ours[("params", "hidden_0", "kernel")] - fast[("params", "hidden_0", "kernel")]).max()) > 1e-4
