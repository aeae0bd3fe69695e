"""Cold-start scenarios and fixed-shape, masked episodes (one user = one task).

MeLU protocol: a user's ratings in a scenario form one task if there are
`min_ratings`..`max_ratings` of them; `query_size` random ratings are the query and the
rest are the support (optionally capped at `max_support`, the k-shot option). Every
episode is padded to the same [support] and [query] sizes and carries masks, so one
compiled function serves every batch.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from metarec_jax.data.schema import Dataset
from metarec_jax.labels import LabelSpec

SCENARIOS = ("warm", "user_cold", "item_cold", "user_item_cold")


@dataclasses.dataclass(frozen=True)
class TaskConfig:
  """How ratings become tasks: the query size, the 13-100 ratings filter, the k-shot support
  cap, and the shares of new items, new users and validation users."""

  query_size: int = 10
  min_ratings: int = 13
  max_ratings: int = 100
  max_support: int | None = None  # k-shot cap on the support size
  new_item_frac: float = 0.2  # newest items by release date are "new"
  new_user_frac: float = 0.2  # users who joined last (first rating) are "new"
  val_user_frac: float = 0.1  # existing users held out for model selection
  # The newest share of the existing items held out as validation new items (item-side
  # selection): their ratings leave meta-training and form the validation item-cold tasks.
  val_item_frac: float = 0.1
  user_split: str = "time"  # "time" or "random"

  def __post_init__(self):
    if self.query_size < 1:
      raise ValueError(f"query_size must be >= 1, got {self.query_size}")
    if self.min_ratings <= self.query_size:
      raise ValueError(f"min_ratings ({self.min_ratings}) must exceed query_size ({self.query_size})")
    if self.max_ratings < self.min_ratings:
      raise ValueError(f"max_ratings ({self.max_ratings}) must be >= min_ratings ({self.min_ratings})")
    if self.max_support is not None and self.max_support < 1:
      raise ValueError(f"max_support must be >= 1, got {self.max_support}")
    if not 0.0 <= self.val_item_frac < 1.0:
      raise ValueError(f"val_item_frac must be in [0, 1), got {self.val_item_frac}")
    if self.user_split not in ("time", "random"):
      raise ValueError(f"user_split must be 'time' or 'random', got {self.user_split!r}")

  @property
  def support_size(self) -> int:
    full = self.max_ratings - self.query_size
    return full if self.max_support is None else min(full, self.max_support)


@dataclasses.dataclass
class Episodes:
  """A padded batch of tasks (host numpy). Leading axis is [task]."""

  user: np.ndarray  # [T] int32
  support_item: np.ndarray  # [T, S] int32 (0 where padded)
  support_rating: np.ndarray  # [T, S] float32
  support_mask: np.ndarray  # [T, S] bool
  query_item: np.ndarray  # [T, Q] int32
  query_rating: np.ndarray  # [T, Q] float32
  query_mask: np.ndarray  # [T, Q] bool

  def __len__(self) -> int:
    return int(self.user.shape[0])

  def arrays(self) -> dict[str, np.ndarray]:
    return dataclasses.asdict(self)

  def take(self, idx) -> "Episodes":
    return Episodes(**{k: v[idx] for k, v in self.arrays().items()})

  def cap_support(self, k: int) -> "Episodes":
    """Keeps the first k valid support ratings (support order is already random)."""
    keep = self.support_mask & (np.cumsum(self.support_mask, axis=1) <= k)
    return dataclasses.replace(self, support_mask=keep)


@dataclasses.dataclass
class ColdStartSplit:
  new_item: np.ndarray  # [n_items] bool
  train_users: np.ndarray  # existing users used for meta-training
  val_users: np.ndarray  # existing users held out for selection
  new_users: np.ndarray  # test users of the user-cold scenarios
  item_cold_users: np.ndarray  # existing users tested on new items (item-cold scenario)
  # [n_items] bool: existing items held out as validation new items (never in meta-training)
  val_new_item: np.ndarray | None = None


@dataclasses.dataclass
class Scenarios:
  split: ColdStartSplit
  train: Episodes
  val: Episodes
  test: dict[str, Episodes]  # keyed by SCENARIOS
  train_ratings: tuple[np.ndarray, np.ndarray, np.ndarray]  # (users, items, ratings) seen in training
  # How the episodes' labels encode ratings, and so the loss and metrics (set by
  # train.build_setup; the default: raw 1-5 ratings).
  label: LabelSpec = dataclasses.field(default_factory=LabelSpec)
  # Validation tasks on the validation new items, mirroring the item-cold test scenarios:
  # "item_cold" (train users) and "user_item_cold" (validation users); {} without them.
  val_cold: dict[str, Episodes] = dataclasses.field(default_factory=dict)


def split_users_items(ds: Dataset, cfg: TaskConfig, seed: int) -> ColdStartSplit:
  rng = np.random.default_rng([seed, 1])
  if ds.split_hint is not None:  # a benchmark's own split: only the validation users are drawn here
    warm = np.array(ds.split_hint["warm_users"], np.int32)
    perm = rng.permutation(len(warm))
    n_val = int(round(cfg.val_user_frac * len(warm)))
    # MeLU tests new items on every warm user.
    new_item = np.asarray(ds.split_hint["new_item"], bool)
    return ColdStartSplit(
      new_item=new_item,
      train_users=np.sort(warm[perm[n_val:]]),
      val_users=np.sort(warm[perm[:n_val]]),
      new_users=np.array(ds.split_hint["new_users"], np.int32),
      item_cold_users=np.sort(warm),
      val_new_item=_newest_existing(ds, new_item, cfg.val_item_frac),
    )
  # Items: the newest `new_item_frac` of the rated items by release date are new; an item with an
  # unknown date stays existing (without dates no rated item is new). A catalogue item nobody
  # has rated is always new and not counted in the share.
  rated = np.bincount(ds.items, minlength=ds.n_items) > 0
  order = np.lexsort((np.arange(ds.n_items), np.nan_to_num(ds.item_release, nan=-np.inf)))
  order = order[rated[order] & ~np.isnan(ds.item_release[order])]
  n_new_items = min(int(round(cfg.new_item_frac * rated.sum())), len(order))
  new_item = ~rated
  if n_new_items:
    new_item[order[-n_new_items:]] = True
  # Users: the last `new_user_frac` to join (by first rating) are new.
  if cfg.user_split == "time":
    first = np.full(ds.n_users, np.iinfo(np.int64).max)
    np.minimum.at(first, ds.users, ds.timestamps)
    user_order = np.lexsort((np.arange(ds.n_users), first))
  else:
    user_order = rng.permutation(ds.n_users)
  n_new_users = int(round(cfg.new_user_frac * ds.n_users))
  new_users = np.sort(user_order[ds.n_users - n_new_users :])
  existing = user_order[: ds.n_users - n_new_users]
  existing = rng.permutation(existing)
  n_val = int(round(cfg.val_user_frac * len(existing)))
  return ColdStartSplit(
    new_item=new_item,
    train_users=np.sort(existing[n_val:]),
    val_users=np.sort(existing[:n_val]),
    new_users=new_users,
    item_cold_users=np.sort(existing[n_val:]),
    val_new_item=_newest_existing(ds, new_item, cfg.val_item_frac),
  )


def _newest_existing(ds: Dataset, new_item: np.ndarray, frac: float) -> np.ndarray:
  """[n_items] bool: the newest `frac` of the rated existing items, by the key that makes items
  new (release date; by first rating where the dataset has no release dates but timestamps).
  Items without either key are never held out; all False without any."""
  rated = np.bincount(ds.items, minlength=ds.n_items) > 0
  key = ds.item_release.astype(np.float64)
  if np.isnan(key).all() and ds.timestamps.any():
    first = np.full(ds.n_items, np.inf)
    np.minimum.at(first, ds.items, ds.timestamps.astype(np.float64))
    key = np.where(np.isfinite(first), first, np.nan)
  cand = rated & ~new_item & ~np.isnan(key)
  out = np.zeros(ds.n_items, bool)
  n = int(round(frac * (rated & ~new_item).sum()))
  if n and cand.any():
    order = np.lexsort((np.arange(ds.n_items), np.nan_to_num(key, nan=-np.inf)))
    out[order[cand[order]][-n:]] = True
  return out


def build_scenarios(ds: Dataset, cfg: TaskConfig, seed: int) -> Scenarios:
  """Meta-train, validation and the four test scenarios, all as padded episodes
  (`Episodes`: [task, S] support and [task, Q] query arrays, S = cfg.support_size,
  Q = cfg.query_size).

  - train: train users x existing items, minus the warm-test hold-out; a user with more
    than `max_ratings` ratings is cut into several tasks.
  - val: validation users x existing items (mirrors user-cold; used for selection).
  - val_cold: the validation new items (`val_item_frac`, the newest existing items; their
    ratings are left out of everything else) x train users ("item_cold") and x validation
    users ("user_item_cold"), mirroring the two item-cold test scenarios.
  - warm: train users; query = `query_size` existing-item ratings held out of training,
    support = the user's training ratings.
  - user_cold: new users x existing items. item_cold: train users x new items.
    user_item_cold: new users x new items.
  """
  if ds.fixed_episodes is not None:
    return _fixed_scenarios(ds)
  split = split_users_items(ds, cfg, seed)
  rng = np.random.default_rng([seed, 2])
  by_user = _group_by_user(ds)
  # An item's kind: 0 existing, 1 new (test), 2 validation new. The test and user-cold
  # validation tasks read kinds 0 and 2 as existing, as without the validation items (so they
  # are the same tasks); meta-training drops kind 2, which only the validation item tasks read.
  kind = split.new_item.astype(np.int8)
  if split.val_new_item is not None:
    kind[split.val_new_item & ~split.new_item] = 2
  EXISTING, NEW, VAL_NEW = (0, 2), (1,), (2,)

  def subset(user, kinds):
    items, ratings = by_user[user]
    keep = np.isin(kind[items], kinds)
    return items[keep], ratings[keep]

  S, Q = cfg.support_size, cfg.query_size
  train_tasks, warm_tasks = [], []
  for u in split.train_users:
    items, ratings = subset(u, EXISTING)
    n = len(items)
    if n < cfg.min_ratings:
      continue
    perm = rng.permutation(n)
    warm = cfg.min_ratings + Q <= n <= cfg.max_ratings
    held, perm = (perm[:Q], perm[Q:]) if warm else (None, perm)
    # Users with more than max_ratings ratings train as several tasks of <= max_ratings each,
    # so no warm rating is thrown away; test tasks keep the strict filter. Validation items
    # leave each chunk, and a chunk left without a support (<= query_size ratings) is dropped.
    for chunk in np.array_split(perm, -(-len(perm) // cfg.max_ratings)):
      chunk = chunk[kind[items[chunk]] == 0]
      if len(chunk) > Q:
        train_tasks.append((u, items[chunk], ratings[chunk]))
    if warm:  # the support: the user's other ratings (training ones and those of validation items)
      warm_tasks.append((u, items[perm], ratings[perm], items[held], ratings[held]))

  def tasks_for(users, kinds):
    out = []
    for u in users:
      items, ratings = subset(u, kinds)
      if cfg.min_ratings <= len(items) <= cfg.max_ratings:
        perm = rng.permutation(len(items))
        out.append((u, items[perm[Q:]], ratings[perm[Q:]], items[perm[:Q]], ratings[perm[:Q]]))
    return out

  train = _pack([(u, it[Q:], r[Q:], it[:Q], r[:Q]) for u, it, r in train_tasks], S, Q)
  val = _pack(tasks_for(split.val_users, EXISTING), S, Q)
  test = {
    "warm": _pack(warm_tasks, S, Q),
    "user_cold": _pack(tasks_for(split.new_users, EXISTING), S, Q),
    "item_cold": _pack(tasks_for(split.item_cold_users, NEW), S, Q),
    "user_item_cold": _pack(tasks_for(split.new_users, NEW), S, Q),
  }
  val_cold = (
    {
      "item_cold": _pack(tasks_for(split.train_users, VAL_NEW), S, Q),
      "user_item_cold": _pack(tasks_for(split.val_users, VAL_NEW), S, Q),
    }
    if (kind == 2).any()
    else {}
  )
  tu = (
    np.concatenate([np.full(len(it), u, np.int32) for u, it, _ in train_tasks])
    if train_tasks
    else np.zeros(0, np.int32)
  )
  ti = np.concatenate([it for _, it, _ in train_tasks]) if train_tasks else np.zeros(0, np.int32)
  tr = np.concatenate([r for _, _, r in train_tasks]) if train_tasks else np.zeros(0, np.float32)
  return Scenarios(split=split, train=train, val=val, test=test, train_ratings=(tu, ti, tr), val_cold=val_cold)


def _fixed_scenarios(ds: Dataset) -> Scenarios:
  """A benchmark's own episodes, used as they are: "train", "val" and any of SCENARIOS
  (missing scenarios are empty). Padded to the largest support and query of any episode;
  no item is new (an item unseen in training gets the shared unknown-id row)."""
  fe = ds.fixed_episodes
  unknown = sorted(set(fe) - {"train", "val"} - set(SCENARIOS))
  if unknown or "train" not in fe:
    raise ValueError(
      f"{ds.name}: fixed episodes need 'train' and keys from val, {', '.join(SCENARIOS)}; got {sorted(fe)}"
    )
  tasks = [t for v in fe.values() for t in v]
  S = max(len(t[1]) for t in tasks)
  Q = max(len(t[3]) for t in tasks)
  users = {k: np.unique(np.array([t[0] for t in v], np.int32)) for k, v in fe.items()}
  none = np.zeros(0, np.int32)
  split = ColdStartSplit(
    new_item=np.zeros(ds.n_items, bool),
    train_users=users["train"],
    val_users=users.get("val", none),
    new_users=np.union1d(users.get("user_cold", none), users.get("user_item_cold", none)),
    item_cold_users=users.get("item_cold", none),
  )
  train = fe["train"]
  tu = np.concatenate([np.full(len(t[1]) + len(t[3]), t[0], np.int32) for t in train])
  ti = np.concatenate([np.concatenate([t[1], t[3]]) for t in train]).astype(np.int32)
  tr = np.concatenate([np.concatenate([t[2], t[4]]) for t in train]).astype(np.float32)
  return Scenarios(
    split=split,
    train=_pack(train, S, Q),
    val=_pack(fe.get("val", []), S, Q),
    test={s: _pack(fe.get(s, []), S, Q) for s in SCENARIOS},
    train_ratings=(tu, ti, tr),
  )


def _group_by_user(ds: Dataset) -> list[tuple[np.ndarray, np.ndarray]]:
  order = np.lexsort((ds.items, ds.users))
  users, items, ratings = ds.users[order], ds.items[order], ds.ratings[order]
  bounds = np.searchsorted(users, np.arange(ds.n_users + 1))
  return [(items[bounds[u] : bounds[u + 1]], ratings[bounds[u] : bounds[u + 1]]) for u in range(ds.n_users)]


def _pack(tasks, S: int, Q: int) -> Episodes:
  """tasks: (user, support_items, support_ratings, query_items, query_ratings); truncates support to S."""
  T = len(tasks)
  ep = Episodes(
    user=np.zeros(T, np.int32),
    support_item=np.zeros((T, S), np.int32),
    support_rating=np.zeros((T, S), np.float32),
    support_mask=np.zeros((T, S), bool),
    query_item=np.zeros((T, Q), np.int32),
    query_rating=np.zeros((T, Q), np.float32),
    query_mask=np.zeros((T, Q), bool),
  )
  for t, (u, si, sr, qi, qr) in enumerate(tasks):
    s, q = min(len(si), S), min(len(qi), Q)
    ep.user[t] = u
    ep.support_item[t, :s], ep.support_rating[t, :s], ep.support_mask[t, :s] = si[:s], sr[:s], True
    ep.query_item[t, :q], ep.query_rating[t, :q], ep.query_mask[t, :q] = qi[:q], qr[:q], True
  return ep
