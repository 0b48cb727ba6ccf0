"""Seq2seq fine-tuning (T5): packing of both halves, truncation, packed loss == unpacked loss,
and a run that learns a shipped task."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_config
from jaxlm import cli
from jaxlm.data import tasks
from jaxlm.eval import generative, tasks as eval_tasks
from jaxlm.eval.prompting import Renderer
from jaxlm.models import factory, from_config
from jaxlm.objectives import seq2seq, span
from jaxlm.train import loop

PAD, START = 0, 0


def random_pairs(n: int, seed: int = 0, longest: int = 9):
  rng = np.random.default_rng(seed)
  return [(rng.integers(3, 60, rng.integers(1, longest)).astype(np.int32),
           rng.integers(3, 60, rng.integers(1, longest)).astype(np.int32)) for _ in range(n)]


def unpack(batch):
  """The (encoder ids, target ids) of every segment of every row, in order; checks that each
  segment is contiguous on both sides, the decoder restarts from START and only targets carry
  loss."""
  out = []
  for r in range(len(batch["inputs"])):
    enc, dec = batch["inputs_segment_ids"][r], batch["targets_segment_ids"][r]
    assert (np.diff(enc[enc > 0]) >= 0).all() and (enc[(enc > 0).sum():] == 0).all()
    assert (np.diff(dec[dec > 0]) >= 0).all() and (dec[(dec > 0).sum():] == 0).all()
    np.testing.assert_array_equal(batch["loss_mask"][r], dec > 0)
    assert set(np.unique(enc[enc > 0])) == set(np.unique(dec[dec > 0]))
    for s in np.unique(enc[enc > 0]):
      i, t = np.flatnonzero(enc == s), np.flatnonzero(dec == s)
      assert (np.diff(i) == 1).all() and (np.diff(t) == 1).all()
      y = batch["targets"][r, t]
      np.testing.assert_array_equal(batch["decoder_inputs"][r, t], np.r_[START, y[:-1]])
      out.append((batch["inputs"][r, i].tolist(), y.tolist()))
  return out


def test_packing_keeps_examples_whole_in_order_and_fills_rows_greedily():
  pairs = random_pairs(60)
  batch, report = seq2seq.pack_pairs(pairs, 16, 12, pad_id=PAD, start_id=START)
  assert unpack(batch) == [(x.tolist(), y.tolist()) for x, y in pairs]
  assert report.rows == len(batch["inputs"]) < 60 and report.too_long == report.dropped == 0
  # Greedy: a row ends only when the next example would overflow one of its halves.
  k = 0
  for r in range(report.rows):
    n = len(np.unique(batch["inputs_segment_ids"][r][batch["inputs_segment_ids"][r] > 0]))
    k += n
    if k < len(pairs):
      used_x, used_y = sum(len(x) for x, _ in pairs[k - n:k]), sum(len(y) for _, y in pairs[k - n:k])
      assert used_x + len(pairs[k][0]) > 16 or used_y + len(pairs[k][1]) > 12
  one_each, _ = seq2seq.pack_pairs(pairs, 16, 12, pad_id=PAD, start_id=START, pack=False)
  assert len(one_each["inputs"]) == 60 and unpack(one_each) == unpack(batch)


def test_truncation_policies_are_explicit_and_counted():
  x, y = np.arange(1, 21, dtype=np.int32), np.arange(30, 45, dtype=np.int32)
  short = (np.array([5, 6], np.int32), np.array([7], np.int32))
  for policy, want_x in (("left", x[-8:]), ("right", x[:8])):
    batch, report = seq2seq.pack_pairs([(x, y), short], 8, 6, pad_id=PAD, start_id=START,
                                       truncation=policy)
    assert unpack(batch)[0] == (want_x.tolist(), y[:6].tolist())
    assert (report.too_long, report.dropped) == (1, 0)
  batch, report = seq2seq.pack_pairs([(x, y), short], 8, 6, pad_id=PAD, start_id=START)
  assert unpack(batch) == [([5, 6], [7])] and (report.too_long, report.dropped) == (1, 1)
  assert "1 too long ('drop'): 0 cut, 1 dropped" in str(report)
  with pytest.raises(ValueError, match="no seq2seq example fits"):
    seq2seq.pack_pairs([(x, y)], 8, 6, pad_id=PAD, start_id=START)
  with pytest.raises(ValueError, match="truncation must be one of"):
    seq2seq.pack_pairs([short], 8, 6, pad_id=PAD, start_id=START, truncation="middle")


def test_records_split_into_encoder_text_and_target():
  conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sort: 3 1"},
          {"role": "assistant", "content": "1 3"}]
  assert seq2seq.input_and_target(conv, "r") == ("Be brief.\nSort: 3 1", "1 3")
  with pytest.raises(ValueError, match="must end with the assistant's message"):
    seq2seq.input_and_target(conv + [{"role": "user", "content": "and?"}], "record 7")


def test_packed_loss_equals_unpacked_loss():
  """Packing changes nothing a token sees: segments keep self-attention, cross-attention and
  the decoder's start apart, so the mean loss over the same targets is the same."""
  cfg = tiny_config("t5", objective="seq2seq")
  model = factory.create(from_config(cfg.model, 64), nnx.Rngs(0))
  pairs = random_pairs(24, seed=3)
  packed, _ = seq2seq.pack_pairs(pairs, 32, 24, pad_id=PAD, start_id=START)
  single, _ = seq2seq.pack_pairs(pairs, 32, 24, pad_id=PAD, start_id=START, pack=False)
  assert len(packed["inputs"]) < len(single["inputs"]) // 2
  loss_fn = nnx.jit(lambda m, b: span.loss_fn(m, b, None)[0])  # eager: an XLA program an op
  loss = lambda b: float(loss_fn(model, {k: jnp.asarray(v) for k, v in b.items()}))
  np.testing.assert_allclose(loss(packed), loss(single), rtol=1e-5)


