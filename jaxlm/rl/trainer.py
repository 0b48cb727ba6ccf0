"""The RL loop (`objective=ppo|grpo`): rollout, scoring, advantages, then epochs of minibatch
updates through the shared jitted train step.

Each iteration samples `rl.prompts_per_iter` training prompts (`rl.group_size` responses
each; GRPO with `rl.oversample` > 1 samples more groups and keeps those whose scores differ
first), scores them (reward + per-token log-probs of the policy and of the frozen reference,
the `init_from` run or, without one, the initial weights), turns scores into advantages (PPO:
KL-shaped token rewards and GAE; GRPO: group-normalised scores) and takes `rl.epochs` passes
over shuffled minibatches. Prompts, sampling keys and shuffles are functions of (seed,
iteration), and the checkpoint holds the TrainState (policy, value, optimizer, step, RNG) plus
the iteration, the KL coefficient and the reference's workdir, so a resumed run repeats the
uninterrupted one exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxlm import config as configlib
from jaxlm import global_rows
from jaxlm import sampling
from jaxlm.data import chat, formats, tasks
from jaxlm.data.tokenizer import Tokenizer
from jaxlm.objectives.records import split_records
from jaxlm.rl import advantages as adv_lib
from jaxlm.rl.kl import ESTIMATORS, KLController
from jaxlm.rl.losses import AGGREGATIONS, make_grpo_loss, make_ppo_loss
from jaxlm.rl.models import policy_class, seed_critic
from jaxlm.rl.rewards import make_reward, overlong_penalty, verifier_reward
from jaxlm.rl.rollout import policy_logprobs, sample_responses, sequence_batch, token_rewards
from jaxlm.train import loop, sharding
from jaxlm.train import metrics as metrics_lib
from jaxlm.train.checkpoint import CheckpointError, Checkpointer, abstract_like, config_mismatch
from jaxlm.train import inputs
from jaxlm.train.pretrained import FREE_MODEL_FIELDS

ALGORITHMS = ("ppo", "grpo")
SCORE_NORMS = ("none", "batch")


def check_config(cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first inconsistent RL setting."""
  rl = cfg.rl
  if cfg.objective not in ALGORITHMS:
    raise ValueError(f"objective must be one of {ALGORITHMS} for an RL run, got {cfg.objective!r}")
  if cfg.objective == "grpo" and rl.group_size < 2:
    raise ValueError(f"grpo needs rl.group_size >= 2 samples per prompt, got {rl.group_size}")
  if rl.temperature <= 0:
    raise ValueError(f"rl.temperature must be > 0 (log-probs are of the tempered policy), got "
                     f"{rl.temperature}")
  if rl.top_k or rl.top_p < 1.0:
    raise ValueError(f"rl.top_k={rl.top_k} / rl.top_p={rl.top_p} would sample from a filtered "
                     "distribution while the losses' ratios and KL use the full tempered one "
                     "(an off-policy update); keep top_k 0 and top_p 1 for RL")
  if rl.kl_estimator not in ESTIMATORS:
    raise ValueError(f"rl.kl_estimator must be one of {ESTIMATORS}, got {rl.kl_estimator!r}")
  if rl.score_norm not in SCORE_NORMS:
    raise ValueError(f"rl.score_norm must be one of {SCORE_NORMS}, got {rl.score_norm!r}")
  if rl.scale_rewards not in adv_lib.GROUP_SCALES:
    raise ValueError(f"rl.scale_rewards must be one of {adv_lib.GROUP_SCALES}, got "
                     f"{rl.scale_rewards!r}")
  if rl.std_ddof not in (0, 1):
    raise ValueError(f"rl.std_ddof must be 0 (population std) or 1 (sample std, as TRL), got "
                     f"{rl.std_ddof}")
  if rl.baseline not in adv_lib.GROUP_BASELINES:
    raise ValueError(f"rl.baseline must be one of {adv_lib.GROUP_BASELINES}, got "
                     f"{rl.baseline!r}")
  if rl.loss_agg not in AGGREGATIONS:
    raise ValueError(f"rl.loss_agg must be one of {AGGREGATIONS}, got {rl.loss_agg!r}")
  if rl.oversample < 1.0 or (rl.oversample > 1.0 and cfg.objective != "grpo"):
    raise ValueError(f"rl.oversample must be >= 1, and above 1 only for grpo (it picks groups "
                     f"whose scores differ), got {rl.oversample} for {cfg.objective}")
  if not 0 <= rl.overlong_buffer <= rl.max_new_tokens:
    raise ValueError(f"rl.overlong_buffer must be in [0, rl.max_new_tokens="
                     f"{rl.max_new_tokens}], got {rl.overlong_buffer}")
  if rl.clip_ratio_high and rl.clip_ratio_high < rl.clip_ratio:
    raise ValueError(f"rl.clip_ratio_high={rl.clip_ratio_high} is below rl.clip_ratio="
                     f"{rl.clip_ratio} (0 keeps the clip symmetric)")
  rows = rl.prompts_per_iter * rl.group_size
  if rl.minibatch_size < 1 or rows % rl.minibatch_size:
    raise ValueError(f"rl.minibatch_size={rl.minibatch_size} must divide the {rows} rollouts "
                     "(rl.prompts_per_iter x rl.group_size) of an iteration")
  if rl.prompt_len + rl.max_new_tokens > cfg.model.max_seq_len:
    raise ValueError(f"rl.prompt_len + rl.max_new_tokens = {rl.prompt_len + rl.max_new_tokens} "
                     f"exceeds model.max_seq_len={cfg.model.max_seq_len}")


