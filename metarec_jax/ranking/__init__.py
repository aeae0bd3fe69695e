"""The ranking protocol (`--protocol=ranking`): strong generalization on binarized feedback,
full-catalogue evaluation on the device, and its rankers (split.py, evaluate.py, baselines.py,
mult_vae.py, protocol.py)."""

from metarec_jax.ranking.baselines import SPECS as _BASELINE_SPECS
from metarec_jax.ranking.baselines import RankerSpec
from metarec_jax.ranking.mult_vae import mult_vae_fit, mult_vae_score

RANKERS = {**_BASELINE_SPECS, "mult_vae": RankerSpec("mult_vae", "model", mult_vae_fit, mult_vae_score)}
RANKING_BASELINES = ("popularity", "item_knn", "ease", "wmf")

__all__ = ["RANKERS", "RANKING_BASELINES", "RankerSpec"]
