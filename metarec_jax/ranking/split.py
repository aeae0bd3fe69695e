"""The ranking protocol's data: strong generalization (Liang et al. 2018, Mult-VAE; also EASE
and RecVAE).

- Binarize: a rating >= `threshold` is a positive (implicit feedback: every interaction with
  label 1; sampled negatives are dropped).
- Items with fewer than `min_item_users` positive users (over all users, as Liang filters
  before splitting) are dropped; then users with fewer than `min_positives` positives.
- Users are split at random (by `seed`) into training, validation and test users:
  `heldout_frac` of them each for validation and test, at least `min_heldout` each.
- The catalogue is the items with a positive among the training users; a held-out user's
  positives on other items are dropped (Liang does the same).
- Each validation / test user: 80 % of their positives are folded in (the support) and the
  other 20 % (at least one) held out (the query), drawn at random. The support is ordered by
  timestamp (ties and datasets without timestamps: at random), so a few-shot cap of k keeps the
  k earliest.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from metarec_jax.data.schema import Dataset


@dataclasses.dataclass
class UserSets:
  """Held-out users: `support` [U, S] item indices in fold-in order (-1 padded) and the
  held-out `query` [U, n_items] bool."""

  users: np.ndarray  # [U] dataset user indices
  support: np.ndarray  # [U, S] int32
  query: np.ndarray  # [U, n_items] bool

  def __len__(self) -> int:
    return int(len(self.users))

  def support_mask(self, n_items: int, cap: int | None = None) -> np.ndarray:
    """[U, n_items] bool: the folded-in items (the first `cap` of each user's support)."""
    keep = self.support >= 0
    if cap is not None:
      keep &= np.arange(self.support.shape[1])[None, :] < cap
    out = np.zeros((len(self), n_items), bool)
    rows = np.repeat(np.arange(len(self)), keep.sum(1))
    out[rows, self.support[keep]] = True
    return out


@dataclasses.dataclass
class RankingData:
  name: str
  item_ids: np.ndarray  # [n_items] ids in the source files (the catalogue)
  titles: list[str] | None
  train_users: np.ndarray  # [n_train] dataset user indices
  train_x: np.ndarray  # [n_train, n_items] float32 0/1 positives
  val: UserSets
  test: UserSets
  report: dict  # counts, for the logs and final_metrics.json
  # The catalogue's item-side feature fields and their tables, one row per catalogue item (what
  # the episode learners read; user-side fields are left out: a held-out user is only their
  # folded-in items, as for the matrix rankers).
  item_fields: tuple = ()
  item_tables: dict = dataclasses.field(default_factory=dict)

  @property
  def n_items(self) -> int:
    return int(len(self.item_ids))


def positives_of(ds: Dataset, threshold: float) -> np.ndarray:
  """[R] bool: the ratings that count as positives."""
  return ds.ratings > 0.5 if ds.implicit else ds.ratings >= threshold


def build_ranking_data(
  ds: Dataset,
  seed: int,
  *,
  threshold: float = 4.0,
  min_positives: int = 5,
  min_item_users: int = 1,
  heldout_frac: float = 0.1,
  min_heldout: int = 100,
  query_frac: float = 0.2,
) -> RankingData:
  pos = positives_of(ds, threshold)
  users, items, stamps = ds.users[pos], ds.items[pos], ds.timestamps[pos]
  key = users.astype(np.int64) * ds.n_items + items
  _, first = np.unique(key, return_index=True)  # one positive per (user, item)
  users, items, stamps = users[first], items[first], stamps[first]
  item_users = np.bincount(items, minlength=ds.n_items)
  keep = item_users[items] >= min_item_users
  users, items, stamps = users[keep], items[keep], stamps[keep]
  per_user = np.bincount(users, minlength=ds.n_users)
  eligible = np.flatnonzero(per_user >= min_positives)
  rng = np.random.default_rng([seed, 31])
  perm = rng.permutation(eligible)
  n_held = min(max(int(round(heldout_frac * len(perm))), min_heldout), len(perm) // 3)
  val_users, test_users, train_users = np.sort(perm[:n_held]), np.sort(perm[n_held : 2 * n_held]), perm[2 * n_held :]
  train_users = np.sort(train_users)
  in_train = np.isin(users, train_users)
  catalogue = np.unique(items[in_train])
  col = np.full(ds.n_items, -1, np.int64)
  col[catalogue] = np.arange(len(catalogue))
  row = np.full(ds.n_users, -1, np.int64)
  row[train_users] = np.arange(len(train_users))
  train_x = np.zeros((len(train_users), len(catalogue)), np.float32)
  train_x[row[users[in_train]], col[items[in_train]]] = 1.0

  def held(group: np.ndarray, salt: int) -> tuple[UserSets, int]:
    r = np.random.default_rng([seed, 32, salt])
    sel = np.isin(users, group) & (col[items] >= 0)
    gu, gi, gt = users[sel], col[items[sel]], stamps[sel]
    order = np.lexsort((gi, gu))
    gu, gi, gt = gu[order], gi[order], gt[order]
    bounds = np.searchsorted(gu, group, side="left"), np.searchsorted(gu, group, side="right")
    kept, supports, queries = [], [], []
    for u, a, b in zip(group, *bounds):
      n = b - a
      if n < 2:  # a support and a query need two positives in the catalogue
        continue
      perm_u = r.permutation(n)
      n_q = max(1, int(round(query_frac * n)))
      q, s = perm_u[:n_q], perm_u[n_q:]
      tie = r.random(len(s))
      s = s[np.lexsort((tie, gt[a:b][s]))]  # earliest first; random among equal times
      kept.append(u)
      supports.append(gi[a:b][s])
      queries.append(gi[a:b][q])
    S = max((len(s) for s in supports), default=1)
    support = np.full((len(kept), S), -1, np.int32)
    query = np.zeros((len(kept), len(catalogue)), bool)
    for j, (s, q) in enumerate(zip(supports, queries)):
      support[j, : len(s)] = s
      query[j, q] = True
    return UserSets(np.array(kept, np.int32), support, query), len(group) - len(kept)

  val, val_dropped = held(val_users, 0)
  test, test_dropped = held(test_users, 1)
  report = {
    "positives": int(len(users)),
    "users": int(len(eligible)),
    "items": int(len(catalogue)),
    "train_users": int(len(train_users)),
    "val_users": len(val),
    "test_users": len(test),
    "heldout_users_dropped": val_dropped + test_dropped,  # < 2 positives left in the catalogue
    "min_item_users": min_item_users,
    "threshold": None if ds.implicit else threshold,
  }
  titles = [ds.item_titles[i] for i in catalogue] if ds.item_titles else None
  item_fields = tuple(f for f in ds.fields if f.name.startswith("item/"))
  item_tables = {f.name: np.asarray(ds.features[f.name])[catalogue] for f in item_fields}
  return RankingData(
    ds.name, ds.item_ids[catalogue], titles, train_users, train_x, val, test, report, item_fields, item_tables
  )
