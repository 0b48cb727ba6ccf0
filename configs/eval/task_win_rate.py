"""Win rate of a policy (the evaluated workdir, e.g. runs/task_dpo) against a reference
(`win_rate.reference`, default runs/task_sft) on the held-out task prompts, judged by a
reward model (`win_rate.reward_model`, default runs/task_reward).

Greedy chat replies from both runs; ties (equal reward) count half; 95% Wilson interval
(`win_rate.interval=bootstrap` for a percentile bootstrap).
"""

from jaxlm.eval.task_config import base_task_config


def get_config(arg: str | None = None):
  del arg
  c = base_task_config()
  c.kind = "win_rate"
  c.source = "task:all"
  c.task.update(n_train=8000, n_heldout=300)
  c.prompt.update(format="chat", method="direct", max_new_tokens=24)
  c.win_rate.update(reference="runs/task_sft", reward_model="runs/task_reward",
                    interval="wilson", confidence=0.95)
  return c
