"""The implicit datasets' item co-occurrence features (data/features.py), the dense field kind
that carries them, and the cooc_knn baseline."""

import jax.numpy as jnp
import numpy as np
import pytest

from metarec_jax.data.features import (
  COOC_FIELD,
  COOC_FOLD_OF_USER,
  COOC_FOLD_TABLES,
  COOC_SUPPORT_FIELD,
  COOC_SUPPORT_FOLDS,
  COOC_SUPPORT_ROWS,
  cooccurrence_tables,
  feature_tables,
  featurize,
  out_of_fold_cooc,
  support_cooc,
  support_similarity,
)
from metarec_jax.data.schema import DataError, FieldSpec
from metarec_jax.learners import FitContext, create_learner
from metarec_jax.learners.base import Batch
from metarec_jax.models.content import embed_field


def _positives(seed=0, n_users=40, n_items=30):
  rng = np.random.default_rng(seed)
  taste = rng.integers(0, 3, n_users)
  users, items = [], []
  for u in range(n_users):
    liked = rng.choice(np.arange(taste[u] * 10, taste[u] * 10 + 10), size=5, replace=False)
    users += [u] * 5
    items += list(liked)
  return np.array(users), np.array(items)


def test_full_fit_dot_products_are_the_cooccurrence_counts():
  users, items = _positives()
  n_items = 30
  t = cooccurrence_tables(users, items, n_users=45, n_items=n_items, dim=40)  # dim >= rank: exact
  pos = np.zeros((40, n_items))
  pos[users, items] = 1
  e = t[COOC_FIELD].astype(np.float64)
  gram = e @ e.T
  ratio = gram[pos.T @ pos > 0] / (pos.T @ pos)[pos.T @ pos > 0]
  np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)  # one common scale
  np.testing.assert_allclose(gram, (pos.T @ pos) * ratio[0], atol=1e-4)
  seen = pos.sum(0) > 0
  np.testing.assert_allclose((e[seen] ** 2).sum(1).mean(), 1.0, rtol=1e-5)  # rows are O(1)
  np.testing.assert_array_equal(t[COOC_FOLD_OF_USER][:40], np.arange(40) % 5)
  np.testing.assert_array_equal(t[COOC_FOLD_OF_USER][40:], -1)  # not training users


def test_a_fold_fit_never_sees_its_own_users():
  users, items = _positives()
  base = cooccurrence_tables(users, items, n_users=40, n_items=30, dim=6)
  # Change what user 3 (fold 3) liked: fold 3's geometry (every dot product between items) must
  # not move, up to the one common scale and the rotation onto the full fit, which both read
  # the full fit; the other folds' geometry and the full fit's do move.
  keep = users != 3
  u2 = np.concatenate([users[keep], [3, 3, 3]])
  i2 = np.concatenate([items[keep], [0, 15, 29]])
  other = cooccurrence_tables(u2, i2, n_users=40, n_items=30, dim=6)

  def gram(e):
    e = e.astype(np.float64)
    return e @ e.T

  g_base, g_other = gram(base[COOC_FOLD_TABLES][3]), gram(other[COOC_FOLD_TABLES][3])
  factor = g_other.sum() / g_base.sum()
  assert abs(factor - 1.0) < 0.1
  np.testing.assert_allclose(g_other, factor * g_base, atol=1e-4)
  for e_base, e_other in (
    (base[COOC_FIELD], other[COOC_FIELD]),
    (base[COOC_FOLD_TABLES][0], other[COOC_FOLD_TABLES][0]),
  ):
    g0, g1 = gram(e_base), gram(e_other)
    assert np.abs(g1 - g1.sum() / g0.sum() * g0).max() > 1e-2


