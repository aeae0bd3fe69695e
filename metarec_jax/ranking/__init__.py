"""The ranking protocol (`--protocol=ranking`): strong generalization on binarized feedback,
full-catalogue evaluation on the device, and its rankers (split.py, evaluate.py, baselines.py,
mult_vae.py, protocol.py)."""

from metarec_jax.ranking.baselines import SPECS as _BASELINE_SPECS
from metarec_jax.ranking.baselines import RankerSpec
from metarec_jax.ranking import maml_rank
from metarec_jax.ranking.mult_vae import mult_vae_fit, mult_vae_score


def _linear_ae_fit(x, options, val=None):
  return maml_rank.fit(x, {**options, "inner_steps": 0}, val)


RANKERS = {
  **_BASELINE_SPECS,
  "mult_vae": RankerSpec("mult_vae", "model", mult_vae_fit, mult_vae_score),
  # second-order MAML on the user vector; its grid: the inner step size
  "maml_rank": RankerSpec(
    "maml_rank", "optimisation", maml_rank.fit, maml_rank.score, tuple({"inner_lr": lr} for lr in (0.3, 1.0, 3.0))
  ),
  # the same network trained without the inner loop: the pooled network given the same inputs
  "linear_ae": RankerSpec("linear_ae", "baseline", _linear_ae_fit, maml_rank.score),
}
RANKING_BASELINES = ("popularity", "item_knn", "ease", "wmf", "mult_vae", "linear_ae")

__all__ = ["RANKERS", "RANKING_BASELINES", "RankerSpec"]
