"""The training loop shared by every objective: resume, step, log, eval, sample, checkpoint.

`train(config, workdir)` continues from the newest checkpoint in `workdir` when there is one
(params, optimizer, step, RNG and data position), so a resumed run follows the same loss
curve. SIGTERM / SIGINT save a checkpoint at the next step boundary and stop cleanly; a
NaN/Inf loss stops the run without saving over the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from flax import nnx
from tqdm import tqdm

from jaxlm import config as configlib
from jaxlm import objectives, peft, sampling
from jaxlm.data import chat, sentinels
from jaxlm.data.pipeline import batch_iterator, fixed_batches
from jaxlm.models import ModelConfig, factory, from_config, matmul_param_count, param_count
from jaxlm.peft import token_rows
from jaxlm.train import metrics as metrics_lib
from jaxlm.train import distributed, optim, precompute, pretrained, sharding, state as state_lib
from jaxlm.train import step as step_lib
from jaxlm.train.checkpoint import (CheckpointError, Checkpointer, abstract_like, branch_source,
                                    checkpoint_steps, config_mismatch, copy_checkpoint)
from jaxlm.train.inputs import build_inputs, get_tokenizer

# Config sections (or fields) a checkpoint must agree with to be resumed: another optimizer
# keeps other state.
RESUME_MUST_MATCH = ("model", "objective", "optim.name", "optim.adafactor_momentum")
# Sections that may change on resume but change the loss curve: a changed one is named.
RESUME_SHOULD_MATCH = ("seed", "data", "chat", "task", "mlm", "span", "dpo", "kto", "reward",
                       "distill")


# Written when a run has done its final evaluation, saves and samples, with the step reached.
FINISHED = "finished.json"


def finished_step(workdir: Path) -> int | None:
  """The step a run in `workdir` finished at (None: it has not finished)."""
  path = workdir / FINISHED
  return json.loads(path.read_text())["step"] if path.is_file() else None


class NonFiniteLossError(RuntimeError):
  """The loss or gradient became NaN/Inf."""


@contextlib.contextmanager
def stop_on_signals() -> Iterator[dict]:
  """Turns SIGTERM/SIGINT into a flag the loop polls at step boundaries."""
  flag = {"signal": None}
  def handler(signum, _frame):
    flag["signal"] = signal.Signals(signum).name
  previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield flag
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


def agreed_signal(stop: dict, step: int, every: int) -> str | None:
  """The stop signal every process acts on after `step`: the local one on a single process;
  in a multi-process job any process's, compared every `every` steps (a collective, so all
  leave the loop at the same step and save together instead of waiting on each other)."""
  if jax.process_count() == 1:
    return stop["signal"]
  if step % every:
    return None
  from jax.experimental import multihost_utils
  if multihost_utils.process_allgather(np.array(stop["signal"] is not None)).any():
    return stop["signal"] or "a stop signal to another process"
  return None


def evaluate(eval_step, params: Any, batches: Iterator[dict], mesh,
             frozen_params: dict | None = None) -> dict[str, float]:
  """Eval metrics over `batches` (per token when the loss counts tokens), with perplexity."""
  history = [eval_step(params, sharding.global_batch(b, mesh), frozen_params or {})
             for b in batches]
  result = metrics_lib.token_weighted_mean(
      [metrics_lib.to_python(m) for m in jax.device_get(history)])
  result["perplexity"] = math.exp(min(result["loss"], 50.0))
  return result


def check_finite(state: state_lib.TrainState, last_good: int | None) -> None:
  """Raises NonFiniteLossError naming the first bad step (one host read)."""
  bad = int(jax.device_get(state.nonfinite_step))
  if bad >= 0:
    where = f"checkpoint at step {last_good} is intact" if last_good is not None else "none saved"
    raise NonFiniteLossError(
        f"loss or gradient became NaN/Inf at step {bad}; stopping without saving ({where}). "
        "Lower optim.lr, raise optim.warmup_steps or check the data.")


@dataclasses.dataclass
class ModelSetup:
  """What a run builds from its config before any data flows."""

  model_cfg: Any
  optimizer: Any
  schedule: Any
  graphdef: Any
  init: Any
  shardings: Any
  trainable: Any  # tree of bools: which parameters the optimizer updates


def check_model(cfg: ml_collections.ConfigDict, vocab_size: int | None) -> ModelConfig:
  """The run's ModelConfig, checked against its objective's model family, `data.seq_len`
  and the PEFT method.

  With `vocab_size=None` and `model.vocab_size=0` a placeholder vocabulary stands in, so a
  bad model config is named before any data is read or any file is written.
  """
  objective = objectives.get(cfg.objective)
  if vocab_size is None and not cfg.model.vocab_size:
    vocab_size = 128
  model_cfg = from_config(cfg.model, vocab_size)
  if model_cfg.family != objective.MODEL_FAMILY:
    raise ValueError(f"objective {cfg.objective!r} needs a {objective.MODEL_FAMILY!r} model, "
                     f"but model.style={model_cfg.style!r} is {model_cfg.family!r}")
  if cfg.data.seq_len > model_cfg.max_seq_len:
    raise ValueError(f"data.seq_len={cfg.data.seq_len} exceeds model.max_seq_len="
                     f"{model_cfg.max_seq_len}")
  peft.check_method(cfg.peft)
  return model_cfg


def build_model(cfg: ml_collections.ConfigDict, vocab_size: int, mesh, *, make_model=None,
                total_steps: int | None = None) -> ModelSetup:
  """Model config, optimizer, schedule and the sharded TrainState initialiser.

  `make_model(model_cfg, rngs)` and `total_steps` (optimizer steps) replace the objective's
  model and `train.steps` when given (RL runs: a policy with a critic, several updates per
  iteration).
  """
  if make_model is None:
    model_cfg = check_model(cfg, vocab_size)
    make_model = getattr(objectives.get(cfg.objective), "make_model", factory.create)
  else:
    model_cfg = from_config(cfg.model, vocab_size)

  def build(rngs):
    return peft.wrap(make_model(model_cfg, rngs), cfg.peft, rngs)

  trainable = peft.trainable_mask(state_lib.abstract_model(build)[1], cfg.peft)
  optimizer = optim.make_optimizer(cfg.optim, total_steps or cfg.train.steps, trainable)
  schedule = optim.make_schedule(cfg.optim, total_steps or cfg.train.steps)
  graphdef, init, shardings = state_lib.make_initializer(build, optimizer, cfg.seed, mesh)
  return ModelSetup(model_cfg, optimizer, schedule, graphdef, init, shardings, trainable)


def initial_params(cfg: ml_collections.ConfigDict, fresh: Any, shardings: Any) -> Any:
  """Fresh parameters, overlaid with the `init_from` run's weights when one is named."""
  if not cfg.init_from:
    return fresh
  saved_cfg, _, _, loaded = load_trained(cfg.init_from)
  diffs = pretrained.model_differences(configlib.to_dict(saved_cfg.model),
                                       configlib.to_dict(cfg.model), pretrained.LAYOUT_FIELDS)
  if diffs:
    raise CheckpointError(f"init_from={cfg.init_from} has a different model:\n  "
                          + "\n  ".join(diffs))
  params, report = pretrained.merge_pretrained(fresh, loaded)
  params = peft.after_init_from(params, report.loaded, cfg.peft, cfg.seed)
  if jax.process_index() == 0:
    print(f"init_from {cfg.init_from}: {report}")
    # e.g. an imported instruct model tuned on its own markup, or opening texts with BOS
    for key, default in (("format", "jaxlm"), ("bos", False)):
      theirs = saved_cfg.chat.get(key, default)
      if theirs != cfg.chat[key]:
        print(f"note: init_from {cfg.init_from} has chat.{key}={theirs}, this run "
              f"{cfg.chat[key]} (--config.chat.{key}={theirs} keeps its chat markup)")
  return jax.device_put(params, shardings)


