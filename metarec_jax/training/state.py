"""The train state: `MetaTrainState` (what the jitted step reads and returns) inside
`FitState`, the one object a checkpoint saves and a resume restores."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


class MetaTrainState(flax.struct.PyTreeNode):
  step: jnp.ndarray
  params: Any
  opt_state: Any
  rng: jnp.ndarray
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


def create_train_state(rng, params, tx) -> MetaTrainState:
  return MetaTrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng, tx=tx)


@dataclasses.dataclass(frozen=True, eq=False)
class Progress:
  """The fit loop's bookkeeping (JSON in a checkpoint). `criterion` values are the label
  mode's validation metric (MAE, or log loss for binary labels); lower is better."""

  epoch: int = 1  # the epoch under way
  row: int = 0  # meta-batches of it done
  losses: tuple[float, ...] = ()  # their training losses
  best_val: float | None = None
  best_epoch: int = 0
  best_step: int = 0
  bad_epochs: int = 0  # epochs since the best
  train_time: float = 0.0  # seconds of stepping so far
  last_finite: float | None = None  # the last finite training loss (for the NaN guard's message)
  last_val: float | None = None
  records: tuple[dict, ...] = ()  # the metrics.jsonl lines of this fit

  def to_json(self) -> dict:
    return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in dataclasses.fields(self)}

  @classmethod
  def from_json(cls, d: dict) -> "Progress":
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class FitState(flax.struct.PyTreeNode):
  """Everything a fit carries from step to step and a resume needs."""

  train: MetaTrainState
  epoch_key: jnp.ndarray  # the key the current epoch's task order is drawn from
  best_params: Any  # the parameters of the best validation criterion so far
  progress: Progress = flax.struct.field(pytree_node=False)

  def arrays(self) -> dict:
    """The array part as a plain tree (keys as raw data), what a checkpoint stores."""
    t = self.train
    return {
      "params": t.params,
      "opt_state": t.opt_state,
      "step": t.step,
      "rng": jax.random.key_data(t.rng),
      "epoch_key": jax.random.key_data(self.epoch_key),
      "best_params": self.best_params,
    }

  def with_arrays(self, a: dict, progress: Progress) -> "FitState":
    train = self.train.replace(
      params=a["params"], opt_state=a["opt_state"], step=a["step"], rng=jax.random.wrap_key_data(a["rng"])
    )
    return self.replace(
      train=train, epoch_key=jax.random.wrap_key_data(a["epoch_key"]), best_params=a["best_params"], progress=progress
    )
