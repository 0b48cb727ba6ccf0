"""The one chat template: conversations to token ids with the contract's role tokens.

Every post-training path (SFT, reward model, DPO, RLHF, sampling) renders conversations here,
so a prompt is tokenised the same way at training and at generation time. A conversation is
a list of messages `{"role": "system" | "user" | "assistant", "content": str}`, rendered as

  [bos]  <role> content-tokens <end>  <role> content-tokens <end>  ...

Each message's content is tokenised on its own, so the ids of a conversation are the
concatenation of the ids of its messages, and `prompt_ids(prompt) + response_ids(reply)` is
exactly `render(prompt + [assistant reply])`. Role and end tokens lie past the sentencepiece
vocabulary (see `TokenContract.role_ids`), so `Tokenizer.decode` drops them.

`format` other than "jaxlm" writes an open-weight family's own markup instead (ChatML,
Llama 3, Gemma; `jaxlm.data.chat_markup`) with the same contract: headers and separators in place
of role tokens, the family's stop token in place of <end>.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from jaxlm.data import chat_markup
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
  format: "jaxlm" (role tokens past the vocabulary) or a family's own markup from
    `chat_markup.FORMATS` ("chatml", "llama3", "gemma", "phi4"), which needs that family's
    tokenizer.
  """

  bos: bool = False
  system_prompt: str = ""
  format: str = chat_markup.JAXLM

  def __post_init__(self):
    if self.format not in chat_markup.FORMAT_NAMES:
      raise ValueError(f"chat.format={self.format!r} is not known; formats: "
                       f"{list(chat_markup.FORMAT_NAMES)}")
    if self.bos and self.markup is not None and self.markup.begin:
      raise ValueError(f"chat.bos: the {self.format} markup starts with "
                       f"{self.markup.begin} already")
    if self.system_prompt and self.markup is not None and not self.markup.system:
      raise ValueError(f"chat.system_prompt: the {self.format} markup has no system role")

  @property
  def markup(self) -> chat_markup.ChatMarkup | None:
    """The family markup of `format`, None for jaxlm's role tokens."""
    return chat_markup.FORMATS.get(self.format)

  def messages(self, messages: Sequence[Message]) -> list[Message]:
    """`messages` with the default system prompt put first where it applies."""
    messages = list(messages)
    check_messages(messages)
    if self.markup is not None and not self.markup.system and any(
        m["role"] == "system" for m in messages):
      raise ValueError(f"the {self.format} chat markup has no system role (its template "
                       "refuses one): put the instructions in the first user message")
    if self.system_prompt and messages[0]["role"] != "system":
      messages.insert(0, {"role": "system", "content": self.system_prompt})
    return messages

  def pieces(self, tokenizer: Tokenizer) -> "Pieces":
    """The ids the template writes around message contents, for `tokenizer`."""
    markup = self.markup
    if markup is None:
      role_ids = tokenizer.contract.role_ids
      return Pieces([tokenizer.contract.bos_id] if self.bos else [], [],
                    {r: [role_ids[r]] for r in MESSAGE_ROLES}, role_ids["end"])
    for special in markup.specials:
      if len(tokenizer.encode(special)) != 1:
        raise ValueError(
            f"chat.format={self.format} needs a tokenizer with the special token {special} (the "
            f"tokenizer.json of a {self.format} model); this tokenizer splits it into pieces")
    begin = tokenizer.encode(markup.begin) if markup.begin else (
        [tokenizer.contract.bos_id] if self.bos else [])
    return Pieces(begin, tokenizer.encode(markup.separator) if markup.separator else [],
                  {r: tokenizer.encode(markup.header_of(r)) for r in MESSAGE_ROLES},
                  tokenizer.encode(markup.stop)[0])

  def special_ids(self, tokenizer: Tokenizer) -> list[int]:
    """The template's own tokens: jaxlm's role tokens, or the markup's special tokens."""
    if self.markup is None:
      return list(tokenizer.contract.role_ids.values())
    self.pieces(tokenizer)  # each special must be one id of this tokenizer
    return [tokenizer.encode(special)[0] for special in self.markup.specials]

  def content(self, text: str) -> str:
    """A message's content as the template writes it (a markup may trim it)."""
    return self.markup.content(text) if self.markup else text

  def assemble(self, roles: Sequence[str], contents: Sequence[Sequence[int]], tokenizer: Tokenizer,
               *, add_generation_prompt: bool, pieces: "Pieces | None" = None,
               ) -> tuple[list[int], list[bool]]:
    """Ids and assistant mask from roles and already tokenised contents (see `render`)."""
    p = pieces or self.pieces(tokenizer)
    ids = list(p.begin)
    mask = [False] * len(ids)
    for i, (role, content) in enumerate(zip(roles, contents, strict=True)):
      head = (p.separator if i else []) + p.headers[role]
      ids += [*head, *content, p.stop]
      learn = role == "assistant"
      mask += [False] * len(head) + [learn] * (len(content) + 1)
    if add_generation_prompt:
      head = (p.separator if roles else []) + p.headers["assistant"]
      ids += head
      mask += [False] * len(head)
    return ids, mask

  def render(self, messages: Sequence[Message], tokenizer: Tokenizer, *,
             add_generation_prompt: bool = False) -> tuple[list[int], list[bool]]:
    """Token ids of a conversation and its assistant mask.

    The mask is True on the tokens a model learns: each assistant message's content and its
    closing end token (not the role token that opens it, nor anything else). With
    `add_generation_prompt` the ids end with an assistant role token, ready to generate.
    """
    messages = self.messages(messages)
    contents = [tokenizer.encode(self.content(m["content"])) for m in messages]
    return self.assemble([m["role"] for m in messages], contents, tokenizer,
                         add_generation_prompt=add_generation_prompt)

  def render_batch(self, conversations: Sequence[Sequence[Message]],
                   tokenizer: Tokenizer) -> list[tuple[list[int], list[bool]]]:
    """`render` of many conversations, with all contents tokenised in one batched call."""
    convs = [self.messages(c) for c in conversations]
    flat = tokenizer.encode_batch(
        [self.content(m["content"]) for c in convs for m in c]) if convs else []
    pieces = self.pieces(tokenizer)
    out, start = [], 0
    for c in convs:
      out.append(self.assemble([m["role"] for m in c], flat[start:start + len(c)], tokenizer,
                               add_generation_prompt=False, pieces=pieces))
      start += len(c)
    return out

  def prompt_ids(self, prompt_messages: Sequence[Message], tokenizer: Tokenizer) -> list[int]:
    """Ids of a prompt conversation ending with the assistant role token (a generation
    prompt): what a model is given to write the next assistant message."""
    return self.render(prompt_messages, tokenizer, add_generation_prompt=True)[0]

  def response_ids(self, text: str, tokenizer: Tokenizer) -> list[int]:
    """Ids of an assistant reply after `prompt_ids`: its content then the end token."""
    return tokenizer.encode(self.content(text)) + [self.stop_id(tokenizer)]

  def stop_id(self, tokenizer: Tokenizer) -> int:
    """The token that ends an assistant reply: generation stops there."""
    return self.pieces(tokenizer).stop

  def response_text(self, generated: Sequence[int], tokenizer: Tokenizer) -> str:
    """Text of generated ids up to (not including) the first end or EOS token."""
    stops = {self.stop_id(tokenizer), tokenizer.contract.eos_id}
    cut = next((i for i, t in enumerate(generated) if int(t) in stops), len(generated))
    return tokenizer.decode(generated[:cut])


@dataclasses.dataclass(frozen=True)
class Pieces:
  """Token ids a template writes around contents: `begin` once, `separator` between
  messages, `headers[role]` before a content, `stop` after it."""

  begin: list[int]
  separator: list[int]
  headers: dict[str, list[int]]
  stop: int



def from_config(cfg_chat: Mapping[str, Any] | None) -> ChatTemplate:
  """The template described by a small mapping (e.g. `config.chat`): optional fields `bos`
  (bool), `system_prompt` (str) and `format` (str); anything else is an error, None gives the
  defaults."""
  fields = {f.name for f in dataclasses.fields(ChatTemplate)}
  values = dict(cfg_chat or {})
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise ValueError(f"unknown chat template setting(s) {unknown}; known: {sorted(fields)}")
  if not isinstance(values.get("bos", False), bool):
    raise ValueError(f"chat.bos must be true or false, got {values['bos']!r}")
  if not isinstance(values.get("system_prompt", ""), str):
    raise ValueError(f"chat.system_prompt must be a string, got {values['system_prompt']!r}")
  if not isinstance(values.get("format", chat_markup.JAXLM), str):
    raise ValueError(f"chat.format must be a string, got {values['format']!r}")
  return ChatTemplate(**values)
