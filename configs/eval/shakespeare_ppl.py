"""Perplexity on the validation split of the embedded Tiny Shakespeare corpus.

Disjoint windows of the model context (`perplexity.stride=0`); a smaller stride gives each
token more context at more cost. `:quick` scores only the first 4,096 tokens.
"""

from jaxlm.config import apply_preset
from jaxlm.eval.task_config import base_task_config


def quick(c):
  c.perplexity.max_tokens = 4096


def get_config(arg: str | None = None):
  c = base_task_config()
  c.kind = "perplexity"
  c.source = "embedded:tinyshakespeare"
  c.split = "val"
  apply_preset(c, arg, {"quick": quick})
  return c