def updates_per_iteration(rl: ml_collections.ConfigDict) -> int:
  """Optimizer steps per iteration: epochs x minibatches."""
  return rl.epochs * rl.prompts_per_iter * rl.group_size // rl.minibatch_size


def load_prompts(cfg: ml_collections.ConfigDict) -> tuple[list[tasks.Example], list[tasks.Example]]:
  """Training and held-out prompts: `task:KINDS` (with answers for the verifier) or
  `jsonl:PATH` records `{"prompt", optional "answer", optional "kind"}`."""
  kind, _, arg = cfg.data.source.partition(":")
  if kind == "task":
    return tasks.train_and_heldout(arg, cfg.task)
  if kind != "jsonl":
    raise ValueError(f"RL prompts come from data.source=task:KINDS or jsonl:PATH, got "
                     f"{cfg.data.source!r}")
  examples = []
  for where, record in formats.iter_jsonl(arg):
    if not isinstance(record.get("prompt"), str):
      raise ValueError(f"{where}: an RL prompt record needs a string field 'prompt'")
    examples.append(tasks.Example(record["prompt"], str(record.get("answer", "")),
                                  str(record.get("kind", ""))))
  return split_records(examples, cfg.data.val_fraction)


def reference_name(cfg: ml_collections.ConfigDict) -> str:
  """What the frozen reference is, as recorded in checkpoints: the `init_from` workdir."""
  return cfg.init_from or "initial weights"


def build(cfg: ml_collections.ConfigDict, vocab_size: int, mesh) -> loop.ModelSetup:
  """The policy (with its critic for PPO), optimizer and sharded initialiser."""
  return loop.build_model(cfg, vocab_size, mesh,
                          make_model=policy_class(cfg.objective, cfg.rl.critic),
                          total_steps=updates_per_iteration(cfg.rl) * cfg.train.steps)


def load_policy(workdir: str | Path,
                mesh: Any = None) -> tuple[ml_collections.ConfigDict, Tokenizer, Any, Any]:
  """(config, tokenizer, graphdef, params) of an RL run's newest checkpoint, laid out on
  `mesh` (default as `loop.load_trained`)."""
  workdir = Path(workdir)
  cfg = configlib.from_dict(json.loads((workdir / "config.json").read_text()))
  tokenizer = inputs.get_tokenizer(cfg, workdir, None)
  setup = build(cfg, tokenizer.vocab_size, mesh or sharding.mesh_for_saved(cfg.mesh))
  return cfg, tokenizer, setup.graphdef, loop.restore_params(workdir, setup)


