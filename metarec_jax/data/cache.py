"""Loaded real datasets kept on disk: a run reads the checked `Dataset` back instead of parsing
and matching the source files again (ML-1M: 2.2 s to load, 15 ms to read back; HetRec: 5.4 s).

One file per dataset and options, `<cache dir>/datasets/<name>[-<options>].pkl` (cache dir:
$METAREC_CACHE_DIR, default `~/.cache/metarec_jax`), holding the key it was made under and the
`Dataset`. The key is a SHA-256 of the dataset's source files (every file of the folders that
`data_sources.DATASET_FOLDERS` names, path, size and bytes), of the code that reads them (every
module of `metarec_jax/data`), of the options, and of the numpy, pandas and rdata versions: any
change to one of them loads from the files again and replaces the entry. `METAREC_DATASET_CACHE=0`
turns the cache off. An entry that cannot be read is logged and rebuilt; one that cannot be written
is logged and skipped; a source file that cannot be hashed is logged and the dataset is loaded from
the files. Files are written atomically. The entries are pickles: read them only from a folder you
trust (your own).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import pickle
from typing import Callable

from absl import logging

from metarec_jax import writers
from metarec_jax.data.schema import Dataset

CACHE_ENV = "METAREC_CACHE_DIR"
SWITCH_ENV = "METAREC_DATASET_CACHE"
FORMAT = 1  # raise when the entry's layout changes
_CODE_DIR = os.path.dirname(os.path.abspath(__file__))


def cache_dir() -> str:
  return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "metarec_jax")


def enabled() -> bool:
  return os.environ.get(SWITCH_ENV, "1") != "0"


def _version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def _hash_tree(h, root: str, label: str) -> None:
  for folder, dirs, files in sorted(os.walk(root)):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        data = f.read()
      h.update(f"{label}/{os.path.relpath(path, root)}\0{len(data)}\0".encode())
      h.update(data)


def key(folders: list[str], options: dict) -> str:
  """The entry's key: the source folders' files, the data code, the options and the versions."""
  h = hashlib.sha256()
  meta = {"format": FORMAT, "options": options, "versions": {p: _version(p) for p in ("numpy", "pandas", "rdata")}}
  h.update(json.dumps(meta, sort_keys=True).encode())
  for name in sorted(os.listdir(_CODE_DIR)):
    if name.endswith(".py"):
      with open(os.path.join(_CODE_DIR, name), "rb") as f:
        h.update(f"code/{name}\0".encode() + f.read())
  for folder in folders:
    _hash_tree(h, folder, os.path.basename(os.path.normpath(folder)))
  return h.hexdigest()


def cached(name: str, folders: list[str], options: dict, load: Callable[[], Dataset]) -> Dataset:
  """`load()`'s dataset, from the cache where its entry matches, else loaded and stored."""
  if not enabled() or not all(os.path.isdir(f) for f in folders):  # missing: the loader's own error
    return load()
  try:
    want = key(folders, options)
  except OSError as e:  # a file the hash cannot read: the loader says what is wrong, if it needs it
    logging.warning("%s: cannot hash the dataset's files for the cache (%s); loading from the files", name, e)
    return load()
  suffix = "".join(f"-{k}{v}" for k, v in sorted(options.items()))
  path = os.path.join(cache_dir(), "datasets", f"{name}{suffix}.pkl")
  if os.path.isfile(path):
    try:
      with open(path, "rb") as f:
        entry = pickle.load(f)
      if isinstance(entry, dict) and entry.get("key") == want and isinstance(entry.get("dataset"), Dataset):
        logging.info("%s: read back from the dataset cache (%s)", name, path)
        return entry["dataset"]
      logging.info("%s: the dataset cache's entry is out of date; loading from the files", name)
    except Exception as e:  # noqa: BLE001 (a truncated or foreign file: any unpickling error)
      logging.warning(
        "%s: cannot read the dataset cache's %s (%s: %s); loading from the files", name, path, type(e).__name__, e
      )
  ds = load()
  try:
    with writers.atomic_path(path) as tmp, open(tmp, "wb") as f:
      pickle.dump({"key": want, "dataset": ds}, f, protocol=pickle.HIGHEST_PROTOCOL)
  except OSError as e:
    logging.warning("%s: cannot write the dataset cache's %s (%s); continuing without it", name, path, e)
  return ds
