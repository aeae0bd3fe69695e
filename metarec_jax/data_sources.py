"""Where every real dataset file comes from: one table of sources, sizes and SHA-256 checksums.

Every file is in a public GitHub repository at a pinned commit (the sources and checksums
recorded with the shared data; `raw.githubusercontent.com` serves a file of a commit at
`/<repo>/<commit>/<path>`). `download.py` fetches and verifies by this table; docs/data.md shows
`markdown_table()`, and a test checks both against the shared data's README.
"""

from __future__ import annotations

import dataclasses

RAW = "https://raw.githubusercontent.com"


def raw_url(repo: str, commit: str, path: str, mirror: str = RAW) -> str:
  return f"{mirror.rstrip('/')}/{repo}/{commit}/{path}"


@dataclasses.dataclass(frozen=True)
class Remote:
  """One file of a data folder: `name` in the folder, its size and SHA-256, and where it lives:
  `path` in `repo` at `commit`, or member `member` of the archive at that path."""

  name: str
  size: int
  sha256: str
  repo: str
  commit: str
  path: str
  member: str | None = None
  crlf_to_lf: bool = False  # the original has CRLF line ends; the verified copy has LF

  def url(self, mirror: str = RAW) -> str:
    return raw_url(self.repo, self.commit, self.path, mirror)


@dataclasses.dataclass(frozen=True)
class Group:
  """Many small files verified together: the members of an archive matching `pattern` (groups:
  subfolder, file name) go to `<folder>/<prefix>/<subfolder>/<file>`; the SHA-256 of all their
  bytes, concatenated in sorted path order, must be `sha256`."""

  prefix: str
  pattern: str
  count: int
  sha256: str
  repo: str
  commit: str
  path: str

  def url(self, mirror: str = RAW) -> str:
    return raw_url(self.repo, self.commit, self.path, mirror)


@dataclasses.dataclass(frozen=True)
class Folder:
  name: str
  files: tuple[Remote, ...]
  group: Group | None = None
  note: str = ""


# Files, bytes and SHA-256, as recorded with the shared data (README.md there).
_ML100K = (
  ("README", 6750, "4883b8cf340ed0059971b33f56ad3adc88a40792108ebca3d24aafc4c82e8b52"),
  ("u.data", 1979173, "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"),
  ("u.genre", 202, "9757e0d3e6b298159a80dd48eaf938114690e911e39af97a76949ef1663610bb"),
  ("u.info", 36, "5b0a40b2e47a729ee6203063f6dcf8790c2e63f5a18663e6ee318a72c5f3c27b"),
  ("u.item", 236344, "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701"),
  ("u.occupation", 193, "cd5fbec9afe345d993a62fc7817df1a4a9079c4feb267b3118763b8fd942137d"),
  ("u.user", 22628, "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c"),
  ("u1.base", 1586544, "ce253ec86c448b44fb3ba9a30d12dcfc2e9210cbde71efada3730c22e9ac212a"),
  ("u1.test", 392629, "18c6014a4b2c7324f250a63f8904a7b16b2b19f911129e346141507b0cbac950"),
  ("u2.base", 1583948, "6c06f0b5df4b256da1a994f3ac66edc8da4d3f09bc9282df6b14d893366d703e"),
  ("u2.test", 395225, "4de658d1e04ed9104629509a2e2528fce833ac8e048280183f1df167632038c3"),
  ("u3.base", 1582546, "afdc155c291c6edc41c0407e39d7462eb98d341e064f0b0a12175b80b3c4af5d"),
  ("u3.test", 396627, "0f548b51c78327de4c156461d3e430b7e5579fe2b5681586a59416e48fd35f6d"),
  ("u4.base", 1581878, "219f0f4d40dfe9c5141d425f53fa91ee23ed275f14e280bbf1b50117afb064ca"),
  ("u4.test", 397295, "7c02ad0a1e7ab1083c8b9d4b627203a051dd7b5eab46d99fa44de33470de8db9"),
  ("u5.base", 1581776, "a9574e59ce961eec2121627760b6e9b0974ce1637b3fe69ac32cb14a4bfab485"),
  ("u5.test", 397397, "351cc52e0d15b6c721466276fc24671d40936899e3d01fadeaf312915b8c5634"),
  ("ua.base", 1792501, "67b5bcdb380c29f85d56a012ecd88612ae020f30a6730d117a334ee8203b91f2"),
  ("ua.test", 186672, "d0497e202417720f57a184ec8c66be2d1afa4ff41bb53787c57b28d6bf79bc42"),
  ("ub.base", 1792476, "237254d253b6ad7de84f919d041055428646254f34ed8f562703c899430cd881"),
  ("ub.test", 186697, "d54a72d05730d5892062734b2bec73e976f9b713d18c828a18b968d6cce442da"),
)

