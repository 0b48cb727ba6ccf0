"""The one chat template: conversations to token ids with the contract's role tokens.

Every post-training path (SFT, reward model, DPO, RLHF, sampling) renders conversations here,
so a prompt is tokenised the same way at training and at generation time. A conversation is
a list of messages `{"role": "system" | "user" | "assistant", "content": str}`, rendered as

  [bos]  <role> content-tokens <end>  <role> content-tokens <end>  ...

Each message's content is tokenised on its own, so the ids of a conversation are the
concatenation of the ids of its messages, and `prompt_ids(prompt) + response_ids(reply)` is
exactly `render(prompt + [assistant reply])`. Role and end tokens lie past the sentencepiece
vocabulary (see `TokenContract.role_ids`), so `Tokenizer.decode` drops them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from jaxlm.data.tokenizer import Tokenizer

MESSAGE_ROLES = ("system", "user", "assistant")
Message = Mapping[str, str]


def check_messages(messages: Any) -> None:
  """Raises ValueError saying what is wrong unless `messages` is a non-empty list of
  `{"role": one of MESSAGE_ROLES, "content": str}` dicts."""
  if not isinstance(messages, list) or not messages:
    raise ValueError("messages must be a non-empty list of {role, content} objects")
  for i, m in enumerate(messages):
    if not isinstance(m, Mapping):
      raise ValueError(f"message {i} is {type(m).__name__}, not a {{role, content}} object")
    if m.get("role") not in MESSAGE_ROLES:
      raise ValueError(f"message {i} has role {m.get('role')!r}; roles are {MESSAGE_ROLES}")
    if not isinstance(m.get("content"), str):
      raise ValueError(f"message {i} content must be a string, got "
                       f"{type(m.get('content')).__name__}")


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
  """How conversations become token ids.

  bos: start every rendered conversation with the tokenizer's BOS id (off by default: the
    pretraining stream frames documents with EOS only, so a conversation starts like one).
  system_prompt: when not empty, a system message with this content is put first in every
    conversation that does not start with a system message of its own.
  """

  bos: bool = False
  system_prompt: str = ""

  def messages(self, messages: Sequence[Message]) -> list[Message]:
    """`messages` with the default system prompt put first where it applies."""
    messages = list(messages)
    check_messages(messages)
    if self.system_prompt and messages[0]["role"] != "system":
      messages.insert(0, {"role": "system", "content": self.system_prompt})
    return messages

  def assemble(self, roles: Sequence[str], contents: Sequence[Sequence[int]], tokenizer: Tokenizer,
               *, add_generation_prompt: bool) -> tuple[list[int], list[bool]]:
    """Ids and assistant mask from roles and already tokenised contents (see `render`)."""
    role_ids = tokenizer.contract.role_ids
    ids = [tokenizer.contract.bos_id] if self.bos else []
    mask = [False] * len(ids)
    for role, content in zip(roles, contents, strict=True):
      ids += [role_ids[role], *content, role_ids["end"]]
      learn = role == "assistant"
      mask += [False] + [learn] * (len(content) + 1)
    if add_generation_prompt:
      ids.append(role_ids["assistant"])
      mask.append(False)
    return ids, mask

  def render(self, messages: Sequence[Message], tokenizer: Tokenizer, *,
             add_generation_prompt: bool = False) -> tuple[list[int], list[bool]]:
    """Token ids of a conversation and its assistant mask.

    The mask is True on the tokens a model learns: each assistant message's content and its
    closing end token (not the role token that opens it, nor anything else). With
    `add_generation_prompt` the ids end with an assistant role token, ready to generate.
    """
    messages = self.messages(messages)
    contents = [tokenizer.encode(m["content"]) for m in messages]
    return self.assemble([m["role"] for m in messages], contents, tokenizer,
                         add_generation_prompt=add_generation_prompt)

  def render_batch(self, conversations: Sequence[Sequence[Message]],
                   tokenizer: Tokenizer) -> list[tuple[list[int], list[bool]]]:
    """`render` of many conversations, with all contents tokenised in one batched call."""
    convs = [self.messages(c) for c in conversations]
    flat = tokenizer.encode_batch([m["content"] for c in convs for m in c]) if convs else []
    out, start = [], 0
    for c in convs:
      out.append(self.assemble([m["role"] for m in c], flat[start:start + len(c)], tokenizer,
                               add_generation_prompt=False))
      start += len(c)
    return out

  def prompt_ids(self, prompt_messages: Sequence[Message], tokenizer: Tokenizer) -> list[int]:
    """Ids of a prompt conversation ending with the assistant role token (a generation
    prompt): what a model is given to write the next assistant message."""
    return self.render(prompt_messages, tokenizer, add_generation_prompt=True)[0]

  def response_ids(self, text: str, tokenizer: Tokenizer) -> list[int]:
    """Ids of an assistant reply after `prompt_ids`: its content then the end token."""
    return tokenizer.encode(text) + [self.stop_id(tokenizer)]

  def stop_id(self, tokenizer: Tokenizer) -> int:
    """The token that ends an assistant reply: generation stops there."""
    return tokenizer.contract.role_ids["end"]

  def response_text(self, generated: Sequence[int], tokenizer: Tokenizer) -> str:
    """Text of generated ids up to (not including) the first end or EOS token."""
    stops = {self.stop_id(tokenizer), tokenizer.contract.eos_id}
    cut = next((i for i, t in enumerate(generated) if int(t) in stops), len(generated))
    return tokenizer.decode(generated[:cut])


def from_config(cfg_chat: Mapping[str, Any] | None) -> ChatTemplate:
  """The template described by a small mapping (e.g. `config.chat`): optional fields `bos`
  (bool) and `system_prompt` (str); anything else is an error, None gives the defaults."""
  fields = {f.name for f in dataclasses.fields(ChatTemplate)}
  values = dict(cfg_chat or {})
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise ValueError(f"unknown chat template setting(s) {unknown}; known: {sorted(fields)}")
  if not isinstance(values.get("bos", False), bool):
    raise ValueError(f"chat.bos must be true or false, got {values['bos']!r}")
  if not isinstance(values.get("system_prompt", ""), str):
    raise ValueError(f"chat.system_prompt must be a string, got {values['system_prompt']!r}")
  return ChatTemplate(**values)