def test_fold_fits_are_rotated_onto_the_full_fit():
  users, items = _positives(n_users=200)
  t = cooccurrence_tables(users, items, n_users=200, n_items=30, dim=3)
  full = t[COOC_FIELD]
  for f in range(5):  # 80 % of the users: close to the full fit in the same coordinates
    rel = np.linalg.norm(t[COOC_FOLD_TABLES][f] - full) / np.linalg.norm(full)
    assert rel < 0.25, (f, rel)
  with pytest.raises(ValueError, match="not both 0"):
    cooccurrence_tables(users, items, n_users=200, n_items=30, dim=0)
  with pytest.raises(ValueError, match="folds 0 or >= 2"):
    cooccurrence_tables(users, items, n_users=200, n_items=30, dim=3, folds=1)
  only = cooccurrence_tables(users, items, n_users=200, n_items=30, dim=3, folds=0)  # the full fit only
  np.testing.assert_allclose(only[COOC_FIELD], full)
  assert only[COOC_FOLD_TABLES].shape == (0, 30, 3) and (only[COOC_FOLD_OF_USER] == -1).all()
  wide = cooccurrence_tables(users, items, n_users=200, n_items=30, dim=0, support_dim=5)
  assert COOC_FIELD not in wide and wide[COOC_SUPPORT_ROWS].shape == (30, 5)
  assert wide[COOC_SUPPORT_FOLDS].shape == (5, 30, 5)


def test_training_users_get_their_out_of_fold_rows():
  users, items = _positives()
  t = {k: jnp.asarray(v) for k, v in cooccurrence_tables(users, items, n_users=45, n_items=30, dim=4).items()}
  user = jnp.array([7, 42])  # a training user (fold 2) and a new user
  it = jnp.array([[1, 2, 3], [1, 2, 3]])
  x = out_of_fold_cooc(t, featurize(t, user, it), user)
  np.testing.assert_allclose(x[COOC_FIELD][0], t[COOC_FOLD_TABLES][2][it[0]])
  np.testing.assert_allclose(x[COOC_FIELD][1], t[COOC_FIELD][it[1]])


def test_support_cooc_is_the_mean_similarity_leaving_the_pair_itself_out():
  rng = np.random.default_rng(1)
  es = jnp.asarray(rng.normal(size=(1, 4, 3)), jnp.float32)
  eq = jnp.asarray(rng.normal(size=(1, 2, 3)), jnp.float32)
  y = jnp.array([[1.0, 1.0, 0.0, 1.0]])
  mask = jnp.array([[True, True, True, False]])  # the last support slot is padding
  s, q_sim = support_similarity(es, y, mask, eq)
  e, q = np.asarray(es[0]), np.asarray(eq[0])
  np.testing.assert_allclose(q_sim[0, :, 0], q @ (e[0] + e[1]) / 2, rtol=1e-5)
  np.testing.assert_allclose(q_sim[0, :, 1], q @ e[2], rtol=1e-5)
  np.testing.assert_allclose(s[0, 0], [e[0] @ e[1], e[0] @ e[2]], rtol=1e-5)
  np.testing.assert_allclose(s[0, 2], [e[2] @ (e[0] + e[1]) / 2, 0.0], rtol=1e-5, atol=1e-6)
  # Without the support fit nothing is added.
  assert support_cooc({}, {}, {"item": 1}, {"item": 2}) == ({"item": 1}, {"item": 2})


def test_dense_field_is_projected_and_validated():
  spec = FieldSpec("item/v", "dense", 3)
  table = jnp.arange(6.0).reshape(3, 2)
  v = jnp.array([[1.0, 0.0, 2.0]])
  np.testing.assert_allclose(embed_field(table, spec, v), v @ table)
  from metarec_jax.data.synthetic import generate

  ds = generate(n_users=20, n_items=10, seed=0)
  ds.fields = ds.fields + (spec,)
  ds.features = dict(ds.features, **{"item/v": np.zeros((10, 2), np.float32)})
  with pytest.raises(DataError, match=r"dense feature 'item/v' must be a finite \[10, 3\] table, got shape \(10, 2\)"):
    ds.validate()
  ds.features["item/v"] = np.full((10, 3), np.nan, np.float32)
  with pytest.raises(DataError, match="must be a finite"):
    ds.validate()
  ds.features["item/v"] = np.ones((10, 3), np.float32)
  ds.validate()
  fields, tables = feature_tables(ds)
  assert tables["item/v"].dtype == np.float32 and fields[-1] == spec


