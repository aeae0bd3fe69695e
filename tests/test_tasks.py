import dataclasses

import jax
import numpy as np
import pytest

from metarec_jax.data import synthetic
from metarec_jax.data.tasks import SCENARIOS, TaskConfig, build_scenarios
from metarec_jax.data.episodes import redraw_support_query


@pytest.fixture(scope="module")
def ds():
  return synthetic.generate(n_users=300, n_items=400, seed=1)


@pytest.fixture(scope="module")
def scen(ds):
  return build_scenarios(ds, TaskConfig(), seed=0)


def _pairs(ep, t, part):
  items = getattr(ep, f"{part}_item")[t][getattr(ep, f"{part}_mask")[t]]
  return {(int(ep.user[t]), int(i)) for i in items}


def test_no_rating_in_both_support_and_query(scen):
  for ep in [scen.train, scen.val, *scen.test.values()]:
    for t in range(len(ep)):
      assert not _pairs(ep, t, "support") & _pairs(ep, t, "query")


def test_users_are_disjoint(scen):
  s = scen.split
  assert not set(s.train_users) & set(s.val_users)
  assert not set(s.train_users) & set(s.new_users)
  assert not set(s.val_users) & set(s.new_users)
  assert set(scen.train.user) <= set(s.train_users)
  assert set(scen.val.user) <= set(s.val_users)
  assert set(scen.test["user_cold"].user) <= set(s.new_users)
  assert set(scen.test["user_item_cold"].user) <= set(s.new_users)
  assert set(scen.test["warm"].user) <= set(s.train_users)


def test_item_cold_queries_are_new_items_and_warm_ones_existing(scen):
  new = scen.split.new_item
  for name in ("item_cold", "user_item_cold"):
    ep = scen.test[name]
    assert len(ep) > 0
    assert new[ep.query_item[ep.query_mask]].all()
    assert new[ep.support_item[ep.support_mask]].all()
  for name in ("warm", "user_cold"):
    ep = scen.test[name]
    assert not new[ep.query_item[ep.query_mask]].any()
  assert not new[scen.train_ratings[1]].any()


def test_new_items_are_the_newest(ds, scen):
  new = scen.split.new_item
  assert new.mean() == pytest.approx(0.2, abs=0.01)
  assert ds.item_release[new].min() >= ds.item_release[~new].max()


def test_warm_query_is_held_out_of_training(scen):
  train_pairs = set(zip(scen.train_ratings[0].tolist(), scen.train_ratings[1].tolist()))
  warm = scen.test["warm"]
  trained_users = set(scen.train.user.tolist())
  assert len(trained_users & set(warm.user.tolist())) >= 0.95 * len(warm)
  for t in range(len(warm)):
    assert not _pairs(warm, t, "query") & train_pairs
    # The support is the user's training ratings, plus any of validation new items (held out
    # of training; the test tasks are the same as without them).
    # A user left with no training task once those are out trains on none of them.
    held = {(u, i) for u, i in _pairs(warm, t, "support") if scen.split.val_new_item[i]}
    if int(warm.user[t]) in trained_users:
      assert _pairs(warm, t, "support") - held <= train_pairs


def test_masks_match_true_lengths(ds, scen):
  cfg = TaskConfig()
  counts = {}
  for u, i in zip(ds.users, ds.items):
    counts.setdefault(int(u), []).append(int(i))
  new = scen.split.new_item
  ep = scen.test["user_cold"]
  for t in range(len(ep)):
    n_existing = sum(not new[i] for i in counts[int(ep.user[t])])
    assert ep.query_mask[t].sum() == cfg.query_size
    assert ep.support_mask[t].sum() == n_existing - cfg.query_size
    # Valid entries come first; padding is item 0 with rating 0.
    s = ep.support_mask[t].sum()
    assert ep.support_mask[t, :s].all() and not ep.support_mask[t, s:].any()
    assert (ep.support_rating[t, s:] == 0).all()
  for e in [scen.train, scen.val, *scen.test.values(), *scen.val_cold.values()]:
    n = e.support_mask.sum(1) + e.query_mask.sum(1)
    # A training task keeps a support once the validation items are out of it.
    lo = cfg.query_size + 1 if e is scen.train else cfg.min_ratings
    assert (n >= lo).all() and (n <= cfg.max_ratings).all()


def test_fixed_seed_gives_same_episodes(ds):
  a = build_scenarios(ds, TaskConfig(), seed=5)
  b = build_scenarios(ds, TaskConfig(), seed=5)
  c = build_scenarios(ds, TaskConfig(), seed=6)
  for k, v in a.train.arrays().items():
    np.testing.assert_array_equal(v, b.train.arrays()[k])
  for s in SCENARIOS:
    np.testing.assert_array_equal(a.test[s].query_item, b.test[s].query_item)
  assert not np.array_equal(a.test["user_cold"].query_item, c.test["user_cold"].query_item)


def test_k_shot_cap():
  ds = synthetic.generate(n_users=120, n_items=200, seed=2)
  scen = build_scenarios(ds, TaskConfig(max_support=5), seed=0)
  assert scen.test["user_cold"].support_item.shape[1] == 5
  assert (scen.test["user_cold"].support_mask.sum(1) == 5).all()
  capped = build_scenarios(ds, TaskConfig(), seed=0).test["user_cold"].cap_support(3)
  assert (capped.support_mask.sum(1) == 3).all()


