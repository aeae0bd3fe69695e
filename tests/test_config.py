"""Config: presets, dataset defaults, validation, and the flags generated from its fields."""

import dataclasses

import pytest
from absl import flags

from metarec_jax.config import DATASET_DEFAULTS, PRESETS, Config, resolve


def test_presets_then_overrides_then_dataset_defaults():
  c = resolve("smoke")
  assert c.epochs == 2 and c.synthetic_users == 100 and c.hidden == (16,)
  assert resolve("smoke", {"epochs": 5}).epochs == 5  # what the command line gives wins
  ml1m = resolve("ml1m-melu")
  assert ml1m.dataset == "ml-1m" and ml1m.epochs == DATASET_DEFAULTS["ml-1m"]["epochs"]
  assert resolve("ml1m-melu", {"epochs": 2}).epochs == 2  # over the dataset default too
  lastfm = resolve("lastfm-tanp")
  assert lastfm.ndcg_ks == (5, 7, 10) and not lastfm.item_id_feature and lastfm.cooc_dim == 8
  assert {"popularity", "cooc_knn"} <= set(lastfm.baselines)
  assert set(PRESETS) >= {"default", "smoke", "ml1m-melu", "lastfm-tanp"}
  with pytest.raises(ValueError, match="Unsupported preset: 'nope'; choose one of default"):
    resolve("nope")


def test_every_preset_is_a_valid_config():
  for name in PRESETS:
    resolve(name).validate()


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("learner", "nope", "Unsupported learner: 'nope'"),
    ("model", "mlp", "model must be one of content, cf, hybrid"),
    ("init", "warm", "init must be one of pooled, scratch"),
    ("baselines", ("nope",), "Unsupported baseline: 'nope'"),
    ("base", "item_mean", "base must be one of"),
    ("ndcg_ks", (11,), "must not exceed the query size"),
  ],
)
def test_validation_names_the_field(field, value, message):
  with pytest.raises(ValueError, match=message):
    dataclasses.replace(Config(), **{field: value}).validate()


def test_every_field_is_a_flag_with_its_default_and_help():
  from experiments import config_flags

  for f in dataclasses.fields(Config):
    flag = flags.FLAGS[f.name]
    assert flag.help.endswith(f.metadata["help"])  # (an enum's help starts with its choices)
    parsed = config_flags.parse_value(f.name, config_flags.FIELD_TYPES[f.name], flag.default)
    assert parsed == f.default, f.name
  assert "enum" in flags.FLAGS["dataset"].flag_type() and "ml-100k" in flags.FLAGS["dataset"].parser.enum_values


def test_flags_parse_into_the_config_and_bad_lists_are_one_error():
  from experiments import config_flags

  fl = flags.FLAGS
  fl.unparse_flags()
  try:
    fl(["prog", "--preset=smoke", "--hidden=8,4", "--inner_lr=0.2", "--baselines=", "--ndcg_ks=1,2"])
    c = config_flags.config_from_flags()
    assert c.hidden == (8, 4) and c.inner_lr == 0.2 and c.baselines == () and c.ndcg_ks == (1, 2)
    assert c.epochs == 2  # from the preset
    fl.unparse_flags()
    fl(["prog", "--ndcg_ks=1,x"])
    with pytest.raises(ValueError, match="--ndcg_ks must be a comma-separated list of integers, got '1,x'"):
      config_flags.config_from_flags()
  finally:
    fl.unparse_flags()