def test_cooc_knn_ranks_by_cooccurrence_with_the_support_positives():
  users, items = _positives()
  t = cooccurrence_tables(users, items, n_users=45, n_items=30, dim=8)
  ctx = FitContext(
    model=None,
    fields=(),
    n_items=30,
    train_users=users,
    train_items=items,
    train_ratings=np.ones(len(users), np.float32),
    tables=t,
    binary_labels=True,
  )
  b = create_learner("cooc_knn")
  params = b.init(None, None, ctx)
  support = Batch({"item": jnp.array([0, 1, 25])}, jnp.array([1.0, 1.0, 0.0]), jnp.array([True, True, True]))
  state = b.adapt(params, support)
  pred = np.asarray(b.predict(params, state, {"item": jnp.arange(30)}))
  e = t[COOC_FIELD]
  expected = e @ (e[0] + e[1])
  assert np.all((pred > 0) & (pred < 1))
  np.testing.assert_allclose(pred, 0.5 + 0.5 * expected / (1 + np.abs(expected)), atol=1e-6)  # monotone in it
  assert pred[:10].mean() > pred[10:].mean()  # items 0 and 1 are liked with the other items 0-9
  # With `dim`, its own SVD of the training positives (here the same as the table's).
  own = create_learner("cooc_knn", dim=8).init(None, None, ctx)
  np.testing.assert_allclose(own["cooc"], e, atol=1e-6)
  with pytest.raises(ValueError, match="takes no options"):
    create_learner("popularity", dim=8)
  with pytest.raises(ValueError, match="cooc_knn baseline needs 0/1 labels"):
    b.init(
      None,
      None,
      FitContext(
        model=None,
        fields=(),
        n_items=30,
        train_users=users,
        train_items=items,
        train_ratings=np.ones(len(users), np.float32),
        tables={},
        binary_labels=True,
      ),
    )


def test_out_of_fold_rows_remove_the_training_users_own_cooccurrences():
  # Users like 5 random items each, no structure: any similarity between a training user's
  # positives under the full fit is their own co-occurrence (the leak); out of fold it is gone.
  rng = np.random.default_rng(0)
  users = np.repeat(np.arange(60), 5)
  items = np.concatenate([rng.choice(200, 5, replace=False) for _ in range(60)])
  t = {k: jnp.asarray(v) for k, v in cooccurrence_tables(users, items, n_users=60, n_items=200, dim=32).items()}
  user = jnp.arange(60)
  it = jnp.asarray(items.reshape(60, 5))
  y, mask = jnp.ones((60, 5)), jnp.ones((60, 5), bool)
  full = featurize(t, user, it)
  oof = out_of_fold_cooc(t, full, user)
  leak = support_similarity(full[COOC_FIELD], y, mask, full[COOC_FIELD])[0][..., 0].mean()
  honest = support_similarity(oof[COOC_FIELD], y, mask, oof[COOC_FIELD])[0][..., 0].mean()
  assert leak > 5 * abs(honest) and leak > 0.05, (leak, honest)


