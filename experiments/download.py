"""Fetch a dataset's folders, verify every file's SHA-256, and unpack them where the loaders look.

  python -m experiments.download --dataset=ml-100k --data_dir=data
  python -m experiments.download --dataset=ml-100k --data_dir=data --source=~/Downloads/ml-100k.zip
  python -m experiments.download --dataset=ml-1m --data_dir=data     # MeLU's files and ratings.rda
  python -m experiments.download --table                            # the sources and checksums

The sources and checksums are one table (metarec_jax/data_sources.py). A folder is written only
when every file verifies; a mismatch names the file and both hashes, exits 2, and leaves
nothing in --data_dir. A folder already there that verifies is left as it is.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

from experiments import cli

from metarec_jax.data.io import resolve_data_dir
from metarec_jax.download import DATASET_FOLDERS, RAW, DownloadError, fetch_dataset, markdown_table

flags.DEFINE_enum("dataset", None, list(DATASET_FOLDERS) + ["all"], "The dataset to fetch (the loaders' names).")
flags.DEFINE_string(
  "data_dir",
  None,
  "Where the dataset folders go (default: $METAREC_DATA_DIR; when that is unset too, ./data, as the loaders).",
)
flags.DEFINE_multi_string(
  "source",
  [],
  "An archive (zip, tar, tar.gz), folder, file or URL you already have; searched first, by file name "
  "(repeatable). Files not found there are fetched from the table's URLs.",
)
flags.DEFINE_string("mirror", RAW, "The host the table's /<repo>/<commit>/<path> URLs are fetched from.")
flags.DEFINE_bool("overwrite", False, "Replace a folder that exists but does not verify.")
flags.DEFINE_bool("table", False, "Print the sources-and-checksums table (markdown) and exit.")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.table:
    print(markdown_table())
    return
  try:
    if FLAGS.dataset is None:
      raise DownloadError("--dataset is required: one of " + ", ".join(list(DATASET_FOLDERS) + ["all"]))
    data_dir = resolve_data_dir(FLAGS.data_dir)
    names = list(DATASET_FOLDERS) if FLAGS.dataset == "all" else [FLAGS.dataset]
    sources = [os.path.expanduser(s) for s in FLAGS.source]
    done = {}
    for name in names:
      done.update(fetch_dataset(name, data_dir, sources, FLAGS.mirror, FLAGS.overwrite))
  except DownloadError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(json.dumps({"data_dir": data_dir, "folders": done}, indent=2, sort_keys=True))


if __name__ == "__main__":
  cli.run(main)
