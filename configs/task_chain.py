"""Post-training chain on the shipped verifiable tasks (add, reverse, sort; `jaxlm.data.tasks`).

One preset per stage, each starting from the previous stage's run:
  pretrain  CLM on "Q: ...\\nA: ..." lines                       -> runs/task_pretrain
  sft       SFT on chat conversations (init_from the pretrain run) -> runs/task_sft
  reward    reward model on correct vs corrupted answers (from sft) -> runs/task_reward
  dpo       DPO against the frozen SFT run (from sft)               -> runs/task_dpo
  kto       KTO on the same pairs read as unpaired replies (from sft) -> runs/task_kto
  ppo/grpo  RL on the verifier's reward, reference = SFT (from sft) -> runs/task_ppo, task_grpo
Add `,cpu` for the CPU sizes, e.g. `configs/task_chain.py:sft,cpu` (`:cpu` alone is the
pretrain stage). Character tokenizer, context 64; held-out prompts never appear in training.
"""

from jaxlm.config import apply_preset, base_config

OBJECTIVE = {"pretrain": "clm", "sft": "sft", "reward": "reward", "dpo": "dpo", "kto": "kto",
             "ppo": "ppo", "grpo": "grpo"}
INIT_FROM = {"pretrain": "", "sft": "runs/task_pretrain", "reward": "runs/task_sft",
             "dpo": "runs/task_sft", "kto": "runs/task_sft", "ppo": "runs/task_sft",
             "grpo": "runs/task_sft"}
STEPS = {"pretrain": 3000, "sft": 1500, "reward": 800, "dpo": 400, "kto": 400, "ppo": 120,
         "grpo": 120}
LR = {"pretrain": 1e-3, "sft": 3e-4, "reward": 1e-4, "dpo": 1e-5, "kto": 1e-5, "ppo": 5e-5 / 3,
      "grpo": 5e-5 / 3}  # RL: 5e-5 after the cpu preset's x3
# RL stages (jaxlm.rl): train.steps counts rollout iterations; the reward is the verifier's.
RL = {"ppo": dict(prompts_per_iter=64, group_size=1, minibatch_size=16, epochs=2, kl_coef=0.05),
      "grpo": dict(prompts_per_iter=16, group_size=8, minibatch_size=32, epochs=1, kl_coef=0.04)}


def stage(name: str):
  def apply(c):
    c.objective, c.init_from = OBJECTIVE[name], INIT_FROM[name]
    c.train.steps = STEPS[name]
    c.optim.update(lr=LR[name], min_lr=LR[name] / 10)
    if name in RL:
      c.optim.update(min_lr=LR[name], warmup_steps=5, schedule="constant", weight_decay=0.0)
      c.train.log_every = 10
      c.rl.update(reward="verifier", prompt_len=32, max_new_tokens=16, no_eos_penalty=1.0,
                  eval_every=10, eval_prompts=300, **RL[name])
  return apply


def cpu(c):
  c.model.update(num_layers=3, num_heads=4, embed_dim=128, mlp_dim=512)
  c.task.update(n_train=8000, n_heldout=300)
  c.train.update(steps=c.train.steps // 3, batch_size=32, eval_every=0, ckpt_every=0)
  c.optim.update(lr=c.optim.lr * 3, min_lr=c.optim.min_lr * 3)


def get_config(arg: str | None = None):
  c = base_config("gpt2-124m")
  c.seed = 0
  c.model.update(num_layers=6, num_heads=6, embed_dim=384, mlp_dim=1536, max_seq_len=64,
                 dropout=0.0, use_bias=False)
  c.data.update(source="task:all", seq_len=64)
  c.data.tokenizer.update(kind="char", vocab_size=0, num_sentinels=0)
  c.optim.update(warmup_steps=50, b2=0.99, weight_decay=0.1)
  c.train.update(batch_size=64, log_every=50, eval_every=500, eval_batches=5, ckpt_every=500,
                 sample_every=0)
  c.sample.update(prompt="Q: Sort: 3 1 2\nA:", num_samples=1, max_new_tokens=20)
  names = (arg or "pretrain").split(",")
  first = names[0] if names[0] in OBJECTIVE else "pretrain"
  stage(first)(c)
  apply_preset(c, ",".join(n for n in names if n != first) or None, {"cpu": cpu})
  return c
