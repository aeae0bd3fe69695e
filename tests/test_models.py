import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarec_jax.data.schema import FieldSpec
from metarec_jax.models import create_model
from metarec_jax.models.content import embed_field

FIELDS = (FieldSpec("user/gender", "categorical", 2), FieldSpec("item/genre", "multihot", 4))


def test_multihot_is_mean_of_valid_rows():
  table = jnp.arange(8.0).reshape(4, 2)
  spec = FIELDS[1]
  out = embed_field(table, spec, jnp.array([[1, 3, -1], [-1, -1, -1]]))
  np.testing.assert_allclose(out[0], (table[1] + table[3]) / 2)
  np.testing.assert_allclose(out[1], [0.0, 0.0])


def _x():
  return {"user/gender": jnp.array([0, 1, 1]), "item/genre": jnp.array([[0, 2], [1, -1], [3, -1]])}


def test_content_model_shapes_and_param_paths():
  model = create_model("content", fields=FIELDS, embed_dim=3, hidden=(5,), output_bias=3.5)
  params = model.init(jax.random.key(0), _x())
  p = params["params"]
  assert p["embed"]["user_gender"].shape == (2, 3) and p["embed"]["item_genre"].shape == (4, 3)
  assert p["hidden_0"]["kernel"].shape == (6, 5) and p["out"]["bias"].tolist() == [3.5]
  assert model.apply(params, _x()).shape == (3,)


def test_linear_part_adds_per_id_biases():
  model = create_model("content", fields=FIELDS, embed_dim=3, hidden=(5,), linear=True)
  params = model.init(jax.random.key(0), _x())
  table = params["params"]["embed"]["user_gender"]
  assert table.shape == (2, 4) and (table[:, -1] == 0).all()  # bias column starts at zero
  base = model.apply(params, _x())
  bumped = jax.tree_util.tree_map_with_path(
    lambda path, v: v.at[1, -1].add(0.7) if "user_gender" in str(path) else v, params
  )
  np.testing.assert_allclose(model.apply(bumped, _x()) - base, [0.0, 0.7, 0.7], atol=1e-6)


def test_unknown_model_lists_choices():
  with pytest.raises(ValueError, match="Unsupported model: 'x'; choose one of content"):
    create_model("x", fields=FIELDS)


def _factor(kind, **kw):
  model = create_model(kind, fields=FIELDS, embed_dim=3, hidden=(5,), output_bias=3.5, linear=True, rank=4, **kw)
  return model, model.init(jax.random.key(0), _x())


def test_cf_is_a_dot_product_plus_biases():
  model, params = _factor("cf")
  p = params["params"]
  assert set(p) == {"embed", "item_proj", "user", "user_proj"}
  assert p["user"]["p"].shape == (4,) and p["user"]["b"].shape == ()
  x = _x()
  base = model.apply(params, x)
  # r is linear in the user vector: moving p_0 by d moves r by <d, q_i>.
  d = jnp.array([0.3, -0.2, 0.5, 0.1])
  moved = jax.tree_util.tree_map_with_path(lambda path, v: v + d if "'p'" in str(path) else v, params)
  delta = model.apply(moved, x) - base
  # recover q_i: with p_0 = e_k and no user features or biases, r - mu = q_ik
  zero_user = jax.tree_util.tree_map_with_path(
    lambda path, v: jnp.zeros_like(v) if ("user_proj" in str(path) or "'b'" in str(path) or "'p'" in str(path)) else v,
    params,
  )
  nobias = jax.tree_util.tree_map_with_path(
    lambda path, v: v.at[:, -1].set(0.0) if "'embed'" in str(path) else v, zero_user
  )
  qs = []
  for k in range(4):
    e = jax.tree_util.tree_map_with_path(lambda path, v: v.at[k].set(1.0) if "'p'" in str(path) else v, nobias)
    qs.append(model.apply(e, x) - 3.5)
  np.testing.assert_allclose(delta, jnp.stack(qs, -1) @ d, rtol=1e-5, atol=1e-6)
  # the user bias b_0 shifts every prediction
  shifted = jax.tree_util.tree_map_with_path(lambda path, v: v + 0.4 if "'b'" in str(path) else v, params)
  np.testing.assert_allclose(model.apply(shifted, x) - base, 0.4, atol=1e-6)


def test_hybrid_mixes_cf_and_content_with_alpha():
  x = _x()
  cf_only, params1 = _factor("hybrid", alpha=1.0)
  content_only, params0 = _factor("hybrid", alpha=0.0)
  cf, cf_params = _factor("cf")
  # Same key, same param tree for the shared parts: alpha = 1 is exactly the cf model.
  shared = {k: params1["params"][k] for k in cf_params["params"]}
  np.testing.assert_allclose(cf_only.apply(params1, x), cf.apply({"params": shared}, x), rtol=1e-6)
  half, _ = _factor("hybrid", alpha=0.5)
  np.testing.assert_allclose(
    half.apply(params1, x), 0.5 * cf_only.apply(params1, x) + 0.5 * content_only.apply(params1, x), rtol=1e-5
  )
  learned, lp = _factor("hybrid")
  assert float(jax.nn.sigmoid(lp["params"]["mix"]["logit"])) == pytest.approx(0.5)
  assert learned.head_scopes == ("user", "hidden_0", "out")
  assert _factor("hybrid", adapt_alpha=True)[0].head_scopes[-1] == "mix"


def test_head_adaptation_of_cf_is_the_user_vector_only():
  from flax import traverse_util
  from metarec_jax.learners.maml import adapt_mask

  model, params = _factor("cf")
  mask = traverse_util.flatten_dict(adapt_mask(params, "head", model.head_scopes))
  assert sorted(p for p, m in mask.items() if m) == [("params", "user", "b"), ("params", "user", "p")]
  with pytest.raises(ValueError, match="adapt=last adapts the output layer 'out', which this model does not have"):
    adapt_mask(params, "last", model.head_scopes)
  with pytest.raises(ValueError, match="hybrid alpha must be in"):
    _factor("hybrid", alpha=1.5)
