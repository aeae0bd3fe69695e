"""MAMO (Dong et al., KDD 2020, "MAMO: Memory-Augmented Meta-Optimization for Cold-start
Recommendation"), registered as `mamo`: MAML whose starting point is personalised per user by
two memories read with the user's profile.

- The profile p_u: the user's feature-field embeddings (the network's own tables).
- Attention a_u = softmax(cos(p_u, M_P)) over K memory slots (M_P: the profile memory, [K, dp]).
- Feature-specific memory M_W [K, |head|]: the personalised start of the decision layers is
  theta_u = theta - tau * a_u^T M_W.
- Task-specific memory M_UI [K, dp, dq]: the user's preference matrix W_u = a_u^T M_UI adds
  p_u^T W_u q_i to the network's score (p_u, q_i as unit vectors; q_i: the item's field
  embeddings; unnormalised, the bilinear term's inner steps diverged on ML-1M).
- Local update: `inner_steps` SGD steps of theta_u's decision layers and W_u on the support;
  global update: the query loss after them, differentiated through the inner loop (second order
  unless `first_order`), into theta, the memories and the embeddings.

The paper updates the memories by their own rules (a moving average of profiles into M_P,
adapted values into M_W and M_UI); here the outer gradient trains them with everything else, a
simplification recorded in BUILD_NOTES.md. Runs under vmap like every learner, and stacks on a
fold-in.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import traverse_util

from metarec_jax.learners.base import Batch, Episode, FitContext, Learner, loss_and_link
from metarec_jax.learners.maml import adapt_mask, copy_network
from metarec_jax.learners.registry import LearnerSpec, register
from metarec_jax.models.content import field_embeddings
from metarec_jax.models import init_jit

SLOTS = 3  # memory slots K
TAU = 0.1  # scale of the feature-specific memory's bias


def make_mamo(
  model,
  *,
  inner_lr: float = 0.1,
  inner_steps: int = 1,
  first_order: bool = False,
  loss: str = "mse",
  slots: int = SLOTS,
  tau: float = TAU,
  **_,
) -> Learner:
  loss_fn, link = loss_and_link(loss)
  D = model.embed_dim
  user_specs = [s for s in model.fields if s.name.startswith("user/")]
  item_specs = [s for s in model.fields if s.name.startswith("item/")]

  def embed(mp, x, specs):
    return field_embeddings(mp, specs, x, D, x["item"].shape, empty=1.0)

  def unit(v):  # the preference term reads directions: its inner-loop gradient stays bounded
    return v / (jnp.linalg.norm(v, axis=-1, keepdims=True) + 1e-6)

  def split(mp):
    flat = traverse_util.flatten_dict(mp)
    mask = traverse_util.flatten_dict(adapt_mask(mp, "head", getattr(model, "head_scopes", None)))
    return flat, {p: v for p, v in flat.items() if mask[p]}

  def init(rng, example: Episode, ctx: FitContext):
    x = jax.tree.map(lambda a: a[0], example.support.x)
    mp = init_jit(model, rng, x)
    _, head = split(mp)
    n_head = sum(v.size for v in head.values())
    dp, dq = embed(mp, x, user_specs).shape[-1], embed(mp, x, item_specs).shape[-1]
    memory = {
      "profile": 0.1 * jax.random.normal(jax.random.fold_in(rng, 1), (slots, dp)),
      "bias": jnp.zeros((slots, n_head)),
      "preference": jnp.zeros((slots, dp, dq)),
    }
    return {"model": mp, "memory": memory}

  def personalise(meta, support: Batch):
    mp, mem = meta["model"], meta["memory"]
    p = embed(mp, jax.tree.map(lambda a: a[:1], support.x), user_specs)[0]
    keys = mem["profile"]
    cos = keys @ p / (jnp.linalg.norm(keys, axis=1) * jnp.linalg.norm(p) + 1e-8)
    a = jax.nn.softmax(cos)
    _, head = split(mp)
    bias, out, start = a @ mem["bias"], {}, 0
    for path, v in head.items():
      out[path] = v - tau * bias[start : start + v.size].reshape(v.shape)
      start += v.size
    return p, {"head": out, "W": jnp.einsum("k,kpq->pq", a, mem["preference"])}

  def scores(meta, fast, p, x):
    flat, _ = split(meta["model"])
    params = traverse_util.unflatten_dict({**flat, **fast["head"]})
    q = unit(embed(meta["model"], x, item_specs))
    return model.apply(params, x) + q @ (unit(p) @ fast["W"])

  def adapt(meta, support: Batch):
    p, fast = personalise(meta, support)

    def support_loss(f):
      return loss_fn(scores(meta, f, p, support.x), support.y, support.mask)

    for _ in range(inner_steps):
      g = jax.grad(support_loss)(fast)
      if first_order:
        g = jax.lax.stop_gradient(g)
      fast = jax.tree.map(lambda w, d: w - inner_lr * d, fast, g)
    return {"fast": fast, "profile": p}

  def predict(meta, state, x):
    return scores(meta, state["fast"], state["profile"], x)

  def meta_loss(meta, episodes: Episode, rng):
    del rng

    def task(ep: Episode):
      state = adapt(meta, ep.support)
      return loss_fn(predict(meta, state, ep.query.x), ep.query.y, ep.query.mask)

    loss = jax.vmap(task)(episodes).mean()
    return loss, {"loss": loss}

  return Learner(
    name="mamo", family="optimisation", init=init, adapt=adapt, predict=predict, meta_loss=meta_loss, link=link
  )


register(
  LearnerSpec(
    name="mamo",
    family="optimisation",
    build=make_mamo,
    warm_start=copy_network,
    inner_loop=True,
    meta_learner=True,
  )
)
