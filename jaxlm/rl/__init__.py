"""Reinforcement learning from a reward: PPO and GRPO on rollouts sampled from the policy.

`rollout` samples responses and scores them token by token (policy / reference log-probs,
values, KL-shaped rewards), `rewards` gives each response its reward (verifier, reward model,
synthetic count), `advantages` turns rewards into advantages (GAE, group normalisation),
`kl` holds the KL estimators and controllers, `models` the policy with its value function,
`losses` the PPO and GRPO objectives, and `trainer` the loop that `jaxlm train` runs for
`objective=ppo|grpo`.
"""