def load_frozen(cfg: ml_collections.ConfigDict, vocab_size: int) -> tuple[dict, dict]:
  """(graphdefs, params) of the frozen models; their vocabulary must be the run's."""
  graphdefs, params = {}, {}
  for name, workdir in objectives.frozen_workdirs(cfg).items():
    _, _, graphdefs[name], params[name] = load_trained(workdir)
    theirs = nnx.merge(graphdefs[name], params[name]).cfg.vocab_size
    if theirs != vocab_size:
      raise ValueError(f"the {name} model ({workdir}) has a vocabulary of {theirs}, this run "
                       f"{vocab_size}: they must share a tokenizer")
  return graphdefs, params


def run_precompute(cfg: ml_collections.ConfigDict, inputs) -> None:
  """The objective's pre-pass columns (e.g. cached DPO reference log-probs) on every split."""
  for name, (workdir, fn) in getattr(objectives.get(cfg.objective), "precompute",
                                     lambda _: {})(cfg).items():
    ckpt = Checkpointer(workdir, async_save=False)
    step = ckpt.latest_step()
    ckpt.close()
    _, _, graphdef, params = load_trained(workdir)
    for split in (inputs.train, inputs.val):
      if split is not None:
        computed = precompute.add_columns(split.rows, graphdef, params, fn,
                                          precompute.model_id(workdir, step, name))
        if jax.process_index() == 0:
          print(f"{name} pre-pass: {computed} of {len(split.rows[next(iter(split.rows))])} rows "
                "computed, the rest from the cache")
    del params  # the frozen model is not needed during training


