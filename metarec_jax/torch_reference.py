"""The reference code's execution style, in PyTorch, for the benchmark.

MeLU, TaNP and RecBole-MetaRec meta-train like this: a Python loop over the tasks of a
meta-batch, each task adapted on its own with `torch.autograd.grad(create_graph=True)`
(second order), the query losses stacked and averaged, one backward, one Adam step. This
file runs that loop on the same content model (same fields, tables, masked-mean multi-hot
embeddings, MLP) and the same padded, masked episodes as the JAX code, so the two compute
the same meta-gradient (checked by `max_grad_diff` before any timing).

Needs the optional `bench` extra (`pip install -e .[bench]`, CPU torch).
"""

from __future__ import annotations

import numpy as np
from flax import traverse_util

try:
  import torch
except ImportError:  # the benchmark reports the baseline as unavailable
  torch = None


def available() -> bool:
  return torch is not None


def _key(path) -> str:
  return "/".join(path[1:])  # drop the leading "params"


class TorchMAML:
  """Per-task MAML on a torch copy of a ContentModel's parameters.

  adapt: "head" adapts the MLP (MeLU's local update); "all" adapts every parameter,
  whole embedding tables included, as the reference code does. `unpadded`: each task's support
  is cut to its valid ratings (packed first), as MeLU runs, instead of the padded width.
  """

  def __init__(
    self,
    model,
    flax_params,
    tables: dict,
    episodes: dict,
    *,
    inner_lr: float,
    inner_steps: int,
    first_order: bool,
    adapt: str,
    outer_lr: float = 1e-3,
    unpadded: bool = False,
  ):
    if torch is None:
      raise ImportError("torch is not installed; pip install -e .[bench]")
    self.linear = bool(getattr(model, "linear", False))  # each table's last column: a bias per id
    self.dim = model.embed_dim
    self.fields = model.fields
    self.hidden = len(model.hidden)
    flat = traverse_util.flatten_dict(flax_params)
    self.params = {_key(p): torch.tensor(np.asarray(v), requires_grad=True) for p, v in flat.items()}
    self.fast_keys = [k for k in self.params if adapt == "all" or not k.startswith("embed/")]
    self.tables = {k: torch.from_numpy(np.asarray(v)).long() for k, v in tables.items()}
    self.episodes = {k: torch.from_numpy(np.asarray(v)) for k, v in episodes.items()}
    for k in ("support_item", "query_item", "user"):
      self.episodes[k] = self.episodes[k].long()
    self.inner_lr, self.inner_steps, self.first_order = inner_lr, inner_steps, first_order
    self.unpadded = unpadded  # MeLU's way: each task's support cut to its own ratings
    self.opt = torch.optim.Adam(list(self.params.values()), lr=outer_lr)

  def forward(self, p: dict, x: dict):
    vecs, bias = [], 0.0
    for spec in self.fields:
      table = p["embed/" + spec.name.replace("/", "_")]
      ids = x[spec.name]
      if spec.kind == "categorical":
        e = table[ids]
      else:
        valid = (ids >= 0).to(table.dtype)
        rows = table[ids.clamp(min=0)] * valid[..., None]
        e = rows.sum(-2) / valid.sum(-1, keepdim=True).clamp(min=1.0)
      vecs.append(e[..., : self.dim])
      if self.linear:
        bias = bias + e[..., self.dim]
    h = torch.cat(vecs, -1)
    for i in range(self.hidden):
      h = torch.relu(h @ p[f"hidden_{i}/kernel"] + p[f"hidden_{i}/bias"])
    return (h @ p["out/kernel"] + p["out/bias"])[..., 0] + bias

  def featurize(self, user, items) -> dict:
    x = {}
    for name, table in self.tables.items():
      if name.startswith("user/"):
        v = table[user][:, None]
        x[name] = v.expand(items.shape + v.shape[2:])
      else:
        x[name] = table[items]
    return x

  @staticmethod
  def masked_mse(pred, y, mask):
    m = mask.to(pred.dtype)
    return (m * (pred - y) ** 2).sum() / m.sum().clamp(min=1.0)

  def task_loss(self, sx, sy, sm, qx, qy, qm):
    fast = {k: self.params[k] for k in self.fast_keys}
    for _ in range(self.inner_steps):
      loss = self.masked_mse(self.forward({**self.params, **fast}, sx), sy, sm)
      grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not self.first_order)
      fast = {k: v - self.inner_lr * g for (k, v), g in zip(fast.items(), grads)}
    return self.masked_mse(self.forward({**self.params, **fast}, qx), qy, qm)

  def meta_loss(self, idx) -> "torch.Tensor":
    ep = {k: v[idx] for k, v in self.episodes.items()}
    sx = self.featurize(ep["user"], ep["support_item"])
    qx = self.featurize(ep["user"], ep["query_item"])
    losses = []
    for t in range(len(idx)):  # one task at a time, as the reference code does
      n = int(ep["support_mask"][t].sum()) if self.unpadded else ep["support_mask"].shape[1]
      pick = lambda x, n=None: {k: v[t, :n] for k, v in x.items()}  # noqa: E731, B023
      losses.append(
        self.task_loss(
          pick(sx, n),
          ep["support_rating"][t, :n],
          ep["support_mask"][t, :n],
          pick(qx),
          ep["query_rating"][t],
          ep["query_mask"][t],
        )
      )
    return torch.stack(losses).mean()

  def meta_grads(self, idx) -> dict[str, np.ndarray]:
    self.opt.zero_grad()
    self.meta_loss(torch.as_tensor(np.asarray(idx)).long()).backward()
    return {k: v.grad.detach().numpy().copy() for k, v in self.params.items()}

  def step(self, idx) -> float:
    self.opt.zero_grad()
    loss = self.meta_loss(idx)
    loss.backward()
    self.opt.step()
    return float(loss.detach())


