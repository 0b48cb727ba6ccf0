"""Experiment configs: the shared skeleton every `configs/*.py` starts from, and loading.

A config file defines `get_config(arg=None)` returning a locked `ConfigDict`; `arg` is the
preset after the colon in `configs/x.py:cpu`. Overrides are `key=value` strings with dotted
keys; an unknown key is an error naming the key.
"""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path
from typing import Callable, Sequence

import ml_collections

from jaxlm.models import registry


def base_config(model: str = "gpt2-124m") -> ml_collections.ConfigDict:
  """Every field a run reads, with defaults; experiment files change what they need."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # clm | prefix_lm | mlm | span | sft | seq2seq | reward | dpo | kto | distill | ppo | grpo
  c.objective = "clm"
  c.init_from = ""  # a workdir whose newest weights start this run (a checkpoint here wins)
  c.model = registry.model_config(model)
  c.data = ml_collections.ConfigDict(dict(
      # embedded:NAME | text:PATH | jsonl:PATH | tfds:NAME | task:KINDS
      source="embedded:tinyshakespeare",
      text_field="text", val_fraction=0.1, seq_len=1024,
      tokenizer=dict(kind="bpe", vocab_size=8192, path="", num_sentinels=100)))
  c.optim = ml_collections.ConfigDict(dict(
      # adamw | lion (lr ~3-10x smaller) | adafactor (relative steps: lr x each parameter's
      # RMS; adafactor_momentum > 0 keeps an EMA of its updates, 0 none as T5) | muon (the
      # blocks' matrices; the rest AdamW, at the same lr)
      name="adamw", muon_momentum=0.95, adafactor_momentum=0.0,
      # cosine | linear | constant | wsd (warmup, stable, then a cooldown over the last
      # cooldown_fraction of the steps, linear or 1 - sqrt)
      lr=6e-4, min_lr=6e-5, warmup_steps=2000, decay_steps=0, schedule="cosine",
      cooldown_fraction=0.2, cooldown_shape="linear", b1=0.9,
      b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0, grad_accum=1,
      # Adam's first moment in bfloat16 halves its memory; the second stays float32.
      mu_dtype="float32",
      # model.router_bias: each step moves every router bias by this much (DeepSeek-V3: 1e-3)
      router_bias_rate=1e-3))
  c.train = ml_collections.ConfigDict(dict(
      steps=100_000, batch_size=64, log_every=20, eval_every=500, eval_batches=20,
      ckpt_every=1000, keep_checkpoints=3, async_checkpoints=True, sample_every=2000,
      progress=True,
      # "WORKDIR:STEP": a new run starts from that run's checkpoint (parameters, optimizer
      # state, data position), e.g. a WSD cooldown from a long run's stable phase.
      branch_from="",
      # >0: the LM loss takes this many positions at a time, never the full (B, L, V) logits.
      loss_chunk=0,
      # >0: PaLM's auxiliary z_loss * log(Z)^2 keeps the softmax normaliser near 1 (clm, sft;
      # PaLM used 1e-4). The logged loss stays the cross-entropy.
      z_loss=0.0))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, expert=1, sequence=1))
  # Multi-host (jaxlm.train.distributed): mode auto | on | off; empty fields are auto-detected.
  c.distributed = ml_collections.ConfigDict(dict(
      mode="auto", coordinator_address="", num_processes=0, process_id=-1))
  # Objective settings (read only by their objective).
  c.mlm = ml_collections.ConfigDict(dict(rate=0.15, mask_frac=0.8, random_frac=0.1,
                                         whole_word=False))
  c.span = ml_collections.ConfigDict(dict(noise_density=0.15, mean_span_length=3.0))
  c.distill = ml_collections.ConfigDict(dict(teacher="", temperature=2.0, alpha=0.5))
  # Chat template (jaxlm.data.chat): format jaxlm (role tokens past the vocabulary) | chatml |
  # llama3 | gemma | phi4 (an imported family's own markup; the import sets it from its
  # chat_template).
  c.chat = ml_collections.ConfigDict(dict(bos=False, system_prompt="", format="jaxlm"))
  # Parameter-efficient fine-tuning (jaxlm.peft): method none | lora | freeze | adapter |
  # prefix | prompt (dropout: LoRA input dropout; use_dora: LoRA as DoRA; use_rslora: scale
  # alpha / sqrt(rank); include / exclude: path regexes, what freeze trains, or base parameters
  # that train beside an adapter; *_hidden 0: no reparameterising MLP; trainable_tokens:
  # embedding rows that train beside an adapter, "" none, "chat" the chat template's tokens,
  # or comma-separated ids).
  c.peft = ml_collections.ConfigDict(dict(
      method="none", targets=r"attn/(query|value)$", rank=8, alpha=16.0, use_dora=False,
      use_rslora=False, include="", trainable_tokens="",
      exclude="", dropout=0.0, adapter_size=64, adapter_placement="both", prefix_len=16,
      prefix_hidden=0, prompt_len=16, prompt_hidden=0))
  # The shipped verifiable tasks (data.source=task:KINDS): sizes and counts.
  c.task = ml_collections.ConfigDict(dict(n_train=20_000, n_heldout=500, seed=0, digits=2,
                                          str_len=5, list_len=5))
  # targets_len: seq2seq's decoder tokens per row (0: data.seq_len, as the encoder's).
  c.sft = ml_collections.ConfigDict(dict(truncation="drop", train_on_prompt=False,
                                         targets_len=0))
  c.reward = ml_collections.ConfigDict(dict(margin=0.0))
  c.dpo = ml_collections.ConfigDict(dict(loss="sigmoid", beta=0.1, label_smoothing=0.0,
                                         simpo_gamma=0.5, rpo_alpha=0.0, dpop_lambda=50.0,
                                         reference="", reference_mode="cached"))
  # KTO on unpaired replies (jaxlm.objectives.kto); the reference as for DPO.
  c.kto = ml_collections.ConfigDict(dict(beta=0.1, desirable_weight=1.0, undesirable_weight=1.0,
                                         reference="", reference_mode="cached"))
  # RLHF (objective ppo | grpo; jaxlm.rl): train.steps counts rollout iterations.
  c.rl = ml_collections.ConfigDict(dict(
      reward="verifier", reward_model="", reward_token="", prompts_per_iter=32, group_size=1,
      prompt_len=32, max_new_tokens=16, temperature=1.0, top_k=0, top_p=1.0,
      no_eos_penalty=0.0, kl_coef=0.05, kl_estimator="k1", kl_target=0.0, kl_horizon=10_000,
      epochs=4, minibatch_size=16, gamma=1.0, lam=0.95, clip_ratio=0.2, clip_value=0.2,
      vf_coef=0.1, ent_coef=0.0, critic="shared", whiten_advantages=True, score_norm="none",
      eval_every=0, eval_prompts=64,
      # clip_ratio_high > 0: the ratio's upper clip alone (DAPO's clip-higher). GRPO:
      # scale_rewards group | batch | none (std dividing the group-centred scores; std_ddof 1:
      # the sample std, as TRL), baseline
      # mean | leave_one_out (RLOO's: the other samples' mean score),
      # loss_agg sequence | token | constant (see jaxlm.rl.losses.aggregate), oversample >= 1
      # (sample that many times the groups, train on those whose scores differ first: DAPO's
      # dynamic sampling). overlong_buffer > 0: the reward falls linearly by up to
      # overlong_penalty over the last overlong_buffer of max_new_tokens (DAPO).
      clip_ratio_high=0.0, scale_rewards="group", std_ddof=0, baseline="mean",
      loss_agg="sequence",
      oversample=1.0,
      overlong_buffer=0, overlong_penalty=1.0))
  c.sample = ml_collections.ConfigDict(dict(
      prompt="", num_samples=2, max_new_tokens=256, temperature=0.8, top_k=200, top_p=1.0,
      min_p=0.0))
  c.lock()  # a misspelt key in an experiment file is an error, not a new setting
  return c


def cpu_preset(c: ml_collections.ConfigDict) -> None:
  """Shrinks a config so one run takes about a minute on a laptop CPU (a smoke run)."""
  c.model.update(num_layers=2, num_heads=4, num_kv_heads=0 if c.model.num_kv_heads == 0 else 2,
                 embed_dim=64, mlp_dim=256 if c.model.style == "gpt2" else 176, max_seq_len=128,
                 dropout=0.0)
  c.data.seq_len = 64
  c.data.tokenizer.update(vocab_size=512)
  c.optim.update(lr=1e-3, min_lr=1e-4, warmup_steps=20)
  c.train.update(steps=200, batch_size=8, log_every=10, eval_every=100, eval_batches=4,
                 ckpt_every=100)
  c.sample.update(max_new_tokens=64)


def short_cpu_run(c: ml_collections.ConfigDict, *, lr: float, steps: int = 600,
                  seq_len: int = 128) -> None:
  """Run settings of a few-minute CPU pre-training preset on the embedded corpus."""
  c.data.seq_len = seq_len
  c.model.max_seq_len = seq_len
  c.data.tokenizer.vocab_size = 1024
  c.optim.update(lr=lr, min_lr=lr / 10, warmup_steps=50)
  c.train.update(steps=steps, batch_size=16, log_every=50, eval_every=steps // 3, eval_batches=10,
                 ckpt_every=steps // 3)


def apply_preset(c: ml_collections.ConfigDict, arg: str | None,
                 presets: dict[str, Callable[[ml_collections.ConfigDict], None]]) -> None:
  """Applies the presets named in `arg` ("a" or "a,b"; None: none); an unknown name lists
  the known ones."""
  for name in (arg.split(",") if arg else []):
    if name not in presets:
      raise ValueError(f"unknown preset {name!r}; known: {', '.join(sorted(presets))}")
    presets[name](c)


def load_module_config(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """Calls `get_config(arg)` of the Python file at `path`; the result is locked."""
  p = Path(path)
  if not p.is_file():
    raise FileNotFoundError(f"config file {p} does not exist")
  spec = importlib.util.spec_from_file_location(f"jaxlm_config_{p.stem}", p)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  try:
    cfg = module.get_config(arg) if arg is not None else module.get_config()
  except AttributeError as e:  # a locked config refuses a misspelt key with AttributeError
    message = e  # ml_collections wraps a KeyError whose text holds the suggestion
    while isinstance(message, BaseException) and message.args:
      message = message.args[0]
    raise ValueError(f"{p}: {message}") from e
  cfg.lock()
  return cfg


def parse_value(text: str):
  """A Python literal if the text is one (1e-3, True, 'x', None), else the text itself."""
  lowered = {"true": True, "false": False, "none": None}.get(text.lower(), text)
  if lowered is not text:
    return lowered
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
  """Applies `a.b.c=value` overrides; unknown keys raise a KeyError naming the key."""
  for item in overrides:
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"override {item!r} is not of the form key=value")
    node = cfg
    parts = key.split(".")
    for depth, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        raise KeyError(f"unknown config key {'.'.join(parts[:depth + 1])!r} (in override {item!r})")
      if depth < len(parts) - 1:
        node = node[part]
    parsed = parse_value(value)
    current = node[parts[-1]]
    if isinstance(current, ml_collections.ConfigDict) and isinstance(parsed, dict):
      # A section given as a dict changes the keys it names, each checked and typed as its own
      # override; the section's other keys keep their values.
      apply_overrides(cfg, [f"{key}.{k}={v!r}" for k, v in parsed.items()])
      continue
    if isinstance(parsed, bool) and isinstance(current, (int, float)) and not isinstance(
        current, bool):
      raise TypeError(f"config key {key!r} takes a number, got {value!r}")
    if isinstance(current, float) and isinstance(parsed, int) and not isinstance(parsed, bool):
      parsed = float(parsed)
    if isinstance(current, str) and not isinstance(parsed, str):
      parsed = value
    try:
      node[parts[-1]] = parsed
    except TypeError as e:
      raise TypeError(f"config key {key!r}: {e}") from e


def load(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Loads `path.py[:preset]` and applies overrides."""
  path, _, arg = spec.partition(":")
  cfg = load_module_config(path, arg or None)
  apply_overrides(cfg, overrides)
  return cfg


def to_dict(cfg: ml_collections.ConfigDict) -> dict:
  """A JSON-ready plain dict of the resolved config."""
  return json.loads(cfg.to_json_best_effort())


def with_defaults(saved: dict, defaults: dict) -> dict:
  """`saved` with every key it lacks (at any depth) taken from `defaults`."""
  out = dict(saved)
  for key, value in defaults.items():
    if key not in out:
      out[key] = value
    elif isinstance(value, dict) and isinstance(out[key], dict):
      out[key] = with_defaults(out[key], value)
  return out


def from_dict(d: dict) -> ml_collections.ConfigDict:
  """A locked ConfigDict rebuilt from `to_dict` output (e.g. the config saved in a workdir);
  settings added to jaxlm since it was saved take their defaults."""
  cfg = ml_collections.ConfigDict(with_defaults(d, to_dict(base_config())))
  cfg.lock()
  return cfg