SORT = {"data.source": "task:sort", "task.n_train": 2000, "task.n_heldout": 40,
        "task.list_len": 4, "data.seq_len": 32, "sft.targets_len": 16, "model.embed_dim": 64,
        "model.mlp_dim": 128, "train.batch_size": 16, "train.log_every": 50}


@pytest.fixture(scope="module")
def sort_run(tmp_path_factory):
  """A tiny T5 fine-tuned from scratch on the shipped sort task (300 steps): (workdir, its
  printed output)."""
  workdir = tmp_path_factory.mktemp("t5_sort")
  cfg = tiny_config("t5", objective="seq2seq", **SORT, **{
      "train.steps": 300, "optim.lr": 3e-3, "optim.warmup_steps": 20,
      "sample.num_samples": 1, "sample.prompt": "Sort: 7 2 9"})
  loop.train(cfg, workdir)
  return workdir


@pytest.mark.slow
def test_a_seq2seq_run_learns_to_sort(sort_run, capsys):
  """The loss falls, held-out lists come out sorted (40 of 40 when measured; echoing the
  input scores little), and `jaxlm sample` answers a prompt."""
  rows = [json.loads(line) for line in open(sort_run / "metrics.jsonl")]
  losses = [r["loss"] for r in rows if r["split"] == "train"]
  assert losses[-1] < 0.5 * losses[0], losses
  run_cfg, tokenizer, graphdef, params = loop.load_trained(sort_run)
  _, heldout = tasks.train_and_heldout("sort", run_cfg.task)
  accuracy = eval_tasks.exact_match(sort_run, heldout, max_new_tokens=16)["all"]
  assert accuracy >= 0.9, accuracy
  with pytest.raises(ValueError, match="cannot prompt a encdec model"):
    generative.replies(graphdef, params, Renderer(tokenizer), ["Sort: 2 1"])
  assert cli.main(["sample", "--workdir", str(sort_run), "--prompt", "Sort: 8 3",
                   "--temperature", "0", "--max_new_tokens", "8"]) == 0
  assert "--- sample 0 ---" in capsys.readouterr().out

  # `jaxlm eval` prompts the encoder (the task's chat format does not apply) and scores the
  # same answers; a chain of thought puts its trigger, then the reasoning, in the encoder.
  same_task = [f"--config.task.{k}={run_cfg.task[k]}" for k in ("n_train", "n_heldout",
                                                                "list_len", "seed")]
  for preset in ("", ":cot"):
    assert cli.main(["eval", "--workdir", str(sort_run), "--task", f"task_exact_match{preset}",
                     "--config.source=task:sort", "--config.prompt.max_new_tokens=16",
                     *same_task]) == 0
  direct = json.loads((sort_run / "eval" / "task_exact_match.json").read_text())
  assert direct["metrics"]["exact_match"] == accuracy
  cot = json.loads((sort_run / "eval" / "task_exact_match_cot.json").read_text())
  assert cot["metrics"]["questions"] == len(heldout)
  assert cot["records"][0]["samples"][0]["reply"].startswith("Let's think step by step.")


@pytest.mark.slow
def test_prompt_tuning_a_t5_trains_only_its_virtual_tokens_on_unpacked_rows(sort_run, tmp_path,
                                                                           capsys):
  """Lester et al.'s setting: prompt-tuning the sort model on reversal keeps one example per
  row (the virtual tokens join the row's example), lowers the loss and moves only the soft
  prompt."""
  cfg = tiny_config("t5", objective="seq2seq", **{
      **SORT, "data.source": "task:reverse", "task.n_train": 400, "init_from": str(sort_run),
      "peft.method": "prompt", "peft.prompt_len": 8, "train.steps": 40, "train.log_every": 5,
      "optim.lr": 1e-1, "optim.warmup_steps": 5})
  capsys.readouterr()
  loop.train(cfg, tmp_path)
  assert "400 examples into 400 rows" in capsys.readouterr().out
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  losses = [r["loss"] for r in rows if r["split"] == "train"]
  assert losses[-1] < losses[0] - 0.1, losses
  trained = flat(loop.load_trained(tmp_path)[3])
  base = flat(loop.load_trained(sort_run)[3])
  assert set(trained) - set(base) == {"soft_prompt/table"}
  for name, value in base.items():  # the frozen model is the sort run's, bit for bit
    np.testing.assert_array_equal(trained[name], value, err_msg=name)
  vocab = base["embed/embedding"]  # the prompt started as vocabulary rows and moved off them
  assert not any(np.all(vocab == row, axis=1).any() for row in trained["soft_prompt/table"])


def flat(params) -> dict[str, np.ndarray]:
  """{"encoder/blocks/0/attn/query/kernel": array, ...} of a params tree."""
  return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): np.asarray(x)
          for path, x in jax.tree_util.tree_flatten_with_path(params)[0]}