def _groups_fixture(tmp_path):
  """TaNP-format files: 60 users in three taste groups over 60 items, 20 support and 10 query
  pairs each, 20 % of the labels flipped; training users 0-39, validation 40-49, test 50-59."""
  from test_lastfm import _write

  rng = np.random.default_rng(0)
  root = str(tmp_path / "tanp-lastfm")
  lines = []
  splits = {"training": range(40), "validation": range(40, 50), "testing": range(50, 60)}
  for split, users in splits.items():
    for n, u in enumerate(users):
      items = rng.choice(60, 30, replace=False)
      for part, chunk in (("supp", items[:20]), ("query", items[20:])):
        _write(f"{root}/episodes/{split}/{part}_x_{n}_u_m_ids.txt", "".join(f"{u}\t{i}\n" for i in chunk))
      liked = (items // 20 == u % 3) != (rng.random(30) < 0.2)
      lines += [f"{u}\t{i}\t{int(y)}\n" for i, y in zip(items, liked)]
  _write(f"{root}/ratings_final.txt", "".join(lines))


@pytest.mark.slow
def test_cooc_knn_width_is_chosen_on_validation_auc(tmp_path):
  from metarec_jax.learners import get_spec
  from metarec_jax.config import Config, with_dataset_defaults
  from metarec_jax.setup import build_setup
  from metarec_jax.evaluate import make_predict_fn, predict_episodes, score

  _groups_fixture(tmp_path)
  st = build_setup(with_dataset_defaults(Config(dataset="lastfm", data_dir=str(tmp_path), hidden=(8,), embed_dim=4)))
  assert COOC_FIELD in st.tables and COOC_SUPPORT_FIELD in [f.name for f in st.fields]

  def candidate(options):
    b = st.make("cooc_knn", **options)
    return b, b.init(None, st.example, st.ctx)

  aucs = []
  for options in get_spec("cooc_knn").grid:
    b, p = candidate(options)
    pred = predict_episodes(make_predict_fn(b), p, st.data["tables"], st.scen.val, 64)
    aucs.append(score(pred, st.scen.val, label=st.scen.label)["auc"])
  best = st.select("cooc_knn")
  assert max(aucs) > min(aucs) + 0.01, aucs
  assert best["val"] == pytest.approx(max(aucs))  # the highest validation AUC, not the lowest
  assert best["options"] == get_spec("cooc_knn").grid[int(np.argmax(aucs))]


@pytest.mark.slow
def test_a_recommended_new_user_reads_the_full_fit(tmp_path):
  from metarec_jax.data.features import TRAIN_USER
  from metarec_jax.recommend import new_user_tables
  from metarec_jax.config import Config, with_dataset_defaults
  from metarec_jax.setup import build_setup
  from metarec_jax.data.episodes import featurize_episodes

  _groups_fixture(tmp_path)
  st = build_setup(with_dataset_defaults(Config(dataset="lastfm", data_dir=str(tmp_path), hidden=(8,), embed_dim=4)))
  tables, user, _ = new_user_tables(st)
  assert user == 60 and len(tables[TRAIN_USER]) == len(tables[COOC_FOLD_OF_USER]) == 61
  assert not tables[TRAIN_USER][user] and tables[COOC_FOLD_OF_USER][user] == -1
  assert tables[COOC_FOLD_OF_USER][39] == 39 % 5  # (the last training user)
  items = jnp.array([[0, 5, 25]])
  ep = {
    "user": jnp.array([user]),
    "support_item": items,
    "support_rating": jnp.ones((1, 3)),
    "support_mask": jnp.ones((1, 3), bool),
    "query_item": jnp.array([[1, 2]]),
    "query_rating": jnp.zeros((1, 2)),
    "query_mask": jnp.ones((1, 2), bool),
  }
  x = featurize_episodes({k: jnp.asarray(v) for k, v in tables.items()}, ep)
  np.testing.assert_allclose(x.support.x[COOC_FIELD][0], st.tables[COOC_FIELD][[0, 5, 25]])


@pytest.mark.slow
def test_episodes_get_the_support_similarity_from_the_out_of_fold_support_fit(tmp_path):
  from metarec_jax.config import Config
  from metarec_jax.setup import build_setup
  from metarec_jax.data.episodes import featurize_episodes

  _groups_fixture(tmp_path)
  st = build_setup(
    Config(dataset="lastfm", data_dir=str(tmp_path), hidden=(8,), embed_dim=4, cooc_dim=3, cooc_support_dim=6)
  )
  t = st.tables
  assert t[COOC_FIELD].shape == (60, 3) and t[COOC_SUPPORT_ROWS].shape == (60, 6)
  ep = {k: jnp.asarray(v[:2]) for k, v in st.scen.train.arrays().items()}  # training users
  x = featurize_episodes({k: jnp.asarray(v) for k, v in t.items()}, ep)
  for n in range(2):
    fold = t[COOC_FOLD_OF_USER][int(ep["user"][n])]
    assert fold >= 0
    e = t[COOC_SUPPORT_FOLDS][fold]
    m = np.asarray(ep["support_mask"][n])
    pos = np.asarray(ep["support_item"][n])[m & (np.asarray(ep["support_rating"][n]) > 0.5)]
    q = np.asarray(ep["query_item"][n])
    np.testing.assert_allclose(x.query.x[COOC_SUPPORT_FIELD][n, :, 0], e[q] @ e[pos].mean(0), rtol=1e-4, atol=1e-6)


def test_explicit_ratings_use_the_liked_pairs_and_the_content_regression_ignores_the_field():
  from metarec_jax.data.features import COOC_POSITIVE
  from metarec_jax.learners.foldin import item_design_matrix
  from metarec_jax.config import Config
  from metarec_jax.setup import build_setup

  base = dict(dataset="synthetic", synthetic_users=100, synthetic_items=120, hidden=(8,), embed_dim=4)
  plain = build_setup(Config(**base))
  st = build_setup(Config(**base, cooc_dim=4, cooc_support_dim=6, label_threshold=4.0))
  names = [f.name for f in st.fields]
  assert names[-2:] == [COOC_FIELD, COOC_SUPPORT_FIELD] and COOC_FIELD not in [f.name for f in plain.fields]
  assert float(st.tables[COOC_POSITIVE]) == 4.0
  users, items, ratings = st.scen.train_ratings
  liked = ratings >= 4.0
  expected = cooccurrence_tables(users[liked], items[liked], st.ds.n_users, st.ds.n_items, 4, support_dim=6)
  np.testing.assert_allclose(st.tables[COOC_FIELD], expected[COOC_FIELD])
  np.testing.assert_array_equal(st.tables[COOC_FOLD_OF_USER], expected[COOC_FOLD_OF_USER])
  # Content regression of new items: the same design matrix with or without the field.
  np.testing.assert_array_equal(item_design_matrix(st.ctx), item_design_matrix(plain.ctx))
  # Scaled labels: the threshold is encoded like the labels.
  scaled = build_setup(Config(**base, cooc_dim=4, label="scaled"))
  assert float(scaled.tables[COOC_POSITIVE]) == pytest.approx(0.75)
  with pytest.raises(ValueError, match="cooc_dim must be >= 0"):
    Config(**base, cooc_dim=-1).validate()


def test_a_dropped_item_id_also_zeroes_its_cooccurrence_features():
  """--id_dropout: a hidden item looks like a new item (unknown id, zero co-occurrence) in every field."""
  import jax

  from metarec_jax.config import Config
  from metarec_jax.data.episodes import drop_item_ids, featurize_episodes
  from metarec_jax.data.features import ITEM_ID_FIELD
  from metarec_jax.setup import build_setup

  st = build_setup(
    Config(
      dataset="synthetic",
      synthetic_users=100,
      synthetic_items=120,
      hidden=(8,),
      embed_dim=4,
      cooc_dim=4,
      cooc_support_dim=6,
    )
  )
  ep = {k: jnp.asarray(v[:8]) for k, v in st.scen.train.arrays().items()}
  x = featurize_episodes({k: jnp.asarray(v) for k, v in st.tables.items()}, ep)
  dropped = drop_item_ids(jax.random.key(0), x, 0.5)
  for before, after in ((x.support, dropped.support), (x.query, dropped.query)):
    known = np.asarray(before.x[ITEM_ID_FIELD] != 0)
    hidden = np.asarray(after.x[ITEM_ID_FIELD] == 0) & known
    assert 0.3 < hidden.sum() / known.sum() < 0.7
    for name in (COOC_FIELD, COOC_SUPPORT_FIELD):
      a, b = np.asarray(after.x[name]), np.asarray(before.x[name])
      assert np.abs(b[hidden]).sum() > 0 and (a[hidden] == 0).all()
      np.testing.assert_array_equal(a[~hidden], b[~hidden])
