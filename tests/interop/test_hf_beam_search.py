"""Beam search of imported GPT-2 / Llama / T5 checkpoints against transformers'
`generate(num_beams=4)`: every returned hypothesis and its score, under each early-stopping
rule and several length penalties."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from hf_testing import VOCAB, hf_model
from flax import nnx

from jaxlm import sampling
from jaxlm.interop import hf

NEW_TOKENS = 10
BEAMS = 4
SETTINGS = ((1.0, False), (0.0, "never"), (2.0, True), (1.5, "never"), (-1.0, False))


@pytest.fixture(scope="module", params=("gpt2", "llama", "t5"))
def imported(request, tmp_path_factory):
  """(family, transformers model, jaxlm graphdef and params, prompts, EOS id)."""
  family = request.param
  model = hf_model(family)
  with torch.no_grad():  # sharper next-token distributions than the initialisation's
    for p in model.parameters():
      p.mul_(4.0 if family != "t5" else 2.0)
  folder = tmp_path_factory.mktemp("beams") / family
  model.save_pretrained(folder)
  cfg, params, _ = hf.load_hf(folder)
  graphdef, state = nnx.split(hf.build_model(cfg, params))
  prompts = np.random.default_rng(1).integers(1, VOCAB, (3, 5))
  with torch.no_grad():  # EOS: a token the model picks early on, so that beams end early
    ids = torch.tensor(prompts)
    greedy = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4,
                            do_sample=False, eos_token_id=None, pad_token_id=0,
                            decoder_start_token_id=0).numpy()
  return family, model, graphdef, state, prompts, int(greedy[0, -2])


@pytest.mark.parametrize("length_penalty,early_stopping", SETTINGS)
def test_beams_and_scores_match_transformers(imported, length_penalty, early_stopping):
  family, model, graphdef, state, prompts, eos = imported
  with torch.no_grad():
    ids = torch.tensor(prompts)
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                         num_beams=BEAMS, num_return_sequences=BEAMS, do_sample=False,
                         length_penalty=length_penalty, early_stopping=early_stopping,
                         eos_token_id=eos, pad_token_id=0, decoder_start_token_id=0,
                         return_dict_in_generate=True, output_scores=True)
  start = 1 if family == "t5" else prompts.shape[1]  # the decoder start token / the prompt
  want = [row[:row.index(eos) + 1] if eos in row else row
          for row in ref.sequences.numpy()[:, start:].tolist()]
  want_scores = ref.sequences_scores.numpy().reshape(len(prompts), BEAMS)

  cfg = sampling.SamplingConfig(temperature=0.0, max_new_tokens=NEW_TOKENS, num_beams=BEAMS,
                                length_penalty=length_penalty, early_stopping=early_stopping)
  ours = sampling.ranked_beams(graphdef, state, prompts.tolist(), cfg, eos_id=eos)
  assert [[tokens for tokens, _ in row] for row in ours] == [
      want[r * BEAMS:(r + 1) * BEAMS] for r in range(len(prompts))]
  np.testing.assert_allclose([[s for _, s in row] for row in ours], want_scores, rtol=1e-3)
  if length_penalty <= 0:  # short hypotheses favoured: some end at EOS before the limit
    assert any(len(tokens) < NEW_TOKENS for row in ours for tokens, _ in row)
  generate = sampling.generate_seq2seq if family == "t5" else sampling.generate
  best = generate(graphdef, state, prompts.tolist(), cfg, jax.random.key(0), eos_id=eos)
  assert best == [row[0][0] for row in ours]
