"""Fetch the real datasets and verify them against the table of `data_sources.py`.

A folder is assembled in a hidden temporary folder next to it,
every file's SHA-256 is checked, and only then is the folder renamed into place: a mismatch or
an interrupted download leaves nothing in the data folder. `sources` (archives, folders or
files the user already has: zip, tar, tar.gz) are searched first, by file name; a file not
found there is fetched from its URL. `mirror` replaces the URL host (a local mirror, or
`file://` in the tests).

  fetch_dataset("ml-100k", "data")                        # downloads, verifies, unpacks
  fetch_dataset("ml-100k", "data", sources=["ml-100k.zip"])  # GroupLens's own archive
"""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile

from absl import logging

from metarec_jax.data_sources import (  # noqa: F401 (the table, re-exported for callers)
  DATASET_FOLDERS,
  FOLDERS,
  RAW,
  Folder,
  Group,
  Remote,
  markdown_table,
)
from metarec_jax.progress import Progress


class DownloadError(ValueError):
  """A download, an archive or a checksum that is not what the table says."""


def sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def _normalise(remote: Remote, data: bytes) -> bytes:
  return data.replace(b"\r\n", b"\n") if remote.crlf_to_lf else data


class _Sources:
  """The user's archives, folders and files, indexed by member path; plus fetched URLs, cached."""

  def __init__(self, sources, mirror: str):
    self.mirror, self.members, self.urls = mirror, {}, {}
    for src in sources:
      self._add(src, self._open_source(src))

  def _open_source(self, src: str) -> bytes | str:
    if re.match(r"^[a-z][a-z0-9+.-]*://", src):
      return self.fetch(src)
    if os.path.isdir(src):
      return src
    if not os.path.isfile(src):
      raise DownloadError(f"--source={src}: no such file or folder")
    with open(src, "rb") as f:
      return f.read()

  def _add(self, src: str, opened: bytes | str) -> None:
    if isinstance(opened, str):  # a folder: every file below it
      for root, _, names in os.walk(opened):
        for n in names:
          path = os.path.join(root, n)
          self.members[f"{src}:{os.path.relpath(path, opened)}"] = lambda p=path: pathlib.Path(p).read_bytes()
      return
    for name, read in _archive_members(src, opened).items():
      self.members[f"{src}:{name}"] = read

  def find(self, name: str) -> list[tuple[str, object]]:
    """Members whose path ends with `name` (at a path boundary)."""
    return [(k, read) for k, read in self.members.items() if k.split(":", 1)[1] == name or k.endswith("/" + name)]

  def fetch(self, url: str) -> bytes:
    if url not in self.urls:
      self.urls[url] = _download(url)
    return self.urls[url]

  def archive(self, url: str) -> dict:
    key = ("archive", url)
    if key not in self.urls:
      self.urls[key] = _archive_members(url, self.fetch(url))
    return self.urls[key]


def _archive_members(src: str, data: bytes) -> dict:
  """{member path: reader} of a zip or tar archive, or {basename: reader} of a plain file."""
  buf = io.BytesIO(data)
  if zipfile.is_zipfile(buf):
    zf = zipfile.ZipFile(buf)
    return {i.filename: (lambda n=i.filename: zf.read(n)) for i in zf.infolist() if not i.is_dir()}
  try:
    tf = tarfile.open(fileobj=io.BytesIO(data))
  except tarfile.TarError:
    name = os.path.basename(src.rstrip("/").split("?")[0])
    return {name: lambda: data}
  return {m.name: (lambda m=m: tf.extractfile(m).read()) for m in tf.getmembers() if m.isfile()}


def _download(url: str) -> bytes:
  try:
    with urllib.request.urlopen(url, timeout=60) as resp:
      total = resp.headers.get("Content-Length")
      chunks = []
      with Progress(f"download {url}", int(total) if total else None, unit="B", every_s=10, scale=True) as bar:
        while chunk := resp.read(1 << 20):
          chunks.append(chunk)
          bar.update(len(chunk))
      return b"".join(chunks)
  except (urllib.error.URLError, OSError, ValueError) as e:
    reason = getattr(e, "reason", e)
    raise DownloadError(
      f"{url}: could not be fetched ({reason}); give an archive or folder you have with --source"
    ) from None


def _get(remote: Remote, src: _Sources, folder: str) -> bytes:
  """The verified bytes of `remote`: from the user's sources if one matches, else its URL."""
  want = remote.member or remote.path
  found = src.find(remote.name) or src.find(os.path.basename(want))
  if found:
    tried = []
    for where, read in found:
      data = _normalise(remote, read())
      if sha256(data) == remote.sha256:
        logging.info("%s/%s: from %s (sha256 verified)", folder, remote.name, where)
        return data
      tried.append((where, sha256(data)))
    raise DownloadError(
      f"{folder}/{remote.name}: checksum mismatch for {tried[0][0]}: sha256 {tried[0][1]}, expected "
      f"{remote.sha256} ({len(tried)} candidate(s) in --source; nothing was written)"
    )
  url = remote.url(src.mirror)
  data = src.archive(url)[remote.member]() if remote.member else src.fetch(url)
  data = _normalise(remote, data)
  if sha256(data) != remote.sha256:
    raise DownloadError(
      f"{folder}/{remote.name}: checksum mismatch for {url}{':' + remote.member if remote.member else ''}: "
      f"sha256 {sha256(data)}, expected {remote.sha256} (nothing was written)"
    )
  return data


