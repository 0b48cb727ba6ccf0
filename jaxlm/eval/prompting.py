"""Prompt pieces shared by the evaluations: rendering, few-shot picks, answers, votes.

A `Renderer` turns solved turns plus a question into prompt ids, either as plain text
(`Q: question\\nA: answer\\n` per turn, the format of the shipped tasks' pretraining text) or
through the run's chat template (turns become user / assistant messages). A reply may be
started with a prefix (a chain-of-thought trigger, say) that the model then continues.
An `EncoderRenderer` does the same for encoder-decoder runs: the encoder reads the turns, the
question and the reply's prefix one per line (as `objective=seq2seq` trains), and the
decoder writes what follows.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Any, Sequence

import numpy as np

from jaxlm.data import chat

FORMATS = ("plain", "chat")


@dataclasses.dataclass(frozen=True)
class Renderer:
  """Prompt ids and reply text for plain Q/A text (template None) or a chat template."""

  tokenizer: Any
  template: chat.ChatTemplate | None = None

  def prompt_ids(self, turns: Sequence[tuple[str, str]], question: str,
                 reply_prefix: str = "") -> list[int]:
    """Ids of solved (question, answer) `turns`, then `question` and the start of its reply.

    The prompt never ends in whitespace: the model writes the space before its next word, as
    in training text, where a BPE tokenizer joins that space to the word ("A:", " 95").
    """
    tok = self.tokenizer
    reply_prefix = reply_prefix.strip()
    if self.template is None:
      text = "".join(f"Q: {q}\nA: {a}\n" for q, a in turns) + f"Q: {question}\nA:"
      return tok.contract.opening + tok.encode(f"{text} {reply_prefix}" if reply_prefix else text)
    messages = [m for q, a in turns for m in ({"role": "user", "content": q},
                                              {"role": "assistant", "content": a})]
    messages.append({"role": "user", "content": question})
    return self.template.prompt_ids(messages, tok) + tok.encode(reply_prefix)

  def stop_id(self, multiline: bool) -> int:
    """Where generation stops: the chat end token; for plain text the end of the line, or
    EOS for a multi-line reply."""
    if self.template is not None:
      return self.template.stop_id(self.tokenizer)
    return self.tokenizer.contract.eos_id if multiline else self.tokenizer.encode("\n")[-1]

  def reply_text(self, generated: Sequence[int]) -> str:
    """Text of generated ids up to the stop token; plain text also stops at the next "Q:"
    line (the model starting another question) and drops the space the model writes after
    the prompt's "A:"."""
    if self.template is not None:
      return self.template.response_text(generated, self.tokenizer)
    eos = self.tokenizer.contract.eos_id
    cut = next((i for i, t in enumerate(generated) if int(t) == eos), len(generated))
    return self.tokenizer.decode(generated[:cut]).split("\nQ:")[0].rstrip("\n").lstrip(" ")


@dataclasses.dataclass(frozen=True)
class EncoderRenderer:
  """Encoder inputs and decoder replies of an encoder-decoder run (see the module docstring).

  The inputs are those of `objective=seq2seq`: earlier messages one per line, then EOS; the
  decoder's reply ends at EOS. A reply prefix is the input's last line.
  """

  tokenizer: Any

  def prompt_ids(self, turns: Sequence[tuple[str, str]], question: str,
                 reply_prefix: str = "") -> list[int]:
    """Encoder ids of solved `turns`, `question` and the start of its reply, then EOS."""
    lines = [text for turn in turns for text in turn] + [question]
    if reply_prefix.strip():
      lines.append(reply_prefix.strip())
    return self.tokenizer.encode("\n".join(lines)) + [self.tokenizer.contract.eos_id]

  def stop_id(self, multiline: bool) -> int:
    """The decoder's reply ends at EOS, whether one line or many."""
    return self.tokenizer.contract.eos_id

  def reply_text(self, generated: Sequence[int]) -> str:
    """Text of the decoder's ids up to EOS."""
    eos = self.tokenizer.contract.eos_id
    cut = next((i for i, t in enumerate(generated) if int(t) == eos), len(generated))
    return self.tokenizer.decode(generated[:cut]).strip()


def renderer(fmt: str, tokenizer: Any, chat_cfg: Any,
             family: str = "decoder") -> Renderer | EncoderRenderer:
  """The renderer of format `fmt` ("plain" or "chat", the latter with the run's template);
  an encoder-decoder run (`family` "encdec") reads seq2seq encoder inputs whatever `fmt`."""
  if fmt not in FORMATS:
    raise ValueError(f"prompt format must be one of {FORMATS}, got {fmt!r}")
  if family == "encdec":
    return EncoderRenderer(tokenizer)
  if family != "decoder":
    raise ValueError(f"generative evaluation needs a decoder or an encoder-decoder run, not "
                     f"an {family} (BERT-style) one")
  return Renderer(tokenizer, chat.from_config(chat_cfg) if fmt == "chat" else None)


def pick_shots(pool_size: int, index: int, k: int, seed: int, *, exclude_index: bool) -> list[int]:
  """`k` pool indices for question `index` by a permutation seeded with (seed, index); with
  `exclude_index` (the pool holds the questions themselves) never the question itself."""
  available = pool_size - (1 if exclude_index else 0)
  if k > available:
    raise ValueError(f"{k}-shot prompts need {k} examples to draw from, only {available} "
                     "available")
  order = np.random.default_rng([seed, index]).permutation(pool_size)
  return [int(j) for j in order if not (exclude_index and j == index)][:k]


def extract_answer(text: str, pattern: str = "") -> str:
  """The answer in a reply: with a regex `pattern`, its last match (group 1 when the pattern
  has a group; "" when nothing matches); else the first line. Surrounding whitespace and one
  trailing period are removed."""
  if pattern:
    matches = re.findall(pattern, text)
    if not matches:
      return ""
    found = matches[-1]
    answer = found[0] if isinstance(found, tuple) else found
  else:
    answer = text.strip().split("\n")[0]
  answer = answer.strip()
  return answer[:-1].rstrip() if answer.endswith(".") else answer


def majority_vote(answers: Sequence[str]) -> tuple[str, int]:
  """The most frequent non-empty answer and its count; a tie goes to the answer seen first.
  ("", 0) when every answer is empty."""
  counts = collections.Counter(a for a in answers if a)
  if not counts:
    return "", 0
  best = max(counts.values())
  winner = next(a for a in answers if counts.get(a) == best)
  return winner, best
