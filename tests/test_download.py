"""The download helper: offline, with file:// URLs and archives the tests build; and the real
table checked against the shared data's recorded checksums and files."""

import hashlib
import io
import json
import os
import re
import tarfile
import zipfile

import pytest

from conftest import REPO, run_binary
from metarec_jax import download as dl
from metarec_jax.download import DownloadError, Folder, Group, Remote, fetch_dataset

A, B = b"a\tb\n1\t2\n", b"x|y\n"
CRLF = b"u\tt\r\n1\t2\r\n"  # the original's line ends; the table's checksum is of the LF copy
EPISODES = {
  f"{split}/supp_x_{i}_u_m_ids.txt": f"{split} {i}\n".encode() for split in ("training", "testing") for i in (0, 1)
}


def sha(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def table(commit="c0ffee"):
  episodes = hashlib.sha256(b"".join(EPISODES[k] for k in sorted(EPISODES))).hexdigest()
  files = (
    Remote("a.tsv", len(A), sha(A), "owner/repo", commit, "data/a.tsv"),
    Remote("b.txt", len(B), sha(B), "owner/repo", commit, "data/b.txt"),
    Remote("t.tsv", 8, sha(CRLF.replace(b"\r\n", b"\n")), "other/repo", commit, "t.tsv", crlf_to_lf=True),
    Remote("z.txt", 2, sha(b"z\n"), "owner/repo", commit, "pack.zip", member="inner/z.txt"),
  )
  group = Group(
    "episodes",
    r"(?:^|/)lastfm_20/(training|testing)/evidence/([^/]+\.txt)$",
    4,
    episodes,
    "owner/repo",
    commit,
    "pack.zip",
  )
  return {"toy": Folder("toy", files, group)}


def serve(root, commit="c0ffee", a=A):
  """A file:// mirror of the toy table: <root>/<repo>/<commit>/<path>."""
  for repo, path, data in (
    ("owner/repo", "data/a.tsv", a),
    ("owner/repo", "data/b.txt", B),
    ("other/repo", "t.tsv", CRLF),
  ):
    p = root / repo / commit / path
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
  with zipfile.ZipFile(root / "owner/repo" / commit / "pack.zip", "w") as z:
    z.writestr("inner/z.txt", b"z\n")
    for name, data in EPISODES.items():
      split, base = name.split("/")
      z.writestr(f"data/lastfm_20/{split}/evidence/{base}", data)
  return f"file://{root}"


def fetch(data_dir, mirror, **kw):
  return fetch_dataset("toy", str(data_dir), mirror=mirror, folders=table(), dataset_folders={"toy": ("toy",)}, **kw)


def test_fetch_verifies_unpacks_and_keeps_a_verified_folder(tmp_path):
  mirror = serve(tmp_path / "mirror")
  assert fetch(tmp_path / "data", mirror) == {"toy": "written"}
  out = tmp_path / "data" / "toy"
  assert (out / "a.tsv").read_bytes() == A and (out / "z.txt").read_bytes() == b"z\n"
  assert (out / "t.tsv").read_bytes() == b"u\tt\n1\t2\n"  # CRLF converted, then verified
  assert (out / "episodes/training/supp_x_1_u_m_ids.txt").read_bytes() == b"training 1\n"
  assert sorted(os.listdir(tmp_path / "data")) == ["toy"]  # no temporary folder left
  assert fetch(tmp_path / "data", "file:///nowhere") == {"toy": "verified"}  # nothing fetched again


def test_checksum_mismatch_names_the_file_and_both_hashes_and_writes_nothing(tmp_path):
  mirror = serve(tmp_path / "mirror", a=b"tampered\n")
  with pytest.raises(DownloadError) as err:
    fetch(tmp_path / "data", mirror)
  msg = str(err.value)
  assert msg.startswith("toy/a.tsv: checksum mismatch for file://") and "data/a.tsv" in msg
  assert f"sha256 {sha(b'tampered' + bytes([10]))}, expected {sha(A)}" in msg
  assert os.listdir(tmp_path / "data") == []  # the partial folder is removed


def test_unreachable_url_is_one_clear_error(tmp_path):
  with pytest.raises(DownloadError, match=r"file:///nowhere/owner/repo/c0ffee/data/a.tsv: could not be fetched"):
    fetch(tmp_path / "data", "file:///nowhere")
  assert os.listdir(tmp_path / "data") == []


@pytest.mark.parametrize("kind", ["zip", "tar.gz", "folder"])
def test_source_archive_or_folder_the_user_has(tmp_path, kind):
  mirror = serve(tmp_path / "mirror")
  members = {
    "toy-1.0/a.tsv": A,
    "toy-1.0/sub/b.txt": B,
    "toy-1.0/t.tsv": CRLF,
    "toy-1.0/z.txt": b"z\n",
    "toy-1.0/README": b"r",
  }
  members.update({f"toy-1.0/lastfm_20/{k.split('/')[0]}/evidence/{k.split('/')[1]}": v for k, v in EPISODES.items()})
  if kind == "zip":
    src = tmp_path / "toy.zip"
    with zipfile.ZipFile(src, "w") as z:
      for name, data in members.items():
        z.writestr(name, data)
  elif kind == "tar.gz":
    src = tmp_path / "toy.tar.gz"
    with tarfile.open(src, "w:gz") as t:
      for name, data in members.items():
        info = tarfile.TarInfo(name)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
  else:
    src = tmp_path / "unpacked"
    for name, data in members.items():
      (src / name).parent.mkdir(parents=True, exist_ok=True)
      (src / name).write_bytes(data)
  # every file is in the source: the mirror is never read (pointed nowhere)
  assert fetch(tmp_path / "data", "file:///nowhere", sources=[str(src)]) == {"toy": "written"}
  assert (tmp_path / "data/toy/b.txt").read_bytes() == B
  assert (tmp_path / "data/toy/episodes/testing/supp_x_0_u_m_ids.txt").read_bytes() == b"testing 0\n"
  del mirror


def test_a_wrong_file_in_the_source_is_refused_and_a_partial_source_falls_back_to_urls(tmp_path):
  mirror = serve(tmp_path / "mirror")
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine/b.txt").write_bytes(B)  # right: used; the rest comes from the mirror
  assert fetch(tmp_path / "data", mirror, sources=[str(tmp_path / "mine")]) == {"toy": "written"}
  (tmp_path / "mine/a.tsv").write_bytes(b"old version\n")
  with pytest.raises(DownloadError, match=r"toy/a.tsv: checksum mismatch for .*mine:a.tsv: sha256 [0-9a-f]{64}"):
    fetch(tmp_path / "data2", mirror, sources=[str(tmp_path / "mine")])
  assert not os.path.exists(tmp_path / "data2/toy")
  with pytest.raises(DownloadError, match=r"--source=.*missing.zip: no such file or folder"):
    fetch(tmp_path / "data3", mirror, sources=[str(tmp_path / "missing.zip")])


def test_an_existing_folder_that_differs_is_refused_unless_overwrite(tmp_path):
  mirror = serve(tmp_path / "mirror")
  fetch(tmp_path / "data", mirror)
  (tmp_path / "data/toy/a.tsv").write_bytes(b"edited\n")
  with pytest.raises(DownloadError, match=r"data/toy exists and does not match: a.tsv has sha256 .*--overwrite"):
    fetch(tmp_path / "data", mirror)
  assert (tmp_path / "data/toy/a.tsv").read_bytes() == b"edited\n"  # untouched
  assert fetch(tmp_path / "data", mirror, overwrite=True) == {"toy": "written"}
  assert (tmp_path / "data/toy/a.tsv").read_bytes() == A and sorted(os.listdir(tmp_path / "data")) == ["toy"]


def test_docs_show_the_code_table():
  with open(os.path.join(REPO, "docs", "data.md")) as f:
    assert dl.markdown_table() in f.read()


def test_table_matches_the_recorded_checksums_and_the_files(shared_data_dir):
  readme = os.path.join(shared_data_dir, "README.md")
  if not os.path.isfile(readme):
    pytest.fail(f"{readme}: missing (it records the checksums the download table must match)")
  with open(readme) as f:
    text = f.read()
  recorded = re.findall(r"^\| `([^`]+)` \| (\d+) \| [^|]+\| `([0-9a-f]{64})` \|", text, re.M)
  table_rows = [(r.name, str(r.size), r.sha256) for f in dl.FOLDERS.values() for r in f.files]
  assert sorted(table_rows) == sorted(recorded)
  assert dl.FOLDERS["tanp-lastfm"].group.sha256 in text
  for folder in dl.FOLDERS.values():
    assert dl.verify_folder(os.path.join(shared_data_dir, folder.name), folder) == []


def mirror_of(shared_data_dir, root):
  """The real table's file:// mirror, built from the shared data (TaNP's data.zip rebuilt)."""
  for folder in dl.FOLDERS.values():
    for r in folder.files:
      if r.member is None:
        p = root / r.repo / r.commit / r.path
        p.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.join(shared_data_dir, folder.name, r.name), p)
  tanp = dl.FOLDERS["tanp-lastfm"]
  p = root / tanp.group.repo / tanp.group.commit / tanp.group.path
  p.parent.mkdir(parents=True, exist_ok=True)
  with zipfile.ZipFile(p, "w") as z:
    for r in tanp.files:
      z.write(os.path.join(shared_data_dir, tanp.name, r.name), r.member)
    for split in ("training", "validation", "testing"):
      for name in os.listdir(os.path.join(shared_data_dir, tanp.name, "episodes", split)):
        z.write(
          os.path.join(shared_data_dir, tanp.name, "episodes", split, name), f"data/lastfm_20/{split}/evidence/{name}"
        )
  return f"file://{root}"


@pytest.mark.slow
def test_binary_fetches_every_dataset_and_the_loaders_read_it(shared_data_dir, tmp_path):
  from metarec_jax.data import load_dataset

  mirror = mirror_of(shared_data_dir, tmp_path / "mirror")
  proc = run_binary("experiments.download", "--dataset=all", f"--data_dir={tmp_path}/data", f"--mirror={mirror}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert set(json.loads(proc.stdout)["folders"].values()) == {"written"}
  assert load_dataset("ml-100k", data_dir=str(tmp_path / "data")).n_ratings == 100_000
  assert load_dataset("lastfm", data_dir=str(tmp_path / "data")).n_users > 0
  # a tampered source: exit 2, one error line naming the file and both hashes, nothing written
  (tmp_path / "u.data").write_bytes(b"1\t1\t5\t0\n")
  proc = run_binary(
    "experiments.download",
    "--dataset=ml-100k",
    f"--data_dir={tmp_path}/fresh",
    f"--source={tmp_path}/u.data",
    f"--mirror={mirror}",
  )
  assert proc.returncode == 2
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ml-100k/u.data: checksum mismatch for ") and "expected 06416e59" in last
  assert not os.path.exists(tmp_path / "fresh/ml-100k")
