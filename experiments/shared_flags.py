"""Flags shared by the train and compare binaries: the label mode, the Last.fm protocol, the
implicit datasets' co-occurrence feature and stacking on a fold-in (--base)."""

from absl import flags

from metarec_jax.data.lastfm import LASTFM_PROTOCOLS
from metarec_jax.labels import LABELS
from metarec_jax.learners import FOLDIN
from metarec_jax.train import Config

_D = Config()
flags.DEFINE_enum("label", None, list(LABELS), "Label mode: rating (raw, MSE), scaled ([0, 1], MSE, metrics in the "
                  "rating scale) or binary (rating >= --label_threshold, BCE; accuracy/precision/recall/F1/AUC). "
                  "Unset: binary for implicit-feedback datasets (lastfm, hetrec-lastfm), rating otherwise.")
flags.DEFINE_float("label_threshold", _D.label_threshold, "--label=binary: a rating at least this is positive.")
flags.DEFINE_enum("lastfm_protocol", _D.lastfm_protocol, list(LASTFM_PROTOCOLS),
                  "--dataset=lastfm: TaNP's exact episodes, or a fresh split by its recipe (70/10/20 users with "
                  "30-200 interactions, support 20, query the rest).")
flags.DEFINE_integer("cooc_dim", _D.cooc_dim, "lastfm / hetrec-lastfm: width of the item co-occurrence "
                     "embedding feature (truncated SVD of the training users' positives, cross-fitted; 0: none).")
flags.DEFINE_integer("cooc_support_dim", _D.cooc_support_dim, "lastfm / hetrec-lastfm: width of the co-occurrence "
                     "fit behind the per-episode similarity to the support's positives and negatives (0: none).")
flags.DEFINE_enum("base", _D.base, [""] + list(FOLDIN), "Stack every meta-trained learner on this fold-in "
                  "baseline: it predicts the baseline's residual (options chosen on validation; empty: none).")
flags.DEFINE_integer("base_folds", _D.base_folds, "--base: folds of training users the base is cross-fitted over.")
