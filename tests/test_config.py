"""Configs: presets, overrides, clear errors, and a one-step pulse run of every config."""

from pathlib import Path

import pytest

from jaxlm import config as configlib
from jaxlm.train import loop

CONFIGS = sorted(str(p) for p in Path("configs").glob("*.py"))


def test_overrides_are_typed():
  c = configlib.load("configs/shakespeare_char.py:cpu",
                     ["train.steps=7", "optim.lr=1", "model.use_bias=true", "data.source=text:x"])
  assert c.train.steps == 7 and c.optim.lr == 1.0 and isinstance(c.optim.lr, float)
  assert c.model.use_bias is True and c.data.source == "text:x"


@pytest.mark.parametrize("override", ["train.stepz=1", "modle.num_layers=2", "model.depth=3"])
def test_unknown_key_is_named(override):
  with pytest.raises(KeyError, match=override.split("=")[0].replace(".", r"\.")):
    configlib.load("configs/shakespeare_char.py:cpu", [override])


def test_wrong_type_and_unknown_preset():
  with pytest.raises(TypeError, match="train.steps"):
    configlib.load("configs/shakespeare_char.py", ["train.steps=abc"])
  with pytest.raises(ValueError, match="unknown preset 'gpu'"):
    configlib.load("configs/shakespeare_char.py:gpu")
  with pytest.raises(FileNotFoundError):
    configlib.load("configs/nope.py")


def test_misspelt_keys_in_a_config_file_and_whole_section_overrides_are_errors(tmp_path):
  experiment = tmp_path / "typo.py"
  experiment.write_text("from jaxlm.config import base_config\n"
                        "def get_config():\n"
                        "  c = base_config()\n"
                        "  c.optim.warmup = 5  # meant warmup_steps\n"
                        "  return c\n")
  with pytest.raises(ValueError, match="warmup"):
    configlib.load(str(experiment))
  with pytest.raises(KeyError, match="bogus"):
    configlib.load("configs/shakespeare_char.py", ["mesh={'data': 2, 'bogus': 3}"])
  mesh = configlib.load("configs/shakespeare_char.py", ["mesh={'data': 2}"]).mesh
  assert mesh.data == 2 and mesh.fsdp == 1 and mesh.tensor == 1  # the others kept
  with pytest.raises(TypeError, match="model.num_layers"):
    configlib.load("configs/shakespeare_char.py", ["model.num_layers=true"])


def test_shakespeare_char_matches_nanogpt_recipes():
  full = configlib.load("configs/shakespeare_char.py")
  assert (full.model.num_layers, full.model.num_heads, full.model.embed_dim) == (6, 6, 384)
  assert (full.data.seq_len, full.train.batch_size, full.model.dropout) == (256, 64, 0.2)
  assert (full.optim.lr, full.optim.min_lr, full.optim.b2, full.optim.warmup_steps) == (
      1e-3, 1e-4, 0.99, 100)
  assert full.train.steps == 5000 and full.data.tokenizer.kind == "char"
  cpu = configlib.load("configs/shakespeare_char.py:cpu")
  assert (cpu.model.num_layers, cpu.model.num_heads, cpu.model.embed_dim) == (4, 4, 128)
  assert (cpu.data.seq_len, cpu.train.batch_size, cpu.train.steps, cpu.model.dropout) == (
      64, 12, 2000, 0.0)


@pytest.mark.parametrize("path", CONFIGS)
def test_every_config_has_a_cpu_preset_that_runs_one_step(path, tmp_path):
  cfg = configlib.load(f"{path}:cpu", [
      "train.steps=1", "train.progress=False", "train.async_checkpoints=False",
      "train.batch_size=2", "sample.num_samples=0", "train.eval_batches=1"])
  result = loop.train(cfg, tmp_path)
  assert result["step"] == 1 and result["train_loss"] > 0
  assert (tmp_path / "checkpoints" / "1").is_dir() and (tmp_path / "config.json").is_file()
