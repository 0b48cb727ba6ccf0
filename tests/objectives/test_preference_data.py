"""Preference pair rows: which pairs fit, and where a reward model reads each side's score."""

import numpy as np

from conftest import tiny_config
from jaxlm.data import chat, tokenizer as tok_lib
from jaxlm.objectives import dpo, reward
from jaxlm.objectives.preference_data import side
from jaxlm.objectives.sft_data import encode_conversations


def test_reward_rows_hold_each_whole_side_in_the_inputs_dpo_rows_in_the_targets():
  pairs = [{"prompt": [{"role": "user", "content": q}], "chosen": c, "rejected": r}
           for q, c, r in (("ab", "abc", "a"), ("b", "cab", "cc"), ("ca", "abcab", "b"))]
  tok = tok_lib.train_tokenizer(["abc " * 20], "char", 0)
  template = chat.from_config(None)
  longest = max(len(ids) for p in pairs for s in ("chosen", "rejected") for ids, _ in
                encode_conversations([[*p["prompt"], {"role": "assistant", "content": p[s]}]],
                                     tok, template))
  # The longest side fills a whole row of seq_len + 1 tokens: DPO keeps it, a reward model
  # (which scores the inputs) drops its pair.
  cfg = tiny_config(**{"data.seq_len": longest - 1, "train.batch_size": 2})
  kept = {name: objective.build_batches(pairs, cfg=cfg, tokenizer=tok, seed=0).rows
          for name, objective in (("dpo", dpo), ("reward", reward))}
  assert len(kept["dpo"]["chosen_tokens"]) == 3 and len(kept["reward"]["chosen_tokens"]) == 2
  for name in ("chosen", "rejected"):
    rows = side(kept["reward"], name)
    last = (rows["segment_ids"] > 0).sum(1) - 1  # where RewardModel.score reads
    assert (rows["tokens"][np.arange(len(last)), last] == template.stop_id(tok)).all()