_MELU_FILES = (
  ("README", 5577, "2d5ddce86ccbd247207456165827b4b9ddf27282bca93807d4c763e28414f133"),
  ("item_cold_state.json", 1306464, "1cb691e39e9f64a12922f1c8da2bf8b9c07f885decc4dd4ee5aea0e5bbcc46a1"),
  ("item_cold_state_y.json", 519186, "b9325e4b056cda7d2834f17c33c4ec34ee6516142c8b51e50103f80d2b0793bf"),
  ("m_actor.txt", 121504, "7f765f394048db436f3b006eaf6154f46abc2a0af17068d9622e40ab36bb15e4"),
  ("m_age.txt", 27, "74f10158e752a773c0317b8bdc4bd0c89dd5c07b79c7a43fdb2577f094dedf46"),
  ("m_director.txt", 33452, "eb7f008b18607bd6539d2459bf47812020cf5c3a64c49e6431e7f6f541c4930f"),
  ("m_gender.txt", 4, "bccd3340ac337dc846f06295a9c94a8d7dc622a44902e9ee53b8790a8978ef66"),
  ("m_genre.txt", 213, "588546914e1ed5b60cd0a7dcda9286c38d5efdc7f7d58a08e331de47722224e8"),
  ("m_occupation.txt", 74, "258dc75e14c2f2f80e45a9bd489b37a8a5d46056fc1a3536fce3fb9d97d6e2ca"),
  ("m_rate.txt", 33, "849e3d478b5e698fbafcbb38f6a0a0b7dbb6638e7173d5e5a6dee113d799c88e"),
  ("m_zipcode.txt", 23814, "12b2966bc29bfc0736aae58bdf9a1c793114764ae8f3b295577a8fd56e0ea199"),
  ("movies.dat", 171324, "ad22fd112a753c753925eea3a7a46b7ed82b1273fc4f47f798ee52ec0c28576b"),
  ("movies_extrainfos.dat", 3309481, "18432b1713b66a5262c11f6d929801a6e6f414d861cd2adf191dfba61e45c74d"),
  ("user_and_item_cold_state.json", 320574, "9045ceae16fbc0ca0a160b3ce96bedf97d304d04328755c9fadc9a4ba55450f0"),
  ("user_and_item_cold_state_y.json", 127559, "5bc5057b32224d91fa1f8161f242db72b186afc1c51b571f5aab3c3e93cf0e90"),
  ("user_cold_state.json", 1264762, "ec7414e1da3b1636d34f0f3a5615e2a07bea9b82156123768049cc166ed20df1"),
  ("user_cold_state_y.json", 502962, "62b84d073377c183cabfa0b78cb4e745f763b0713920033edf0bbbc43e1dca11"),
  ("users.dat", 134368, "1dc3a95300cb19f7c10e027daf29b8cdf1d908dab65b5edfb45950aa389a10a3"),
  ("warm_state_y.json", 1968781, "4ad7829ea3d8a4d58ca8c96a4f368c5c7eab6b8ed85430f2516ab3cd79b5dff2"),
)

_RDA = (("ratings.rda", 977460, "fce12e98b11718c93bc66769bee8abebb4fa8ded1af31a4b2e0de3e5e65910da"),)

_HETREC_FILES = (
  ("artists.dat", 1925879, "c173881362c6b28551368fecb3c0be5a6a30a6cd859e1f5775413dfe46d48648"),
  ("readme.txt", 4627, "6fe5d1e6f67b025fc50cd70883dd1a1ff16c5ff37b5b7abfb33644b83468b209"),
  ("tags.dat", 234468, "e95175f259be4c0c47644ae23d66131cd6d5767142a1405000e79f5584691d70"),
  ("user_artists.dat", 1296455, "001400dc3c7d2667fca6e4ea6dc6acc31a9dd28ad5cd0f74cea988c019934d3b"),
  ("user_friends.dat", 251565, "9a3a8f7fa5f5ec832335e5b58ed69a4cf27c6f6f6afcde62134810eea46445a7"),
  ("user_taggedartists.dat", 4180216, "c4a9ffae9ab47a9f9b2f0678ab1f7e5c1db4ca818837d8cddd1f5699c5bbf048"),
)

