"""Next-line cloze on the embedded Tiny Shakespeare validation split (multiple choice).

200 questions built deterministically from the text: after two lines of context, pick the
true next line (16-48 characters) among 4 lines drawn from elsewhere in the split. Reports
`acc` and `acc_norm` (log-likelihood per character). `:fewshot` puts 3 solved questions
first.
"""

from jaxlm.config import apply_preset
from jaxlm.eval.task_config import base_task_config


def fewshot(c):
  c.multiple_choice.num_fewshot = 3


def get_config(arg: str | None = None):
  c = base_task_config()
  c.kind = "multiple_choice"
  c.source = "cloze:embedded:tinyshakespeare"
  c.split = "val"
  c.multiple_choice.update(num_questions=200, num_choices=4, context_lines=2, min_chars=16,
                           max_chars=48)
  apply_preset(c, arg, {"fewshot": fewshot})
  return c
