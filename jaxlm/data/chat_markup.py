"""Open-weight models' own chat markup, written as text their tokenizers read as special tokens.

An instruct model imported from HF (Qwen2 / 2.5 / 3, Llama 3.x) was tuned on its own markup,
not on jaxlm's role tokens; `chat.format` picks one of these so that fine-tuning, sampling,
evaluation and RLHF talk to it the way it was trained. Each message is

  header(role)  content  stop          (messages joined by `separator`)

after `begin`, and a generation prompt is `separator + header("assistant")`. The mask and the
rest of the chat contract are `jaxlm.data.chat`'s: a reply is its content and the stop token.
"""

from __future__ import annotations

import dataclasses
import re

JAXLM = "jaxlm"  # jaxlm's own role tokens past the vocabulary (`TokenContract.role_ids`)


@dataclasses.dataclass(frozen=True)
class ChatMarkup:
  """One family's chat markup.

  begin: written once before the first message (Llama 3 starts with its BOS).
  header: written before each message's content; `{role}` is the message's role.
  stop: a single special token written after each message's content; it ends a reply.
  separator: written between one message's stop token and the next message's header.
  strip: message contents lose surrounding whitespace (Llama 3's template trims them).
  """

  begin: str
  header: str
  stop: str
  separator: str = ""
  strip: bool = False

  def content(self, text: str) -> str:
    """A message's content as the markup writes it."""
    return text.strip() if self.strip else text


FORMATS = {
    # Qwen2 / Qwen2.5 (and Qwen3 without thinking blocks), and many other ChatML models.
    "chatml": ChatMarkup(begin="", header="<|im_start|>{role}\n", stop="<|im_end|>",
                         separator="\n"),
    # Llama 3 / 3.1 / 3.2 instruct.
    "llama3": ChatMarkup(begin="<|begin_of_text|>",
                         header="<|start_header_id|>{role}<|end_header_id|>\n\n",
                         stop="<|eot_id|>", strip=True),
}
FORMAT_NAMES = (JAXLM, *FORMATS)
# A marker only that family's HF chat template writes.
_SIGNATURES = {"chatml": re.compile(r"<\|im_start\|>"),
               "llama3": re.compile(r"<\|start_header_id\|>")}


def detect(chat_template: str | None) -> str | None:
  """The `chat.format` an HF `chat_template` (tokenizer_config.json) writes, or None when it
  is none of `FORMATS`."""
  if not chat_template:
    return None
  found = [name for name, sig in _SIGNATURES.items() if sig.search(chat_template)]
  return found[0] if len(found) == 1 else None
