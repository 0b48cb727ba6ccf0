"""Evaluation of trained runs (`jaxlm eval --workdir W --task T`).

  scoring.py          batched, jitted, length-bucketed log-likelihood of continuations
  perplexity.py       perplexity / bits per byte of documents (rolling windows)
  multiple_choice.py  k-shot multiple choice by log-likelihood: acc, acc_norm; corpus cloze
  prompting.py        plain / chat prompt rendering, few-shot picks, answer extraction, vote
  generative.py       exact match with direct, chain-of-thought, least-to-most prompting and
                      self-consistency
  win_rate.py         policy vs reference win rate judged by a reward model, with intervals
  task_config.py      the task config skeleton (configs/eval/*.py) and loading
  runner.py           runs a task, writes W/eval/<task>.json, formats the table
  tasks.py            greedy exact match on the shipped verifiable tasks
  reward_scores.py    reward-model scores of (prompt, response) pairs
"""