def jitted_train_step(setup: ModelSetup, loss_fn: Callable, mesh: Any, *, grad_accum: int = 1,
                      frozen_graphdefs: dict | None = None, frozen_params: Any = None) -> Callable:
  """The run's train step over the setup's trainable leaves (`step.make_train_step`), jitted
  with the setup's shardings, the batch split over `mesh`, and `frozen_params`' shardings."""
  step = step_lib.make_train_step(setup.graphdef, loss_fn, setup.optimizer, setup.schedule,
                                  grad_accum=grad_accum, frozen_graphdefs=frozen_graphdefs,
                                  trainable=setup.trainable)
  frozen_shardings = jax.tree.map(lambda x: x.sharding, frozen_params or {})
  return step_lib.jit_train_step(step, setup.shardings, sharding.batch_sharding(mesh),
                                 frozen_shardings)


def model_flops_per_token(setup: ModelSetup, params: Any, seq_len: int) -> float:
  """Flops per trained token of the run's step for MFU (`metrics.flops_per_token`; a PEFT
  step forms the gradients of its trainable parameters only)."""
  cfg = setup.model_cfg
  n_matmul = matmul_param_count(cfg, params)
  n_train, _ = peft.counts(params, setup.trainable)
  return metrics_lib.flops_per_token(n_matmul, cfg.num_layers, cfg.num_heads,
                                     cfg.attention_flops_dim, seq_len, trained_params=min(n_train, n_matmul))


def load_trained(workdir: str | Path,
                 mesh: Any = None) -> tuple[ml_collections.ConfigDict, Any, Any, Any]:
  """(config, tokenizer, graphdef, params) of the newest checkpoint in `workdir`, laid out on
  `mesh` (default: the run's own mesh when this machine's devices fit it, else data
  parallelism over all devices)."""
  workdir = Path(workdir)
  config_file = workdir / "config.json"
  if not config_file.is_file():
    raise FileNotFoundError(f"{workdir} is not a jaxlm workdir (no config.json); train first")
  cfg = configlib.from_dict(json.loads(config_file.read_text()))
  if cfg.objective not in objectives.OBJECTIVES:  # an RL run: its checkpoint holds a policy
    raise ValueError(f"{workdir} is a {cfg.objective!r} run: `jaxlm sample` and `jaxlm eval` "
                     "read its policy, but training cannot start from it (init_from)")
  tokenizer = get_tokenizer(cfg, workdir, None)
  setup = build_model(cfg, tokenizer.vocab_size, mesh or sharding.mesh_for_saved(cfg.mesh))
  return cfg, tokenizer, setup.graphdef, restore_params(workdir, setup)


def restore_params(workdir: str | Path, setup: ModelSetup) -> Any:
  """The parameters of the newest checkpoint in `workdir`, laid out as `setup` says (the
  optimizer state stays on disk)."""
  ckpt = Checkpointer(workdir, async_save=False)
  try:
    latest = ckpt.latest_step()
    if latest is None:
      raise CheckpointError(f"{workdir} has no complete checkpoint yet")
    return ckpt.restore_params(
        latest, abstract_like(jax.eval_shape(setup.init), setup.shardings))
  finally:
    ckpt.close()


