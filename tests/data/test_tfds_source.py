"""tfds: sources: a tiny tfds builder prepared as array_record under a temporary data dir.

Preparing and reading need tensorflow-datasets only (no TensorFlow, no network).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow_datasets as tfds

from jaxlm.data import sources, tfds_source

NAME = "jaxlm_tiny_docs"  # registered by the class below (snake case of its name)
TRAIN = ["first document", "second one", "ünïcödé third", ""]  # the empty one is dropped
SPLITS = {
    "validation": {"train": TRAIN, "validation": ["held out a", "held out b"]},
    "test": {"train": TRAIN, "test": ["test document"]},
    "train_only": {"train": [f"document {i}" for i in range(10)]},
    "blank": {"train": ["", "  \n"], "validation": ["x"]},
}


class JaxlmTinyDocs(tfds.core.GeneratorBasedBuilder):
  """A few short documents; each config has a different set of splits."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name) for name in SPLITS]

  def _info(self) -> tfds.core.DatasetInfo:
    features = {"text": tfds.features.Text(), "title": tfds.features.Text()}
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(docs)
            for split, docs in SPLITS[self.builder_config.name].items()}

  def _generate_examples(self, docs):
    for i, doc in enumerate(docs):
      yield i, {"text": doc, "title": f"title {i}"}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
  data_dir = tmp_path_factory.mktemp("tfds")
  config = tfds.download.DownloadConfig(try_download_gcs=False)
  for name in SPLITS:
    builder = JaxlmTinyDocs(config=name, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(download_config=config)
  return data_dir


@pytest.fixture
def data_dir(prepared, monkeypatch) -> Path:
  monkeypatch.setenv("TFDS_DATA_DIR", str(prepared))
  return prepared


def nonempty(docs):
  return sorted(d for d in docs if d)


@pytest.mark.parametrize("spec", [f"{NAME}/validation", f"{NAME}/validation:1.0.0"])
def test_reads_train_and_validation(data_dir, spec):
  corpus = sources.load_corpus(f"tfds:{spec}")
  assert isinstance(corpus, sources.Corpus)
  assert sorted(corpus.train) == nonempty(TRAIN)  # tfds stores examples shuffled
  assert sorted(corpus.val) == ["held out a", "held out b"]
  assert all(isinstance(d, str) for d in corpus.train + corpus.val)


def test_text_field(data_dir):
  corpus = sources.load_corpus(f"tfds:{NAME}/validation", text_field="title")
  assert sorted(corpus.train) == [f"title {i}" for i in range(len(TRAIN))]
  with pytest.raises(ValueError, match="no feature 'body'"):
    sources.load_corpus(f"tfds:{NAME}/validation", text_field="body")


def test_validation_falls_back_to_test_then_to_train(data_dir, monkeypatch):
  monkeypatch.setattr(tfds_source, "_READ_BATCH", 3)  # also reads in several batches
  corpus = sources.load_corpus(f"tfds:{NAME}/test")
  assert sorted(corpus.train) == nonempty(TRAIN)
  assert corpus.val == ["test document"]
  corpus = sources.load_corpus(f"tfds:{NAME}/train_only")
  assert len(corpus.train) == 9 and len(corpus.val) == 1
  assert sorted(corpus.train + corpus.val) == sorted(SPLITS["train_only"]["train"])


def test_blank_dataset_is_an_error(data_dir):
  with pytest.raises(ValueError, match="is empty"):
    sources.load_corpus(f"tfds:{NAME}/blank")


def test_honours_tfds_default_data_dir(prepared, monkeypatch):
  monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
  monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(prepared))  # read at tfds import
  assert sorted(sources.load_corpus(f"tfds:{NAME}/test").val) == ["test document"]


def test_not_prepared(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  with pytest.raises(FileNotFoundError, match=(
      f"tfds build {NAME}/validation --file_format=array_record --data_dir={tmp_path}")):
    sources.load_corpus(f"tfds:{NAME}/validation")
  with pytest.raises(tfds_source.DatasetNotPreparedError, match="no such dataset"):
    sources.load_corpus("tfds:jaxlm_no_such_dataset")


def test_tfrecord_only_is_an_error(prepared, tmp_path, monkeypatch):
  # Writing real tfrecord files needs TensorFlow, so relabel an array_record copy.
  version_dir = tmp_path / NAME / "test" / "1.0.0"
  shutil.copytree(prepared / NAME / "test" / "1.0.0", version_dir)
  info_path = version_dir / "dataset_info.json"
  info = json.loads(info_path.read_text())
  info["fileFormat"] = "tfrecord"
  info_path.write_text(json.dumps(info))
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  with pytest.raises(ValueError, match="prepared as tfrecord.*--file_format=array_record"):
    sources.load_corpus(f"tfds:{NAME}/test")


def test_missing_package(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(ImportError, match=r"pip install 'jaxlm\[tfds\]'"):
    sources.load_corpus(f"tfds:{NAME}/validation")


def test_fresh_process_reads_without_the_builder_or_tensorflow(prepared):
  """The usual case: the builder code is not imported, only its prepared files are read."""
  script = (
      "import json, sys\n"
      "from jaxlm.data.sources import load_corpus\n"
      f"corpus = load_corpus('tfds:{NAME}/validation')\n"
      "print(json.dumps([corpus.train, corpus.val, 'tensorflow' in sys.modules]))\n")
  root = Path(sources.__file__).resolve().parents[2]
  env = dict(os.environ, TFDS_DATA_DIR=str(prepared),
             PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                       text=True, check=True, timeout=60).stdout
  train, val, imported_tensorflow = json.loads(out.splitlines()[-1])
  assert sorted(train) == nonempty(TRAIN) and sorted(val) == ["held out a", "held out b"]
  assert not imported_tensorflow  # not even when it is installed


class JaxlmTinyPairs(tfds.core.GeneratorBasedBuilder):
  """Preference records with text fields, as SFT / DPO read them from tfds."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    features = {k: tfds.features.Text() for k in ("prompt", "chosen", "rejected")}
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(range(1, 9)), "test": self._generate_examples([9])}

  def _generate_examples(self, ids):
    for i in ids:
      yield i, {"prompt": f"Sort: {i} 0", "chosen": f"0 {i}", "rejected": f"{i} 0"}


def test_records_for_sft_and_preferences(tmp_path, monkeypatch):
  from jaxlm import config as configlib
  from jaxlm.objectives import reward, sft
  JaxlmTinyPairs(data_dir=tmp_path, file_format="array_record").download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  cfg = configlib.load("configs/task_chain.py:reward,cpu", ["data.source=tfds:jaxlm_tiny_pairs"])
  train, val = reward.load_records(cfg)
  assert len(train) == 8 and val == [{"prompt": [{"role": "user", "content": "Sort: 9 0"}],
                                      "chosen": "0 9", "rejected": "9 0"}]
  with pytest.raises(ValueError, match=r"tfds:jaxlm_tiny_pairs\[train:0\]: .*response"):
    sft.load_records(cfg)  # preference records are not SFT records
