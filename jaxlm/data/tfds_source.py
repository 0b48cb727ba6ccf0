"""Named tensorflow-datasets (tfds) corpora, read without TensorFlow.

`load_corpus("NAME")` reads a dataset that was prepared beforehand in the array_record
format, through tfds's random-access data sources (`as_data_source`, what
`tfds.data_source(..., download=False)` returns): reading needs `tensorflow-datasets` but not
TensorFlow. Preparing it is a separate step, which for most datasets needs TensorFlow (the
`tfds` command line imports it):

  tfds build NAME --file_format=array_record [--data_dir=DIR]

The data dir is TFDS_DATA_DIR when set (read at each call), else tfds's default
(~/tensorflow_datasets).
"""

from __future__ import annotations

import os
from typing import Any

from jaxlm.data.sources import Corpus, split_documents

_INSTALL_HINT = "tfds: data sources need tensorflow-datasets: pip install 'jaxlm[tfds]'"
_FALLBACK_VAL_FRACTION = 0.1
_READ_BATCH = 4096


class DatasetNotPreparedError(FileNotFoundError):
  """The named tfds dataset is not prepared (in array_record format) in the data dir."""


def _import_tfds() -> Any:
  try:
    import tensorflow_datasets as tfds  # optional extra
  except ImportError as e:
    raise ImportError(_INSTALL_HINT) from e
  return tfds


def _build_hint(spec: str) -> str:
  data_dir = os.environ.get("TFDS_DATA_DIR")
  dir_flag = f" --data_dir={data_dir}" if data_dir else ""
  return f"prepare it with: tfds build {spec} --file_format=array_record{dir_flag}"


def _as_text(value: Any, spec: str, text_field: str) -> str:
  value = _decoded(value)
  if isinstance(value, str):
    return value
  raise ValueError(
      f"tfds:{spec}: field {text_field!r} holds {type(value).__name__}, not text "
      "(set config.data.text_field)")


def _read_split(builder: Any, split: str, spec: str, text_field: str) -> list[str]:
  source = builder.as_data_source(split=split)  # what tfds.data_source(download=False) gives
  docs = []
  for start in range(0, len(source), _READ_BATCH):  # batched reads: ~15x faster than one by one
    batch = source.__getitems__(range(start, min(start + _READ_BATCH, len(source))))
    docs.extend(_as_text(example[text_field], spec, text_field) for example in batch)
  return docs


def _prepared_builder(spec: str) -> Any:
  """The tfds builder of a dataset prepared with random access, or a clear error."""
  tfds = _import_tfds()
  data_dir = os.environ.get("TFDS_DATA_DIR") or None
  where = data_dir or "tfds's default data dir (~/tensorflow_datasets, or TFDS_DATA_DIR)"
  try:
    builder = tfds.builder(spec, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DatasetNotPreparedError(
        f"tfds:{spec}: no such dataset: it is neither a tfds dataset name nor prepared under "
        f"{where}; check the name, or {_build_hint(spec)}") from e
  if not builder.is_prepared():
    raise DatasetNotPreparedError(
        f"tfds:{spec}: the dataset is not prepared in {builder.data_dir}; {_build_hint(spec)} "
        "(building needs TensorFlow; reading it back here does not)")
  random_access = tfds.core.file_adapters.FileFormat.with_random_access()
  if not builder.info.available_file_formats() & random_access:
    raise ValueError(
        f"tfds:{spec}: the dataset in {builder.data_dir} is prepared as "
        f"{builder.info.file_format.value}, but tfds.data_source reads only array_record (or "
        f"parquet); rebuild it into another data dir (or after deleting that folder) with "
        f"tfds build {spec} --file_format=array_record, or convert it with tfds convert_format "
        f"--dataset_version_dir={builder.data_dir} --out_file_format=array_record")
  return builder


def _decoded(value: Any) -> Any:
  """A numpy scalar as a Python value, bytes as UTF-8 text."""
  if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
    value = value.item()
  return value.decode("utf-8") if isinstance(value, bytes) else value


def _records_of_split(builder: Any, split: str) -> list[dict[str, Any]]:
  """Every example of a split, bytes fields decoded to text."""
  source = builder.as_data_source(split=split)
  return [{k: _decoded(v) for k, v in example.items()}
          for start in range(0, len(source), _READ_BATCH)
          for example in source.__getitems__(range(start, min(start + _READ_BATCH, len(source))))]


def _validation_split(builder: Any, spec: str) -> str | None:
  """`validation`, else `test`, else None; a dataset without a train split is an error."""
  splits = builder.info.splits
  if "train" not in splits:
    raise ValueError(f"tfds:{spec}: no train split (splits: {', '.join(splits)})")
  return next((s for s in ("validation", "test") if s in splits), None)


def load_records(spec: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
  """Train and validation examples (text fields as str) of a prepared tfds dataset, for
  record objectives such as SFT ({prompt, response}) or preferences ({prompt, chosen,
  rejected}). Validation: the `validation` split, else `test`, else the last 10% of train."""
  builder = _prepared_builder(spec)
  val_split = _validation_split(builder, spec)
  train = _records_of_split(builder, "train")
  if val_split is None:
    cut = len(train) - int(round(len(train) * _FALLBACK_VAL_FRACTION))
    return train[:cut], train[cut:]
  return train, _records_of_split(builder, val_split)


def load_corpus(spec: str, *, text_field: str = "text") -> Corpus:
  """Reads the train and validation documents of a prepared tfds dataset.

  Args:
    spec: what `tfds.builder` accepts: `NAME`, `NAME/CONFIG`, `NAME:VERSION`,
      `NAME/CONFIG:VERSION`.
    text_field: the feature holding each document's text (bytes are decoded as UTF-8).

  Returns:
    The `train` split's documents, and as validation the `validation` split if the dataset
    has one, else its `test` split, else the last 10% of the train documents (of the
    characters when train is a single document, as `sources.split_documents` does). Empty
    documents are dropped.

  Raises:
    ImportError: tensorflow-datasets is not installed.
    DatasetNotPreparedError: (a FileNotFoundError) the dataset is not prepared in the data
      dir (or the name is neither a tfds dataset nor a dataset prepared there).
    ValueError: the dataset is prepared only in a format without random access (tfrecord),
      has no train split or no `text_field` feature, or holds no non-empty document.
  """
  builder = _prepared_builder(spec)
  val_split = _validation_split(builder, spec)
  features = builder.info.features
  if hasattr(features, "keys") and text_field not in features.keys():
    raise ValueError(
        f"tfds:{spec}: no feature {text_field!r} (features: {', '.join(features.keys())}; "
        "set config.data.text_field)")

  train = [d for d in _read_split(builder, "train", spec, text_field) if d]
  if not train or not any(d.strip() for d in train):
    raise ValueError(f"data source 'tfds:{spec}' is empty")
  if val_split is None:
    return split_documents(train, _FALLBACK_VAL_FRACTION)
  return Corpus(train, [d for d in _read_split(builder, val_split, spec, text_field) if d])