_TANP_FILES = (
  ("interaction_dict_x.json", 331095, "932f53397ce50d9877be4d6a549883eb32ed2941cffcfc020ccd684418e2360d"),
  ("interaction_dict_y.json", 144648, "be54d89349d23a30db74d163f69928ec14a4b5ddc6aa1b32028414abed6c3c47"),
  ("item_list.json", 29658, "d5dca6b80cc6160c0f7104381125268148f32f8a1559e9ad59cac680a0bb7d8e"),
  ("ratings_final.txt", 457561, "c92c5aa4b5424a2bfdf498d9fe234fb5d8a780bc76ada2327b029218d086b6e2"),
  ("user_list.json", 13866, "530f7e73ed29e7c7932fa69f2cf757902711f1f34cc886f1edf3160374401ffb"),
)


def _remotes(rows, repo, commit, folder, **kw) -> tuple[Remote, ...]:
  return tuple(Remote(n, size, sha, repo, commit, f"{folder}/{n}", **kw) for n, size, sha in rows)


_MELU = ("hoyeoplee/MeLU", "f70c8ff91471193cd598bc241c6b0f22665f6375")
_HETREC = ("DarakhTech/lastfm-dataset", "1763b7b633092d6d250ad6661ce2a66bb94562bd")
_TANP = ("IIEdm/TaNP", "994f2a2e305bbee8ce10cccbf158811600be49ff")

FOLDERS = {
  f.name: f
  for f in (
    Folder(
      "ml-100k",
      _remotes(_ML100K, "Dovanvu09/LLM_Recomment", "0b0cf96697be6cfc9b7cec29ad06bde8cb9565d7", "data/ml-100k"),
      note="GroupLens's ml-100k.zip holds the same files (--source)",
    ),
    Folder(
      "melu-ml-1m",
      _remotes(_MELU_FILES[:1], "srimatta/movielense", "785fc9bf32b775a8c1b3c1b19fa0a3e77b3659e8", "ml-1m")
      + _remotes(_MELU_FILES[1:], *_MELU, "movielens/ml-1m"),
      note="MeLU's modified movies.dat; the README is GroupLens's ML-1M README",
    ),
    Folder(
      "ml-1m-ratings-rda",
      _remotes(_RDA, "tarashnot/SVDApproximation", "b53f26e5dabde556747fc26b3c964f8db3a49a7b", "data"),
    ),
    Folder(
      "hetrec2011-lastfm-2k",
      _remotes(tuple(r for r in _HETREC_FILES if r[0] != "user_taggedartists.dat"), *_HETREC, "hetrec2011-lastfm-2k")
      + _remotes(
        tuple(r for r in _HETREC_FILES if r[0] == "user_taggedartists.dat"),
        "omarriaga/hybrid-recommender",
        "41bfa287088eb15d4a9137c634bfdef484d5959e",
        "data",
        crlf_to_lf=True,
      ),
      note="user_taggedartists.dat is kept with LF line ends (GroupLens's zip has CRLF; both verify)",
    ),
    Folder(
      "tanp-lastfm",
      tuple(
        Remote(n, size, sha, *_TANP, "TaNP/data.zip", member=f"data/lastfm_20/{n}") for n, size, sha in _TANP_FILES
      ),
      Group(
        prefix="episodes",
        pattern=r"(?:^|/)lastfm_20/(training|validation|testing)/evidence/([^/]+\.txt)$",
        count=698,
        sha256="1a6f7f7a0340c631434cba5e642edbb82080406632b71aa6049f95d4d0726f74",
        repo=_TANP[0],
        commit=_TANP[1],
        path="TaNP/data.zip",
      ),
      note="members of TaNP's data.zip; the 698 episode files are verified together",
    ),
  )
}
# The loaders' dataset names -> the folders each reads.
DATASET_FOLDERS = {
  "ml-100k": ("ml-100k",),
  "ml-1m": ("melu-ml-1m", "ml-1m-ratings-rda"),
  "hetrec-lastfm": ("hetrec2011-lastfm-2k",),
  "lastfm": ("tanp-lastfm",),
}


def markdown_table(folders: dict[str, Folder] = FOLDERS) -> str:
  """The sources table of docs/data.md (a test checks that the docs show exactly this)."""
  lines = ["| folder | file | bytes | sha256 | source (repo @ commit: path) |", "|---|---|---:|---|---|"]
  for f in folders.values():
    for r in f.files:
      where = f"{r.path} → {r.member}" if r.member else r.path
      lines.append(f"| `{f.name}` | `{r.name}` | {r.size} | `{r.sha256}` | {r.repo} @ {r.commit[:10]}: {where} |")
    if f.group is not None:
      g = f.group
      lines.append(
        f"| `{f.name}` | `{g.prefix}/*/*.txt` ({g.count} files, all bytes in sorted path order) | | `{g.sha256}` "
        f"| {g.repo} @ {g.commit[:10]}: {g.path} |"
      )
  return "\n".join(lines)
