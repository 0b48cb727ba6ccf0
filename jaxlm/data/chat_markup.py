"""Open-weight models' own chat markup, written as text their tokenizers read as special tokens.

An instruct model imported from HF (Qwen2 / 2.5 / 3, Llama 3.x, Gemma, Phi-4) was tuned on its
own markup, not on jaxlm's role tokens; `chat.format` picks one of these so that fine-tuning,
sampling, evaluation and RLHF talk to it the way it was trained. Each message is

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
  specials: the special tokens the markup writes (the tokenizer must have each as one id).
  separator: written between one message's stop token and the next message's header.
  strip: message contents lose surrounding whitespace (Llama 3's and Gemma's templates trim).
  role_names: how a role is written where it is not its own name (Gemma: assistant -> model).
  system: whether the markup has a system role (Gemma's templates refuse one).
  """

  begin: str
  header: str
  stop: str
  specials: tuple[str, ...]
  separator: str = ""
  strip: bool = False
  role_names: tuple[tuple[str, str], ...] = ()
  system: bool = True

  def content(self, text: str) -> str:
    """A message's content as the markup writes it."""
    return text.strip() if self.strip else text

  def header_of(self, role: str) -> str:
    """The header written before a message of `role`."""
    return self.header.format(role=dict(self.role_names).get(role, role))


FORMATS = {
    # Qwen2 / Qwen2.5 (and Qwen3 without thinking blocks), and many other ChatML models.
    "chatml": ChatMarkup(begin="", header="<|im_start|>{role}\n", stop="<|im_end|>",
                         specials=("<|im_start|>", "<|im_end|>"), separator="\n"),
    # Llama 3 / 3.1 / 3.2 instruct.
    "llama3": ChatMarkup(begin="<|begin_of_text|>",
                         header="<|start_header_id|>{role}<|end_header_id|>\n\n",
                         stop="<|eot_id|>", specials=("<|begin_of_text|>", "<|start_header_id|>",
                                                      "<|end_header_id|>", "<|eot_id|>"),
                         strip=True),
    # Gemma 1 / 2 / 3 instruct.
    "gemma": ChatMarkup(begin="<bos>", header="<start_of_turn>{role}\n", stop="<end_of_turn>",
                        specials=("<bos>", "<start_of_turn>", "<end_of_turn>"), separator="\n",
                        strip=True, role_names=(("assistant", "model"),), system=False),
    # Phi-4 (14B): ChatML's tokens, the role closed by <|im_sep|>, nothing between messages.
    "phi4": ChatMarkup(begin="", header="<|im_start|>{role}<|im_sep|>", stop="<|im_end|>",
                       specials=("<|im_start|>", "<|im_sep|>", "<|im_end|>")),
}
FORMAT_NAMES = (JAXLM, *FORMATS)
# A marker only that family's HF chat template writes (ChatML's <|im_start|> without Phi-4's
# <|im_sep|>).
_SIGNATURES = {"chatml": re.compile(r"^(?![\s\S]*<\|im_sep\|>)[\s\S]*<\|im_start\|>"),
               "phi4": re.compile(r"<\|im_sep\|>"),
               "llama3": re.compile(r"<\|start_header_id\|>"),
               "gemma": re.compile(r"<start_of_turn>")}


def detect(chat_template: str | None) -> str | None:
  """The `chat.format` an HF `chat_template` (tokenizer_config.json) writes, or None when it
  is none of `FORMATS`."""
  if not chat_template:
    return None
  found = [name for name, sig in _SIGNATURES.items() if sig.search(chat_template)]
  return found[0] if len(found) == 1 else None