def test_redraw_keeps_each_tasks_ratings(scen):
  ep = scen.train.take(np.arange(8))
  out = jax.tree.map(np.asarray, redraw_support_query(jax.random.key(0), ep.arrays()))
  for t in range(8):
    before = sorted(
      zip(
        ep.support_item[t][ep.support_mask[t]].tolist() + ep.query_item[t][ep.query_mask[t]].tolist(),
        ep.support_rating[t][ep.support_mask[t]].tolist() + ep.query_rating[t][ep.query_mask[t]].tolist(),
      )
    )
    after = sorted(
      zip(
        out["support_item"][t][out["support_mask"][t]].tolist() + out["query_item"][t][out["query_mask"][t]].tolist(),
        out["support_rating"][t][out["support_mask"][t]].tolist()
        + out["query_rating"][t][out["query_mask"][t]].tolist(),
      )
    )
    assert before == after
    assert out["query_mask"][t].all()
  assert not np.array_equal(out["query_item"], ep.query_item)


def test_bad_task_config():
  with pytest.raises(ValueError, match="min_ratings .* must exceed query_size"):
    TaskConfig(min_ratings=5, query_size=10)


def _leak_check(ds, scen):
  """The validation new items: the newest existing items, absent from every training rating and
  episode, and the only items of the validation item-cold tasks."""
  split = scen.split
  held = split.val_new_item
  assert held.any() and not (held & split.new_item).any()
  existing = ~split.new_item & (np.bincount(ds.items, minlength=ds.n_items) > 0) & ~np.isnan(ds.item_release)
  assert ds.item_release[held].min() >= ds.item_release[existing & ~held].max()
  assert not held[scen.train_ratings[1]].any()
  for ep in (scen.train,):
    assert not held[ep.support_item[ep.support_mask]].any() and not held[ep.query_item[ep.query_mask]].any()
  for name, users in (("item_cold", split.train_users), ("user_item_cold", split.val_users)):
    ep = scen.val_cold[name]
    assert len(ep) and np.isin(ep.user, users).all()
    assert held[ep.support_item[ep.support_mask]].all() and held[ep.query_item[ep.query_mask]].all()
  # The test tasks are those of a split without validation items.
  plain = build_scenarios(ds, dataclasses.replace(TaskConfig(), val_item_frac=0.0), seed=0)
  for s in SCENARIOS:
    np.testing.assert_array_equal(scen.test[s].query_item, plain.test[s].query_item)
    np.testing.assert_array_equal(scen.test[s].support_item, plain.test[s].support_item)


def test_validation_new_items_never_reach_training(ds):
  scen = build_scenarios(ds, dataclasses.replace(TaskConfig(), val_item_frac=0.2), seed=0)
  _leak_check(ds, scen)
  # Nor the model: they read the unknown item id, and the fold-ins' training ratings lack them.
  from metarec_jax.config import Config
  from metarec_jax.setup import build_setup

  st = build_setup(Config(dataset="synthetic", synthetic_users=300, synthetic_items=400, val_item_frac=0.2, seed=0))
  held = st.scen.split.val_new_item
  assert held.any() and (st.tables["item/id"][held] == 0).all()
  assert not held[st.ctx.train_items].any()
  assert not held[
    np.asarray(st.data["episodes"]["support_item"])[np.asarray(st.data["episodes"]["support_mask"])]
  ].any()
  val = st.val_score(st.evaluator.predict_fn(st.make("item_mean")), st.init_params(st.make("item_mean")))
  assert {"mae", "user_cold/mae", "item_cold/mae", "user_item_cold/mae"} <= set(val)
  parts = [val[f"{s}/mae"] for s in ("user_cold", "item_cold", "user_item_cold")]
  np.testing.assert_allclose(val["mae"], np.mean(parts), rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ml-100k", "ml-1m"])
def test_validation_new_items_never_reach_training_on_real_data(name, shared_data_dir):
  from metarec_jax.data import load_dataset

  ds = load_dataset(name, data_dir=shared_data_dir)
  _leak_check(ds, build_scenarios(ds, TaskConfig(), seed=0))


def test_validation_new_items_from_a_csv_with_timestamps(ds, tmp_path):
  """CSV data: items are new by their first rating, and so are the validation new items."""
  from metarec_jax.data.csv_data import load_csv

  path = tmp_path / "ratings.csv"
  rows = [f"u{u},i{i},{int(r)},{t}" for u, i, r, t in zip(ds.users, ds.items, ds.ratings, ds.timestamps)]
  path.write_text("user,item,rating,timestamp\n" + "\n".join(rows) + "\n")
  csv = load_csv(str(path))
  scen = build_scenarios(csv, dataclasses.replace(TaskConfig(), val_item_frac=0.2), seed=0)
  _leak_check(csv, scen)
  first = np.full(csv.n_items, np.inf)
  np.minimum.at(first, csv.items, csv.timestamps.astype(float))
  held = scen.split.val_new_item
  assert first[held].min() >= first[~held & ~scen.split.new_item].max()