def load_run(workdir: str | Path) -> tuple[ml_collections.ConfigDict, Any, Any, Any]:
  """(config, tokenizer, graphdef, params) of any trained run: an RL run's policy (with its
  value head, which generation and scoring ignore), else `loop.load_trained`'s model."""
  config_file = Path(workdir) / "config.json"
  if config_file.is_file() and json.loads(config_file.read_text()).get("objective") in ALGORITHMS:
    return load_policy(workdir)
  return loop.load_trained(workdir)


@dataclasses.dataclass
class Context:
  """What every iteration reads: settings, prompts, models' graphs, reward and steps."""

  cfg: ml_collections.ConfigDict
  mesh: Any
  tokenizer: Tokenizer
  prompts: list[list[int]]
  examples: list[tasks.Example]
  graphdef: Any
  ref_graphdef: Any
  ref_params: Any
  reward_fn: Any
  train_step: Any
  eos_id: int
  pad_id: int


def sampling_config(rl: ml_collections.ConfigDict, temperature: float | None = None):
  """The rollout sampler's settings (`temperature` overrides rl.temperature, e.g. 0)."""
  return sampling.SamplingConfig(
      temperature=rl.temperature if temperature is None else temperature, top_k=rl.top_k,
      top_p=rl.top_p, max_new_tokens=rl.max_new_tokens)


@functools.partial(jax.jit, static_argnames=("estimator", "gamma", "lam", "whiten"))
def _ppo_columns(scores, logp, ref_logp, values, mask, kl_coef, *, estimator: str, gamma: float,
                 lam: float, whiten: bool) -> dict:
  """KL-shaped token rewards, GAE advantages (optionally whitened) and returns."""
  rewards, kl = token_rewards(scores, logp, ref_logp, mask, kl_coef, estimator)
  advantages, returns = adv_lib.gae(rewards, values, mask, gamma=gamma, lam=lam)
  if whiten:
    advantages = adv_lib.whiten(advantages, mask)
  return {"advantages": advantages, "returns": returns, "non_score_reward": -kl_coef * kl}


