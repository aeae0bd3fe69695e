"""The ranking protocol (`--protocol=ranking`): strong generalization on binarized feedback,
full-catalogue evaluation on the device, and its rankers (split.py, evaluate.py, baselines.py,
mult_vae.py, protocol.py)."""

from metarec_jax.ranking.baselines import SPECS as _BASELINE_SPECS
from metarec_jax.ranking.baselines import RankerSpec
from metarec_jax.ranking import maml_rank
from metarec_jax.ranking.mult_vae import mult_vae_fit, mult_vae_score


def _linear_ae_fit(x, options, val=None):
  return maml_rank.fit(x, {**options, "inner_steps": 0}, val)


def _maml_ease_fit(x, options, val=None):
  return maml_rank.fit(x, {**options, "base": "ease"}, val)


def _linear_ae_ease_fit(x, options, val=None):
  return maml_rank.fit(x, {**options, "base": "ease", "inner_steps": 0}, val)


RANKERS = {
  **_BASELINE_SPECS,
  "mult_vae": RankerSpec("mult_vae", "model", mult_vae_fit, mult_vae_score, link="softmax"),
  # second-order MAML on the user vector; its grid: the inner step size
  "maml_rank": RankerSpec(
    "maml_rank",
    "optimisation",
    maml_rank.fit,
    maml_rank.score,
    tuple({"inner_lr": lr} for lr in (0.3, 1.0, 3.0)),
    link="softmax",
  ),
  # maml_rank stacked on EASE (cross-fitted in meta-training); inner_lr 1.0, maml_rank's pick on
  # every ml-100k seed, so no grid (each point would refit the base)
  "maml_ease": RankerSpec(
    "maml_ease", "optimisation", _maml_ease_fit, maml_rank.score, ({"inner_lr": 1.0},), link="softmax"
  ),
  # the same network trained without the inner loop: the pooled network given the same inputs
  "linear_ae": RankerSpec("linear_ae", "baseline", _linear_ae_fit, maml_rank.score, link="softmax"),
  # and maml_ease's (the pooled network stacked on the same EASE base)
  "linear_ae_ease": RankerSpec("linear_ae_ease", "baseline", _linear_ae_ease_fit, maml_rank.score, link="softmax"),
}
RANKING_BASELINES = ("popularity", "item_knn", "ease", "wmf", "mult_vae", "linear_ae")


def ranker_names() -> tuple[str, ...]:
  """Every name `--protocol=ranking` takes: the rankers above, then the rating protocol's
  episode learners meta-trained for ranking (ranking/episodic.py)."""
  from metarec_jax.ranking.episodic import episode_learners

  return tuple(RANKERS) + tuple(n for n in episode_learners() if n not in RANKERS)


def get_ranker(name: str, config, data) -> RankerSpec:
  """The RankerSpec of `name` for a run (`config`) on its ranking data: an episode learner is
  bound to the run's model options and the catalogue's item features."""
  if name in RANKERS:
    return RANKERS[name]
  from metarec_jax.ranking.episodic import EpisodicRanker, episode_learners

  if name not in episode_learners():
    raise ValueError(f"--protocol=ranking: {name!r} has no ranking model; choose from {', '.join(ranker_names())}")
  return EpisodicRanker(name, config, data).spec()


__all__ = ["RANKERS", "RANKING_BASELINES", "RankerSpec", "get_ranker", "ranker_names"]
