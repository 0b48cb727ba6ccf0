"""Perplexity of documents under a causal LM, with rolling windows over long documents.

Each document is scored from its first token, given the token that precedes every document
in training (EOS, or BOS for a tokenizer whose texts open with it: Llama, Gemma); the
trailing EOS is not scored. A document longer than the model
context is cut into windows: each scores the next `stride` tokens given up to `context`
earlier tokens (stride = context gives disjoint windows, a smaller stride more context per
token at more cost, as in the Hugging Face perplexity guide). Every token is scored exactly
once. perplexity = exp(total NLL / scored tokens); bits per byte = total NLL / (ln 2 x UTF-8
bytes of the scored text).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from flax import nnx

from jaxlm.eval.scoring import loglikelihoods


def rolling_requests(ids: Sequence[int], start_id: int, context: int,
                     stride: int) -> list[tuple[list[int], list[int]]]:
  """(context, continuation) requests that together score every token of `ids` once."""
  if not 1 <= stride <= context:
    raise ValueError(f"perplexity stride must be in [1, {context}] (the model context), got "
                     f"{stride}")
  stream = [start_id, *ids]
  out = []
  for begin in range(1, len(stream), stride):
    end = min(begin + stride, len(stream))
    out.append((stream[max(0, end - 1 - context):begin], stream[begin:end]))
  return out


def perplexity(graphdef: nnx.GraphDef, params: Any, tokenizer: Any, docs: Sequence[str], *,
               stride: int = 0, max_tokens: int = 0, batch_size: int = 32) -> dict[str, float]:
  """Token perplexity, mean NLL, bits per byte and counts over `docs`.

  `stride` 0 means the model context; `max_tokens` > 0 stops after that many scored tokens
  (documents are cut to fit, in order).
  """
  context = nnx.merge(graphdef, params).cfg.max_seq_len
  requests, num_bytes, num_docs, budget = [], 0, 0, max_tokens or math.inf
  for ids in tokenizer.encode_batch(list(docs)):
    ids = ids[:int(min(len(ids), budget))]
    if not ids:
      continue
    budget -= len(ids)
    num_docs += 1
    num_bytes += len(tokenizer.decode(ids).encode("utf-8"))
    requests += rolling_requests(ids, tokenizer.contract.start_id, context, stride or context)
    if budget <= 0:
      break
  if not requests:
    raise ValueError("no tokens to score: the documents are empty")
  scores = loglikelihoods(graphdef, params, requests, batch_size=batch_size,
                          pad_id=tokenizer.contract.pad_id)
  nll = -sum(s.logprob for s in scores)
  tokens = sum(s.num_tokens for s in scores)
  return {"perplexity": math.exp(nll / tokens), "nll_per_token": nll / tokens,
          "bits_per_byte": nll / (math.log(2) * num_bytes), "tokens": tokens,
          "bytes": num_bytes, "documents": num_docs}