def rollout(ctx: Context, params: Any, iteration: int, kl_coef: float) -> tuple[dict, dict]:
  """One iteration's scored rollouts (host arrays, B = prompts x group size) and metrics."""
  cfg, rl = ctx.cfg, ctx.cfg.rl
  rows_sharding = sharding.batch_sharding(ctx.mesh)
  rng = np.random.default_rng([cfg.seed, iteration])
  groups = math.ceil(rl.prompts_per_iter * rl.oversample)
  pick = rng.choice(len(ctx.prompts), groups, replace=len(ctx.prompts) < groups)
  rows = np.repeat(pick, rl.group_size)
  prompts, examples = [ctx.prompts[i] for i in rows], [ctx.examples[i] for i in rows]
  t0 = time.perf_counter()
  responses, mask = sample_responses(ctx.graphdef, params, prompts, sampling_config(rl),
                                     jax.random.fold_in(jax.random.key(cfg.seed), iteration),
                                     eos_id=ctx.eos_id, pad_id=ctx.pad_id,
                                     batch_sharding=rows_sharding)
  t1 = time.perf_counter()
  host = sequence_batch(prompts, responses, mask, rl.prompt_len, ctx.pad_id)
  raw = ctx.reward_fn(host, examples, [r[:int(m.sum())] for r, m in zip(responses, mask)])
  has_eos = ((responses == ctx.eos_id) & (mask == 1)).any(1)
  scores = raw - rl.no_eos_penalty * (~has_eos) - overlong_penalty(
      mask.sum(1), rl.max_new_tokens, rl.overlong_buffer, rl.overlong_penalty)
  sampled = {"reward": float(raw.mean()), "reward_std": float(raw.std()),
             "response_length": float(mask.sum(1).mean()), "eos_frac": float(has_eos.mean()),
             "rollout_tokens_per_sec": float(mask.sum()) / (t1 - t0)}
  if groups > rl.prompts_per_iter:  # train on the groups with a signal first
    keep = adv_lib.informative_groups(scores, rl.group_size, rl.prompts_per_iter)
    sampled["sampled_zero_std_frac"] = float(adv_lib.alike_groups(scores, rl.group_size).mean())
    host = {k: v[keep] for k, v in host.items()}
    mask, scores = mask[keep], scores[keep]
  if rl.score_norm == "batch":
    scores = (scores - scores.mean()) / (scores.std() + 1e-8)
  batch = global_rows.place(host, rows_sharding)  # each device scores its own rows
  ppo = cfg.objective == "ppo"
  logp, values = policy_logprobs(ctx.graphdef, params, batch, temperature=rl.temperature,
                                 with_values=ppo)
  ref_logp, _ = policy_logprobs(ctx.ref_graphdef, ctx.ref_params, batch,
                                temperature=rl.temperature, with_values=False)
  cols = {"old_logp": logp}
  if ppo:
    cols.update(old_values=values, **_ppo_columns(
        global_rows.place(scores.astype(np.float32), rows_sharding), logp, ref_logp, values,
        batch["mask"], np.float32(kl_coef), estimator=rl.kl_estimator, gamma=rl.gamma,
        lam=rl.lam, whiten=rl.whiten_advantages))
  else:
    group = np.asarray(adv_lib.group_advantages(jnp.asarray(scores), rl.group_size,
                                                scale=rl.scale_rewards, baseline=rl.baseline,
                                                std_ddof=rl.std_ddof))
    cols.update(advantages=group[:, None] * host["mask"],
                kl_coef=np.full(len(scores), kl_coef, np.float32))
  out = {**host, **global_rows.fetch({**cols, "ref_logp": ref_logp})}
  t2 = time.perf_counter()
  m = mask.astype(np.float32)
  kl_seq = ((out["old_logp"] - out["ref_logp"]) * m).sum(1)
  if ppo:  # PPO's rewards already hold the KL; GRPO's loss reads the reference log-probs
    del out["ref_logp"]
  # The policy's own numbers (reward, lengths) are over every sampled response; score, KL
  # and the rest over the responses trained on.
  metrics = {**sampled, "score": float(scores.mean()), "kl": float(kl_seq.mean()),
             "kl_coef": kl_coef, "time_rollout_s": t1 - t0, "time_scoring_s": t2 - t1}
  if not ppo:  # groups whose samples all scored the same teach nothing (DAPO filters them)
    metrics["zero_std_frac"] = float(adv_lib.alike_groups(scores, rl.group_size).mean())
  if ppo:
    ret, val = out["returns"], out["old_values"]
    var = lambda x: float(((x - (x * m).sum() / m.sum()) ** 2 * m).sum() / m.sum())
    metrics["explained_variance"] = 1.0 - var(ret - val) / max(var(ret), 1e-8)
    metrics["non_score_reward"] = float((out.pop("non_score_reward") * m).sum(1).mean())
  return out, metrics


def update(ctx: Context, state: Any, data: dict, iteration: int) -> tuple[Any, dict]:
  """`rl.epochs` passes of minibatch steps over one iteration's rollouts."""
  rl = ctx.cfg.rl
  n = len(data["tokens"])
  rng = np.random.default_rng([ctx.cfg.seed, iteration, 1])
  history = []
  for _ in range(rl.epochs):
    order = rng.permutation(n)
    for start in range(0, n, rl.minibatch_size):
      idx = order[start:start + rl.minibatch_size]
      # Every process holds all rollouts; each device gets only its rows of the minibatch.
      state, m = ctx.train_step(state, global_rows.place({k: v[idx] for k, v in data.items()},
                                                         sharding.batch_sharding(ctx.mesh)), {})
      history.append(m)
  return state, metrics_lib.mean_metrics([metrics_lib.to_python(m)
                                          for m in jax.device_get(history)])