def _group_files(group: Group, src: _Sources, folder: str) -> dict[str, bytes]:
  pattern = re.compile(group.pattern)
  members = {k.split(":", 1)[1]: r for k, r in src.members.items()}
  origin = "--source"
  if not any(pattern.search(k) for k in members):
    origin = group.url(src.mirror)
    members = src.archive(origin)
  out = {}
  for path, read in members.items():
    m = pattern.search(path)
    if m:
      out.setdefault("/".join((group.prefix,) + m.groups()), read)
  digest = hashlib.sha256()
  for name in sorted(out):
    digest.update(out[name]())
  if len(out) != group.count or digest.hexdigest() != group.sha256:
    raise DownloadError(
      f"{folder}/{group.prefix}: checksum mismatch for {origin}: {len(out)} files with sha256 "
      f"{digest.hexdigest()}, expected {group.count} files with {group.sha256} (nothing was written)"
    )
  return {name: out[name]() for name in out}


def verify_folder(path: str, folder: Folder) -> list[str]:
  """What in an existing folder differs from the table ([] when every file verifies)."""
  bad = []
  for r in folder.files:
    p = os.path.join(path, r.name)
    if not os.path.isfile(p):
      bad.append(f"{r.name} is missing")
      continue
    with open(p, "rb") as f:
      got = sha256(f.read())
    if got != r.sha256:
      bad.append(f"{r.name} has sha256 {got}, expected {r.sha256}")
  if folder.group is not None:
    root = os.path.join(path, folder.group.prefix)
    names = (
      sorted(
        os.path.join(d, n)
        for d in sorted(os.listdir(root))
        if os.path.isdir(os.path.join(root, d))
        for n in os.listdir(os.path.join(root, d))
      )
      if os.path.isdir(root)
      else []
    )
    digest = hashlib.sha256()
    for n in names:
      with open(os.path.join(root, n), "rb") as f:
        digest.update(f.read())
    if len(names) != folder.group.count or digest.hexdigest() != folder.group.sha256:
      bad.append(f"{folder.group.prefix}/ has {len(names)} files that do not verify")
  return bad


def fetch_folder(folder: Folder, data_dir: str, src: _Sources, overwrite: bool = False) -> str:
  """Assembles `folder` in a temporary folder inside `data_dir`, verifies it, renames it into
  place. An existing folder that verifies is kept as it is; one that does not is an error
  unless `overwrite`."""
  target = os.path.join(data_dir, folder.name)
  if os.path.exists(target):
    bad = verify_folder(target, folder)
    if not bad:
      logging.info("%s: already there; every file verifies", target)
      return "verified"
    if not overwrite:
      raise DownloadError(
        f"{target} exists and does not match: {bad[0]}"
        f"{f' (and {len(bad) - 1} more)' if len(bad) > 1 else ''}; move it away or pass --overwrite"
      )
  os.makedirs(data_dir, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=data_dir)
  try:
    files = {}
    with Progress(f"{folder.name}: fetch and verify", len(folder.files) + (folder.group is not None), "file") as bar:
      for r in folder.files:
        files[r.name] = _get(r, src, folder.name)
        bar.update(1)
      if folder.group is not None:
        files.update(_group_files(folder.group, src, folder.name))
        bar.update(1)
    for name, data in files.items():
      path = os.path.join(tmp, name)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, "wb") as f:
        f.write(data)
    old = None
    if os.path.exists(target):
      old = tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=data_dir)
      os.rename(target, os.path.join(old, "x"))
    os.rename(tmp, target)
    if old:
      shutil.rmtree(old)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp)
  logging.info("%s: %d files written, every sha256 verified", target, len(files))
  return "written"


def fetch_dataset(
  dataset: str,
  data_dir: str,
  sources: list[str] | tuple[str, ...] = (),
  mirror: str = RAW,
  overwrite: bool = False,
  folders: dict[str, Folder] = FOLDERS,
  dataset_folders: dict[str, tuple[str, ...]] = DATASET_FOLDERS,
) -> dict[str, str]:
  """Every folder `dataset` needs, in `data_dir`: {folder: "written" | "verified"}."""
  if dataset not in dataset_folders:
    raise DownloadError(f"--dataset={dataset!r}: expected one of {', '.join(dataset_folders)}")
  src = _Sources(sources, mirror)
  return {name: fetch_folder(folders[name], data_dir, src, overwrite) for name in dataset_folders[dataset]}
