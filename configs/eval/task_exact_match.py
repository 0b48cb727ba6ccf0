"""Exact match on the held-out prompts of the shipped verifiable tasks (add, reverse, sort).

Sizes as `configs/task_chain.py:cpu` (300 held-out prompts; few-shot examples from the
training split). Default: zero-shot, greedy, through the run's chat template (SFT / DPO
runs). Presets, combinable (`:plain,fewshot`):
  plain             "Q: ...\\nA:" prompts, for runs pre-trained on the tasks' plain text
  fewshot           3 solved examples before each question
  cot               chain of thought ("Let's think step by step.", then "Therefore, the
                    answer is")
  least_to_most     decompose, answer the sub-questions in turn, then the question
  self_consistency  5 samples at temperature 0.7, majority vote over the extracted answers
"""

from jaxlm.config import apply_preset
from jaxlm.eval.task_config import base_task_config


def plain(c):
  c.prompt.format = "plain"


def fewshot(c):
  c.prompt.num_fewshot = 3


def cot(c):
  c.prompt.method = "cot"


def least_to_most(c):
  c.prompt.method = "least_to_most"


def self_consistency(c):
  c.prompt.update(samples=5, temperature=0.7)


def get_config(arg: str | None = None):
  c = base_task_config()
  c.kind = "generative"
  c.source = "task:all"
  c.task.update(n_train=8000, n_heldout=300)
  c.prompt.update(format="chat", method="direct", max_new_tokens=24)
  apply_preset(c, arg, {"plain": plain, "fewshot": fewshot, "cot": cot,
                        "least_to_most": least_to_most, "self_consistency": self_consistency})
  return c