def max_grad_diff(torch_grads: dict[str, np.ndarray], jax_grads) -> tuple[float, float]:
  """(max |torch - jax| over every entry, max |jax|) of the model's meta-gradient."""
  flat = {_key(p): np.asarray(v) for p, v in traverse_util.flatten_dict(jax_grads).items()}
  if set(flat) != set(torch_grads):
    raise ValueError(f"parameter names differ: {sorted(set(flat) ^ set(torch_grads))}")
  diff = max(float(np.abs(torch_grads[k] - flat[k]).max()) for k in flat)
  scale = max(float(np.abs(flat[k]).max()) for k in flat)
  return diff, scale


def torch_baseline(o, learner, model, params0, shapes, data, order_np, spec) -> dict:
  """The benchmark's reference-style row: the meta-gradient checked against ours, then the
  PyTorch per-task loop timed (`o` holds the benchmark's options)."""
  import jax
  import numpy as np

  from metarec_jax import bench
  from metarec_jax.learners import get_spec
  from metarec_jax.data.episodes import featurize_episodes

  if not available():
    return {"skipped": "torch is not installed (pip install -e .[bench])"}
  if get_spec(spec["learner"]).reference != "torch_maml":
    return {"skipped": f"no torch reference for {spec['learner']}"}
  import torch

  ref = TorchMAML(
    model,
    params0["model"],
    shapes.tables,
    shapes.episodes.arrays(),
    inner_lr=o.inner_lr,
    inner_steps=spec["inner_steps"],
    first_order=bool(spec["first_order"]),
    adapt=spec["adapt"],
  )
  # Same meta-gradient first (fresh parameters, the first tasks).
  k = o.grad_check_tasks
  ep = featurize_episodes(data["tables"], jax.tree.map(lambda a: a[:k], data["episodes"]))
  g_jax = jax.jit(jax.grad(lambda p: learner.meta_loss(p, ep, None)[0]))(jax.tree.map(np.asarray, params0))
  diff, scale = max_grad_diff(ref.meta_grads(np.arange(k)), g_jax["model"])
  res = {
    "grad_check": {"tasks": k, "max_abs_diff": diff, "max_abs_grad": scale, "ok": diff <= 1e-5 * max(1.0, scale)},
    "threads": torch.get_num_threads(),
    "version": torch.__version__,
  }
  if not res["grad_check"]["ok"]:
    raise AssertionError(f"torch and JAX meta-gradients differ by {diff:.3g} (max |grad| {scale:.3g})")
  rows = [torch.from_numpy(order_np[i % len(order_np)].copy()).long() for i in range(o.baseline_steps + 2)]
  it = iter(rows)
  _, first, times = bench.time_loop(lambda _: ref.step(next(it)), None, warmup=1, steps=o.baseline_steps)
  res.update({"first_call_s": first, "step": bench.summarise(times)})
  return res
