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
      lambda path, v: v.at[1, -1].add(0.7) if "user_gender" in str(path) else v, params)
  np.testing.assert_allclose(model.apply(bumped, _x()) - base, [0.0, 0.7, 0.7], atol=1e-6)


def test_unknown_model_lists_choices():
  with pytest.raises(ValueError, match="Unsupported model: 'x'; choose one of content"):
    create_model("x", fields=FIELDS)
