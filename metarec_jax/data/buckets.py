"""Length buckets (`--length_buckets=K`): the training tasks grouped by support length, each
group padded only to its own size, so a meta-batch of short tasks does not run at the longest
task's width.

The sizes are the support lengths at K evenly spaced quantiles (the last is the padded width),
rounded up to a multiple of 8; a task goes to the smallest size that holds its support. Every
meta-batch is drawn from one bucket (`make_bucket_order`): each bucket's tasks in a fresh random
order, cut into meta-batches (the last one wrapping round to the bucket's start, as the unbucketed
order does), and the batches of all buckets shuffled together. One compile per bucket size.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from metarec_jax import runtime
from metarec_jax.data.tasks import Episodes

MULTIPLE = 8
# --length_buckets=-1: buckets pay one compile each, which a short epoch does not earn back
# (ML-1M's 7,540 tasks: 1.1x per epoch; the synthetic and ml-100k runs have < 1,000).
AUTO_BUCKETS, AUTO_MIN_TASKS = 4, 2000


def n_buckets(requested: int, n_tasks: int) -> int:
  """--length_buckets with -1 resolved for a training split of `n_tasks` tasks."""
  if requested >= 0:
    return requested
  return AUTO_BUCKETS if n_tasks >= AUTO_MIN_TASKS else 0


def bucket_sizes(lengths: np.ndarray, k: int, width: int) -> tuple[int, ...]:
  """At most k padded support sizes for tasks of these support `lengths` (padded width `width`)."""
  if k <= 1 or len(lengths) == 0:
    return (width,)
  q = np.quantile(np.asarray(lengths), np.arange(1, k + 1) / k)
  sizes = np.minimum(np.ceil(np.maximum(q, 1) / MULTIPLE) * MULTIPLE, width).astype(int)
  return tuple(sorted(set(sizes.tolist()) | {width}))


@dataclasses.dataclass
class Buckets:
  """The tasks of each bucket (indices into the unbucketed episodes) and their episodes, trimmed."""

  sizes: tuple[int, ...]
  members: list[np.ndarray]  # per bucket: task indices
  episodes: list[Episodes]  # per bucket: support padded to its size

  def __len__(self) -> int:
    return len(self.sizes)


def pack_support(episodes: Episodes) -> Episodes:
  """Each task's valid support entries moved to the front, in their order (padding after them)."""
  mask = episodes.support_mask
  if not mask.shape[1] or not np.any(np.cumsum(~mask, axis=1)[mask] > 0):
    return episodes
  order = np.argsort(~mask, axis=1, kind="stable")
  fields = {k: np.take_along_axis(v, order, axis=1) for k, v in episodes.arrays().items() if k.startswith("support_")}
  return dataclasses.replace(episodes, **fields)


def split_by_length(episodes: Episodes, k: int, sizes: tuple[int, ...] | None = None) -> Buckets:
  """The episodes in at most k length buckets (empty buckets dropped), each task's support packed
  to the front first (`pack_support`: a capped support may have gaps). `sizes` (e.g. the
  training buckets') fixes the sizes instead of the episodes' own quantiles, those below the
  episodes' width and the width itself: splits cut alike share their compiled functions."""
  episodes = pack_support(episodes)
  mask = episodes.support_mask
  lengths = mask.sum(1)
  width = mask.shape[1]
  if sizes is None:
    sizes = bucket_sizes(lengths, k, width)
  else:
    sizes = tuple(sorted({s for s in sizes if s < width} | {width}))
  which = np.searchsorted(np.asarray(sizes), lengths, side="left")
  members, out, kept = [], [], []
  for b, size in enumerate(sizes):
    idx = np.flatnonzero(which == b)
    if len(idx) == 0:
      continue
    part = episodes.take(idx)
    trimmed = {k: (v[:, :size] if k.startswith("support_") else v) for k, v in part.arrays().items()}
    members.append(idx)
    out.append(Episodes(**trimmed))
    kept.append(size)
  return Buckets(tuple(kept), members, out)


def n_batches(buckets: Buckets, meta_batch_size: int) -> list[int]:
  return [-(-len(m) // meta_batch_size) for m in buckets.members]


def make_bucket_order(counts: list[int], meta_batch_size: int, mesh=None):
  """order(key) -> (next_key, order [N, B] bucket-local task indices, bucket [N] bucket ids) with
  N the sum of the buckets' batch counts; jitted, on the device (the loop reads `bucket` once an
  epoch to know which bucket's data each step takes)."""
  B = meta_batch_size

  def order(key):
    key, sub = jax.random.split(key)
    keys = jax.random.split(sub, len(counts) + 1)
    rows, ids = [], []
    for b, n in enumerate(counts):
      m = -(-n // B)
      perm = jax.random.permutation(keys[b], n)
      perm = jnp.concatenate([perm, perm[jnp.arange(m * B - n) % n]])
      rows.append(perm.reshape(m, B))
      ids.append(jnp.full((m,), b, jnp.int32))
    rows, ids = jnp.concatenate(rows), jnp.concatenate(ids)
    shuffle = jax.random.permutation(keys[-1], rows.shape[0])
    return key, rows[shuffle].astype(jnp.int32), ids[shuffle]

  return jax.jit(order, out_shardings=runtime.replicated(mesh))