def evaluate(cfg: ml_collections.ConfigDict, tokenizer: Tokenizer, graphdef: Any, params: Any,
             examples: list[tasks.Example], reward_fn: Any, *, temperature: float = 0.0,
             seed: int = 0, also: dict[str, Any] | None = None,
             batch_sharding: Any = None) -> dict[str, float]:
  """Mean reward and response length of a policy's replies to `examples` (greedy by default;
  any decoder run's graphdef and params, e.g. the SFT start), and the mean of each reward
  function in `also` on the same replies (e.g. the verifier beside a reward model). With
  `batch_sharding`, each device generates only its share of the replies."""
  template = chat.from_config(cfg.chat)
  prompts = [template.prompt_ids([{"role": "user", "content": e.prompt}], tokenizer)
             for e in examples]
  responses, mask = sample_responses(graphdef, params, prompts,
                                     sampling_config(cfg.rl, temperature), jax.random.key(seed),
                                     eos_id=template.stop_id(tokenizer),
                                     pad_id=tokenizer.contract.pad_id,
                                     batch_sharding=batch_sharding)
  host = sequence_batch(prompts, responses, mask, cfg.rl.prompt_len, tokenizer.contract.pad_id)
  replies = [r[:int(m.sum())] for r, m in zip(responses, mask)]
  result = {"reward": float(np.mean(reward_fn(host, examples, replies))),
            "response_length": float(mask.sum(1).mean())}
  for name, fn in (also or {}).items():
    result[name] = float(np.mean(fn(host, examples, replies)))
  return result


