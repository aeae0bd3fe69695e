"""Flags generated from `Config` (one per field: name, type, default, help, choices) plus
`--preset`; `config_from_flags()` applies the preset, then the flags given on the command line."""

from __future__ import annotations

import dataclasses
import types
import typing

from absl import flags

from metarec_jax.config import FIELD_GROUP, PRESETS, Config, field_types, resolve

FLAGS = flags.FLAGS


def _scalar(tp) -> tuple[type, bool]:
  """(the element type, is a list) of a field annotation, with an optional None removed."""
  args = [a for a in typing.get_args(tp) if a is not type(None)] if isinstance(tp, types.UnionType) else [tp]
  tp = args[0]
  if typing.get_origin(tp) is tuple:
    return typing.get_args(tp)[0], True
  return tp, False


def _define(field: dataclasses.Field, tp) -> None:
  elem, is_list = _scalar(tp)
  help_, choices = field.metadata.get("help", field.name), field.metadata.get("choices")
  default = field.default
  group = {"module_name": help_group(FIELD_GROUP[field.name])}  # --helpfull lists flags by concern
  if is_list:
    flags.DEFINE_list(field.name, None if default is None else [str(v) for v in default], help_, **group)
  elif elem is bool:
    flags.DEFINE_bool(field.name, default, help_, **group)
  elif elem is int:
    flags.DEFINE_integer(field.name, default, help_, **group)
  elif elem is float:
    flags.DEFINE_float(field.name, default, help_, **group)
  elif choices:
    flags.DEFINE_enum(field.name, default, list(choices), help_, **group)
  else:
    flags.DEFINE_string(field.name, default, help_, **group)


def help_group(group: str) -> str:
  """The heading a group's flags are listed under in --helpfull."""
  return f"{group} flags"


def parse_value(name: str, tp, value):
  """A flag's value as the Config field's type; a bad list entry is one clear error."""
  elem, is_list = _scalar(tp)
  if not is_list or value is None:
    return value
  try:
    return tuple(elem(v) for v in value if v != "")
  except ValueError:
    kind = {int: "integers", float: "numbers"}.get(elem, "values")
    raise ValueError(f"--{name} must be a comma-separated list of {kind}, got {','.join(value)!r}") from None


FIELD_TYPES = field_types()
for _f in dataclasses.fields(Config):
  _define(_f, FIELD_TYPES[_f.name])
flags.DEFINE_enum(
  "preset",
  "default",
  list(PRESETS),
  "Named preset (metarec_jax/presets.py); flags given on the command line override it.",
  module_name=help_group("data"),
)


def given() -> dict:
  """The Config fields set on the command line, parsed."""
  return {
    f.name: parse_value(f.name, FIELD_TYPES[f.name], FLAGS[f.name].value)
    for f in dataclasses.fields(Config)
    if FLAGS[f.name].present
  }


def config_from_flags(**overrides) -> Config:
  """The run's Config: --preset, then the flags given, then `overrides`; the dataset's
  defaults fill whatever none of them sets."""
  return resolve(FLAGS.preset, {**given(), **overrides})