def start_run(cfg: ml_collections.ConfigDict, workdir: str | Path, rows: int,
              setting: str) -> tuple[Path, bool, dict, Any]:
  """(workdir, is_main, resolved config, mesh) of a run: joins a multi-host job when there is
  one, creates the workdir and checks that the `rows` of a step (config `setting`) split
  evenly over the mesh's data x fsdp x expert shards and the sequence over `sequence` (the
  parameters' split is checked with their shapes, `sharding.check_divisible`)."""
  distributed.initialize(cfg.distributed)
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = sharding.make_mesh(cfg.mesh)
  batch_shards = math.prod(mesh.shape[axis] for axis in sharding.BATCH_AXES)
  if rows % batch_shards:
    raise ValueError(f"{setting}={rows} must be divisible by the {batch_shards} data x fsdp x "
                     "expert shards of the mesh")
  if cfg.data.seq_len % mesh.shape["sequence"]:
    raise ValueError(f"mesh.sequence={mesh.shape['sequence']} must divide data.seq_len="
                     f"{cfg.data.seq_len} (each device holds an equal share of the positions)")
  return workdir, jax.process_index() == 0, configlib.to_dict(cfg), mesh


@contextlib.contextmanager
def removed_if_start_fails(workdir: str | Path) -> Iterator[None]:
  """Removes `workdir` again when the block raises and the folder did not exist before it, so a
  run that cannot start (missing data, a model too big to build) leaves nothing behind that a
  retry would mistake for a run of its own (a tokenizer fitted to other data)."""
  workdir = Path(workdir)
  existed = workdir.exists()
  try:
    yield
  except BaseException:
    if not existed and jax.process_index() == 0:
      shutil.rmtree(workdir, ignore_errors=True)
    raise


def resolve_trainable_tokens(cfg: ml_collections.ConfigDict, resolved: dict[str, Any],
                             tokenizer) -> None:
  """`peft.trainable_tokens=chat` replaced by the chat template's token ids for `tokenizer`,
  in the run's config and in the config it saves (so a reload builds the same rows)."""
  if cfg.peft.trainable_tokens == token_rows.CHAT:
    ids = chat.ChatTemplate(format=cfg.chat.format).special_ids(tokenizer)
    cfg.peft.trainable_tokens = token_rows.resolve(token_rows.CHAT, ids)
    resolved["peft"]["trainable_tokens"] = cfg.peft.trainable_tokens