def train(cfg: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
  """Runs (or resumes) the PPO / GRPO run described by `cfg` in `workdir`; returns the last
  iteration's metrics (and the final held-out evaluation when `rl.eval_every` is set)."""
  check_config(cfg)
  with loop.removed_if_start_fails(workdir):
    workdir, is_main, resolved, mesh = loop.start_run(cfg, workdir, cfg.rl.minibatch_size,
                                                      "rl.minibatch_size")
    train_ex, heldout = load_prompts(cfg)
    # The workdir's tokenizer, else the init_from run's (sentencepiece or an HF import's),
    # else one trained on the prompts and answers.
    texts = [t for e in train_ex for t in (e.prompt, e.answer)]
    tokenizer = inputs.get_tokenizer(cfg, workdir, texts)
    inputs.save_tokenizer(tokenizer, workdir)
    setup = build(cfg, tokenizer.vocab_size, mesh)
  template = chat.from_config(cfg.chat)
  fresh = setup.init()
  ckpt = Checkpointer(workdir, keep=cfg.train.keep_checkpoints,
                      async_save=cfg.train.async_checkpoints)
  latest = ckpt.latest_step()
  try:
    if latest is None:
      params = loop.initial_params(cfg, fresh.params, setup.shardings.params)
      state = fresh.replace(params=jax.device_put(seed_critic(params), setup.shardings.params))
      progress = {"iteration": 0, "kl_coef": cfg.rl.kl_coef, "reference": reference_name(cfg)}
    else:
      diffs = config_mismatch(ckpt.saved_config(latest), resolved, loop.RESUME_MUST_MATCH,
                              ignore=tuple(f"model.{k}" for k in FREE_MODEL_FIELDS))
      if diffs:
        raise CheckpointError(f"{workdir} holds a checkpoint of a different run:\n  "
                              + "\n  ".join(diffs))
      state, progress = ckpt.restore(latest, abstract_like(jax.eval_shape(setup.init),
                                                           setup.shardings))
      if progress["reference"] != reference_name(cfg):
        raise CheckpointError(f"{workdir} was trained against the reference "
                              f"{progress['reference']!r}, this config names "
                              f"{reference_name(cfg)!r}")
  except BaseException:
    ckpt.close()
    raise
  if cfg.init_from:
    _, _, ref_graphdef, ref_params = loop.load_trained(cfg.init_from, mesh)
  else:  # the initial weights (a copy: the state's buffers are donated to the step)
    ref_graphdef, ref_params = setup.graphdef, jax.tree.map(jnp.copy, fresh.params)
  if is_main:
    (workdir / "config.json").write_text(json.dumps(resolved, indent=2))
  loss_fn = (make_ppo_loss if cfg.objective == "ppo" else make_grpo_loss)(cfg.rl)
  ctx = Context(
      cfg, mesh, tokenizer,
      [template.prompt_ids([{"role": "user", "content": e.prompt}], tokenizer) for e in train_ex],
      train_ex, setup.graphdef, ref_graphdef, ref_params,
      make_reward(cfg.rl, tokenizer, template, functools.partial(loop.load_trained, mesh=mesh),
                  sharding.batch_sharding(mesh)),
      loop.jitted_train_step(setup, loss_fn, mesh),
      template.stop_id(tokenizer), tokenizer.contract.pad_id)
  controller = KLController(progress["kl_coef"], cfg.rl.kl_target, cfg.rl.kl_horizon)
  writer = metrics_lib.MetricsWriter(workdir, enabled=is_main)
  it, last_good = int(progress["iteration"]), latest
  eval_examples = heldout[:cfg.rl.eval_prompts]
  # Trained on another reward (a reward model) with answers at hand: the verifier's exact
  # match beside it shows whether the proxy reward and the true one move together.
  gold = ({"exact_match": verifier_reward(tokenizer, template)}
          if cfg.rl.reward != "verifier" and eval_examples and all(e.answer for e in eval_examples)
          else {})
  final: dict[str, Any] = {"iteration": it}

  def save() -> None:
    nonlocal last_good
    loop.check_finite(state, last_good)
    ckpt.save(it, state, {"iteration": it, **controller.state(),
                          "reference": reference_name(cfg)}, resolved)
    last_good = it

  def run_eval() -> None:
    result = evaluate(cfg, tokenizer, ctx.graphdef, state.params, eval_examples, ctx.reward_fn,
                      also=gold, batch_sharding=sharding.batch_sharding(mesh))
    writer.write(it, "eval", result)
    final.update({f"eval_{k}": v for k, v in result.items()})

  try:
    with loop.stop_on_signals() as stop, jax.set_mesh(mesh):
      if cfg.rl.eval_every and it == 0 and eval_examples:
        run_eval()
      stopping = None
      while it < cfg.train.steps and stopping is None:
        t0 = time.perf_counter()
        data, metrics = rollout(ctx, state.params, it, controller.coef)
        t1 = time.perf_counter()
        state, update_metrics = update(ctx, state, data, it)
        loop.check_finite(state, last_good)
        metrics.update(update_metrics, time_update_s=time.perf_counter() - t1,
                       time_iteration_s=time.perf_counter() - t0)
        controller.update(metrics["kl"], len(data["tokens"]))
        it += 1
        writer.write(it, "train", metrics)
        final.update(metrics, iteration=it)
        if is_main and cfg.train.progress and (it % cfg.train.log_every == 0 or it == 1):
          print(f"iter {it}: reward {metrics['reward']:.3f}, kl {metrics['kl']:.3f}, "
                f"entropy {metrics['entropy']:.3f}, {metrics['time_iteration_s']:.1f}s")
        if cfg.rl.eval_every and it % cfg.rl.eval_every == 0 and eval_examples:
          run_eval()
        if cfg.train.ckpt_every and it % cfg.train.ckpt_every == 0:
          save()
        stopping = loop.agreed_signal(stop, it, every=1)
      if stopping is not None:
        final["stopped_by"] = stopping
      if last_good != it:
        save()
  finally:
    ckpt.close()
    writer.close()
  return final
