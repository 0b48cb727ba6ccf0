"""Greedy generation of imported GPT-2 / Llama / Qwen3 / Mistral / Gemma 2 / Gemma 3 / GPT-NeoX
/ Phi / T5 checkpoints against transformers' generate."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from hf_testing import DECODER_VARIANTS, VOCAB, hf_model, saved_models  # noqa: F401 (fixture)
from flax import nnx

from jaxlm import sampling
from jaxlm.interop import hf

NEW_TOKENS = 12
MARGIN = 1e-3


@pytest.mark.parametrize("family", ("gpt2", "llama", "t5", "qwen3", "mistral", "gemma2",
                                    "gemma3", "neox", "phi_qk", "opt", "phi3_longrope",
                                    "phi4_mini", "deepseek_v2", "deepseek_v3"))
def test_greedy_generation_matches_transformers(family, saved_models, tmp_path):
  # Cached decoding: per-head norms, windows of 4 on some layers, DeepSeek-V3's latent cache.
  if family in DECODER_VARIANTS:
    model, folder = hf_model(family), tmp_path / family
    model.save_pretrained(folder)
  else:
    model, folder = saved_models[family]
  prompts = np.random.default_rng(1).integers(1, VOCAB, (3, 5))
  seq2seq = family == "t5"
  with torch.no_grad():
    ids = torch.tensor(prompts)
    ref = model.generate(ids, attention_mask=torch.ones_like(ids),
                         max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                         eos_token_id=None, pad_token_id=0, decoder_start_token_id=0).numpy()
    # Top-2 margins of transformers' own next-token logits along its greedy path.
    if seq2seq:  # the output starts with the decoder start token
      logits = model(ids, decoder_input_ids=torch.tensor(ref[:, :-1])).logits.numpy()
      ref = ref[:, 1:]
    else:
      ref = ref[:, prompts.shape[1]:]
      full = np.concatenate([prompts, ref], axis=1)
      logits = model(torch.tensor(full)).logits.numpy()[:, prompts.shape[1] - 1:-1]
  top2 = np.sort(logits, axis=-1)[..., -2:]
  clear = top2[..., 1] - top2[..., 0] > MARGIN
  # Compare up to (and including) the first near-tie of each row: after it paths may differ.
  upto = np.where(clear.all(1), NEW_TOKENS, np.argmin(clear, axis=1) + 1)

  cfg, params, _ = hf.load_hf(folder)
  graphdef, state = nnx.split(hf.build_model(cfg, params))
  generate = sampling.generate_seq2seq if seq2seq else sampling.generate
  ours = generate(graphdef, state, prompts.tolist(),
                  sampling.SamplingConfig(temperature=0.0, max_new_tokens=NEW_TOKENS),
                  jax.random.key(0), eos_id=-1)
  assert upto.sum() >= NEW_TOKENS * 2  # most of the path is compared
  for row, n in enumerate(upto):
    clear_row = clear[row, :n]
    assert np.array_equal(np.asarray(ours[row][:n])[clear_row], ref[row, :n][clear_row]), row
