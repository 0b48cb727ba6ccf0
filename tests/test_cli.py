"""The command line as a user runs it: sampling a trained run, and clear errors."""

import subprocess
import sys

import pytest

from jaxlm import cli


def run_cli(*args, cwd="."):
  return subprocess.run([sys.executable, "-m", "jaxlm.cli", *args], capture_output=True, text=True,
                        cwd=cwd, timeout=120)


def test_sample_from_a_trained_run(trained_run, capsys):
  workdir, _ = trained_run
  code = cli.main(["sample", "--workdir", str(workdir), "--prompt", "ROMEO:", "--temperature",
                   "0.8", "--top_k", "20", "--max_new_tokens", "40", "--num_samples", "2"])
  out = capsys.readouterr().out
  assert code == 0
  assert out.count("--- sample") == 2 and out.count("ROMEO:") == 2
  # Beam search is deterministic: every "sample" is the best beam.
  assert cli.main(["sample", "--workdir", str(workdir), "--prompt", "ROMEO:", "--num_beams", "3",
                   "--max_new_tokens", "20", "--num_samples", "2"]) == 0
  first, second = capsys.readouterr().out.split("--- sample 1 ---")
  assert first.split("--- sample 0 ---")[1].strip() == second.strip()
  assert cli.main(["sample", "--workdir", str(workdir), "--num_beams", "3", "--top_k", "5"]) == 2
  assert "apply to sampling only" in capsys.readouterr().err
  # Speculative decoding with the run as its own draft: greedy, so the plain greedy text.
  greedy = ["sample", "--workdir", str(workdir), "--prompt", "ROMEO:", "--temperature", "0",
            "--max_new_tokens", "24"]
  assert cli.main(greedy) == 0
  plain = capsys.readouterr().out
  assert cli.main([*greedy, "--draft", str(workdir), "--gamma", "3"]) == 0
  out = capsys.readouterr()
  assert out.out == plain and "(100.0%), 4.00 tokens per target pass" in out.err


def test_bad_inputs_get_one_clear_line(tmp_path, capsys):
  assert cli.main(["train", "--config", "configs/shakespeare_char.py:cpu", "--workdir",
                   str(tmp_path), "--config.train.stepz=3"]) == 2
  assert "unknown config key 'train.stepz'" in capsys.readouterr().err
  assert cli.main(["train", "--config", "configs/shakespeare_char.py:cpu", "--workdir",
                   str(tmp_path / "nodata"), "--config.data.source=text:/no/such/file.txt"]) == 2
  assert "/no/such/file.txt does not exist" in capsys.readouterr().err
  assert cli.main(["train", "--config", "configs/task_chain.py:sft,cpu", "--workdir",
                   str(tmp_path / "norecords"), "--config.data.source=jsonl:/no/sft.jsonl"]) == 2
  assert "/no/sft.jsonl" in capsys.readouterr().err
  assert cli.main(["train", "--config", "configs/shakespeare_char.py:cpu", "--workdir",
                   str(tmp_path / "long"), "--config.data.seq_len=128"]) == 2
  assert "data.seq_len=128 exceeds model.max_seq_len=64" in capsys.readouterr().err
  assert cli.main(["train", "--config", "configs/shakespeare_char.py:cpu", "--workdir",
                   str(tmp_path / "bias"), "--config.model.head_bias=true"]) == 2
  assert "head_bias is for decoders with an untied" in capsys.readouterr().err
  assert cli.main(["train", "--config", "configs/shakespeare_char.py:cpu", "--workdir",
                   str(tmp_path / "peft"), "--config.peft.method=lorax"]) == 2
  assert "peft.method must be one of" in capsys.readouterr().err
  for name in ("nodata", "norecords", "long", "bias", "peft"):  # nothing written
    assert not (tmp_path / name).exists()
  assert cli.main(["train", "--config", "configs/shakespeare_char.py:cpu", "--workdir",
                   str(tmp_path / "tok"), "--config.data.tokenizer.path=/no/tok.model"]) == 2
  assert "tokenizer model /no/tok.model does not exist" in capsys.readouterr().err
  assert not (tmp_path / "tok").exists()
  # A folder that was there before a failed start is kept.
  (tmp_path / "mine").mkdir()
  assert cli.main(["train", "--config", "configs/shakespeare_char.py:cpu", "--workdir",
                   str(tmp_path / "mine"), "--config.data.source=text:/no/such/file.txt"]) == 2
  assert (tmp_path / "mine").is_dir()
  assert cli.main(["sample", "--workdir", str(tmp_path / "nothing")]) == 2
  assert "not a jaxlm workdir" in capsys.readouterr().err
  # A convert flag of the other direction is refused, not silently ignored.
  assert cli.main(["convert", "--to-hf", str(tmp_path / "nothing"), "--out", str(tmp_path / "o"),
                   "--scan-layers"]) == 2
  assert "--scan-layers is for --from-hf only" in capsys.readouterr().err
  assert cli.main(["convert", "--from-hf", str(tmp_path / "nothing"), "--workdir",
                   str(tmp_path / "w"), "--merge-lora"]) == 2
  assert "--merge-lora is for --to-hf only" in capsys.readouterr().err
  assert not (tmp_path / "o").exists() and not (tmp_path / "w").exists()


def test_prompt_longer_than_the_context(trained_run, capsys):
  workdir, _ = trained_run
  assert cli.main(["sample", "--workdir", str(workdir), "--prompt", "x" * 40]) == 2
  assert "longer than the model context of 32" in capsys.readouterr().err


def test_overrides_accept_both_spellings():
  rest, overrides = cli.split_overrides(
      ["train", "--config.a.b=1", "--config.c", "2", "--workdir", "w"])
  assert rest == ["train", "--workdir", "w"] and overrides == ["a.b=1", "c=2"]


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resumes(tmp_path):
  import signal
  import time
  proc = subprocess.Popen(
      [sys.executable, "-m", "jaxlm.cli", "train", "--config", "configs/shakespeare_char.py:cpu",
       "--workdir", str(tmp_path), "--config.train.steps=100000", "--config.train.ckpt_every=0",
       "--config.train.log_every=1", "--config.train.progress=False"],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  metrics = tmp_path / "metrics.jsonl"
  deadline = time.time() + 90
  while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") > 3):
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=60)
  assert proc.returncode == 130, out
  assert "SIGTERM: saved checkpoint" in out
  saved = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
  assert len(saved) == 1 and saved[0] > 3
  resumed = run_cli("train", "--config", "configs/shakespeare_char.py:cpu", "--workdir",
                    str(tmp_path), f"--config.train.steps={saved[0] + 2}",
                    "--config.train.progress=False", "--config.sample.num_samples=0")
  assert resumed.returncode == 0, resumed.stderr
  assert f"step={saved[0] + 2}" in resumed.stdout