def train(cfg: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
  """Trains (or resumes) the run described by `cfg` in `workdir`; returns final metrics."""
  # A bad objective, model, loss or reference / teacher setting is named before any work.
  check_model(cfg, None)
  loss_fn = objectives.loss_fn_for(cfg)
  objectives.frozen_workdirs(cfg)
  branch = branch_source(cfg.train.branch_from) if cfg.train.branch_from else None
  if branch and cfg.init_from:
    raise ValueError("train.branch_from continues another run's checkpoint; init_from starts "
                     "from its weights alone: set one of them")
  # Each micro-batch of gradient accumulation must split over the mesh too.
  if cfg.optim.grad_accum < 1 or cfg.train.batch_size % cfg.optim.grad_accum:
    raise ValueError(f"optim.grad_accum={cfg.optim.grad_accum} must be >= 1 and divide "
                     f"train.batch_size={cfg.train.batch_size}")
  with removed_if_start_fails(workdir):
    workdir, is_main, resolved, mesh = start_run(
        cfg, workdir, cfg.train.batch_size // cfg.optim.grad_accum,
        "train.batch_size / optim.grad_accum")
    inputs = build_inputs(cfg, workdir)
    resolve_trainable_tokens(cfg, resolved, inputs.tokenizer)
    setup = build_model(cfg, inputs.tokenizer.vocab_size, mesh)
  if branch and not checkpoint_steps(workdir):
    if is_main:
      copy_checkpoint(*branch, workdir)
    if jax.process_count() > 1:  # every process opens the checkpoint once it is there
      multihost_utils.sync_global_devices("jaxlm branch_from copied")
  model_cfg, graphdef, init, shardings = setup.model_cfg, setup.graphdef, setup.init, setup.shardings
  total = cfg.train.steps

  ckpt = Checkpointer(workdir, keep=cfg.train.keep_checkpoints,
                      async_save=cfg.train.async_checkpoints)
  latest = ckpt.latest_step()
  try:
    if latest is None:
      state, data_state = init(), None
      state = state.replace(params=initial_params(cfg, state.params, shardings.params))
    else:
      diffs = config_mismatch(ckpt.saved_config(latest), resolved, RESUME_MUST_MATCH,
                              ignore=tuple(f"model.{k}" for k in pretrained.FREE_MODEL_FIELDS))
      if diffs:
        raise CheckpointError(f"{workdir} holds a checkpoint of a different run; use a new "
                              "--workdir or the checkpoint's settings:\n  " + "\n  ".join(diffs))
      changed = config_mismatch(ckpt.saved_config(latest), resolved, RESUME_SHOULD_MATCH)
      if changed and is_main:
        print(f"resuming step {latest} with changed settings (the loss curve will not continue "
              "the saved run's):\n  " + "\n  ".join(changed))
      state, data_state = ckpt.restore(latest, abstract_like(jax.eval_shape(init), shardings))
  except BaseException:
    ckpt.close()
    raise
  if is_main:
    (workdir / "config.json").write_text(json.dumps(resolved, indent=2))

  run_precompute(cfg, inputs)
  frozen_graphdefs, frozen_params = load_frozen(cfg, model_cfg.vocab_size)
  train_step = jitted_train_step(setup, loss_fn, mesh, grad_accum=cfg.optim.grad_accum,
                                 frozen_graphdefs=frozen_graphdefs, frozen_params=frozen_params)
  eval_step = step_lib.make_eval_step(graphdef, loss_fn, frozen_graphdefs)
  writer = metrics_lib.MetricsWriter(workdir, enabled=is_main)
  n_params = param_count(state.params)
  flops_token = model_flops_per_token(setup, state.params, cfg.data.seq_len)
  device_kind = jax.devices()[0].device_kind
  if is_main:
    n_train, _ = peft.counts(state.params, setup.trainable)
    print(f"model: {n_params:,} parameters ({model_cfg.style}), devices: {jax.device_count()} x "
          f"{device_kind}, mesh: {dict(mesh.shape)}, vocab: {model_cfg.vocab_size}")
    print(f"trainable: {n_train:,} of {n_params:,} parameters ({100 * n_train / n_params:.3f}%), "
          f"optimizer state: {param_count(state.opt_state):,} values")

  start = int(jax.device_get(state.step))
  data_it = batch_iterator(inputs.train, data_state)
  tokens_per_step = cfg.train.batch_size * cfg.data.seq_len
  last_good = latest
  pending: list[dict] = []
  final: dict[str, Any] = {"step": start}
  if start >= total and finished_step(workdir) == total:
    final.update(metrics_lib.last_logged(workdir))
    if is_main:
      print(f"{workdir} finished at step {total}: its metrics as logged (raise train.steps to "
            "train on)")
  bar = tqdm(total=total, initial=start, disable=not (is_main and cfg.train.progress),
             dynamic_ncols=True, desc="train")

  def save(step: int) -> None:
    nonlocal last_good
    check_finite(state, last_good)
    ckpt.save(step, state, data_it.get_state(), resolved)
    last_good = step

  def run_eval(step: int) -> None:
    if inputs.val is None:
      return
    result = evaluate(eval_step, state.params, fixed_batches(inputs.val, cfg.train.eval_batches),
                      mesh, frozen_params)
    writer.write(step, "eval", result)
    final.update({f"eval_{k}": v for k, v in result.items()})
    bar.write(f"step {step}: eval loss {result['loss']:.4f}, perplexity {result['perplexity']:.2f}")

  def run_samples(step: int) -> list[str]:
    texts = sample_texts(graphdef, state.params, inputs.tokenizer, cfg.sample,
                         jax.random.key(cfg.seed + step), seq2seq=model_cfg.family == "encdec",
                         prefix_lm=cfg.objective == "prefix_lm")
    for i, text in enumerate(texts):
      writer.write_text(step, f"sample/{i}", text)
    return texts

  can_sample = model_cfg.family in ("decoder", "encdec")  # encoders do not generate
  t_last, step = time.perf_counter(), start
  try:
    with stop_on_signals() as stop, jax.set_mesh(mesh), sharding.activation_rules():
      stopping = None
      while step < total and stopping is None:
        batch = sharding.global_batch(next(data_it), mesh)
        state, m = train_step(state, batch, frozen_params)
        pending.append(m)
        step += 1
        bar.update(1)
        if step % cfg.train.log_every == 0 or step == total:
          history = [metrics_lib.to_python(x) for x in jax.device_get(pending)]
          check_finite(state, last_good)
          now = time.perf_counter()
          logged = metrics_lib.mean_metrics(history)
          logged["tokens_per_sec"] = len(pending) * tokens_per_step / (now - t_last)
          util = metrics_lib.mfu(logged["tokens_per_sec"], flops_token, device_kind,
                                 jax.device_count())
          if util is not None:
            logged["mfu"] = util
          writer.write(step, "train", logged)
          bar.set_postfix(loss=f"{logged['loss']:.4f}", tok_s=f"{logged['tokens_per_sec']:,.0f}",
                          **({"mfu": f"{100 * util:.1f}%"} if util is not None else {}))
          final.update(step=step, train_loss=logged["loss"], tokens_per_sec=logged["tokens_per_sec"])
          pending, t_last = [], time.perf_counter()
        eval_due = bool(cfg.train.eval_every and step % cfg.train.eval_every == 0
                        and step < total)
        sample_due = bool(can_sample and cfg.train.sample_every
                          and step % cfg.train.sample_every == 0 and step < total)
        save_due = bool(cfg.train.ckpt_every and step % cfg.train.ckpt_every == 0)
        if eval_due or sample_due or save_due:
          # Evals, samples and saves are not training time: the steps so far finish first.
          jax.block_until_ready(state)
          paused = time.perf_counter()
          if eval_due:
            run_eval(step)
          if sample_due:
            for text in run_samples(step):
              bar.write(f"--- sample at step {step} ---\n{text}")
          if save_due:
            save(step)
          t_last += time.perf_counter() - paused
        stopping = agreed_signal(stop, step, cfg.train.log_every)
      if last_good != step:
        save(step)
      if stopping is not None:  # even on the last step: the rerun finishes the run
        final["stopped_by"] = stopping
        bar.write(f"{stopping}: saved checkpoint at step {step}; rerun to resume")
      elif start < total or finished_step(workdir) != total:  # or stopped after its last step
        run_eval(step)
        if cfg.peft.method in peft.ADDS_PARAMS:  # the trained leaves alone, small
          peft.save_adapter(workdir / "adapter", state.params, setup.trainable, resolved)
        final["samples"] = run_samples(step) if can_sample and cfg.sample.num_samples else []
        if is_main:
          (workdir / FINISHED).write_text(json.dumps({"step": step}))
  finally:
    bar.close()
    ckpt.close()
    writer.close()
  final["step"] = step
  return final


def sample_texts(graphdef, params, tokenizer, sample_cfg: ml_collections.ConfigDict,
                 rng: jax.Array, *, seq2seq: bool = False, prefix_lm: bool = False) -> list[str]:
  """`sample.num_samples` continuations of `sample.prompt` with the configured settings; with
  `seq2seq` (T5), the spans filled in for the `<extra_id_k>` marked in the prompt; with
  `prefix_lm`, the prompt attends to itself both ways (a prefix-LM run)."""
  scfg = sampling.SamplingConfig(temperature=sample_cfg.temperature, top_k=sample_cfg.top_k,
                                 top_p=sample_cfg.top_p, min_p=sample_cfg.get("min_p", 0.0),
                                 max_new_tokens=sample_cfg.max_new_tokens, prefix_lm=prefix_lm)
  prompts = [sample_cfg.prompt] * sample_cfg.num_samples
  rows_sharding = sharding.rows_sharding_of(params)
  if seq2seq:
    return sampling.infill_text(graphdef, params, sentinels.Markup(tokenizer), prompts, scfg, rng,
                                rows_sharding)
  return sampling.sample_text(graphdef, params, tokenizer, prompts, scfg, rng, rows_sharding)
