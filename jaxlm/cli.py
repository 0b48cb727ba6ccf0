"""`jaxlm train | sample | score | eval | convert | sweep`: the command line.

  jaxlm train --config configs/shakespeare_char.py:cpu --workdir runs/x [--config.a.b=value ...]
  jaxlm sample --workdir runs/x --prompt "ROMEO:" --temperature 0.8 --top_k 200
  jaxlm sample --workdir runs/t5 --prompt "To be, or <extra_id_0> to be" --temperature 0
  jaxlm sample --workdir runs/x --prompt "ROMEO:" --num_beams 4 --max_new_tokens 40
  jaxlm sample --workdir runs/x --prompt "ROMEO:" --draft runs/small --gamma 4
  jaxlm score --workdir runs/rm --prompt "Sort: 3 1 2" --response "1 2 3" --response "2 1 3"
  jaxlm eval --workdir runs/x --task shakespeare_ppl [--config.a.b=value ...]
  jaxlm sweep --config configs/sweeps/isoflop_tiny.py --workdir runs/sweep [--print-commands]
  jaxlm sweep --fit runs/sweep/results.csv
  jaxlm convert --from-hf path/to/hf_model --workdir runs/hf [--dtype bf16] [--adapter DIR]
  jaxlm convert --to-hf runs/hf_sft --out exported/ [--dtype bf16] [--merge-lora]
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Sequence

CONFIG_PREFIX = "--config."
RL_OBJECTIVES = ("ppo", "grpo")
SAMPLES_FROM = ("clm", "prefix_lm", "sft", "dpo", "kto", "distill", "span", "seq2seq",
                *RL_OBJECTIVES)


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Separates `--config.key=value` / `--config.key value` overrides from other arguments."""
  rest, overrides, i = [], [], 0
  argv = list(argv)
  while i < len(argv):
    arg = argv[i]
    if arg.startswith(CONFIG_PREFIX):
      body = arg[len(CONFIG_PREFIX):]
      if "=" not in body:
        if i + 1 >= len(argv):
          raise SystemExit(f"error: {arg} needs a value")
        body, i = f"{body}={argv[i + 1]}", i + 1
      overrides.append(body)
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def cmd_train(args: argparse.Namespace, overrides: list[str]) -> int:
  """Trains or resumes a run."""
  from jaxlm import config
  from jaxlm.train import loop
  cfg = config.load(args.config, overrides)
  if cfg.objective in RL_OBJECTIVES:  # RL runs have their own loop (rollouts + updates)
    from jaxlm.rl import trainer
    result = trainer.train(cfg, args.workdir)
  else:
    result = loop.train(cfg, args.workdir)
  for i, text in enumerate(result.get("samples", [])):
    print(f"--- sample {i} ---\n{text}")
  summary = {k: v for k, v in result.items() if k != "samples"}
  print("final:", ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in summary.items()))
  return 130 if "stopped_by" in result else 0


def cmd_sample(args: argparse.Namespace, overrides: list[str]) -> int:
  """Samples text from the newest checkpoint of a workdir."""
  import jax
  from jaxlm import sampling
  from jaxlm.rl.trainer import load_run
  from jaxlm.train.sharding import rows_sharding_of
  if overrides:
    raise SystemExit("error: sample takes no --config overrides")
  cfg, tokenizer, graphdef, params = load_run(args.workdir)
  rows_sharding = rows_sharding_of(params)  # the samples are split over the run's devices
  if cfg.objective not in SAMPLES_FROM:
    raise ValueError(f"{args.workdir} trained a {cfg.model.style} model for {cfg.objective!r}; "
                     f"jaxlm sample generates with language-model runs ({', '.join(SAMPLES_FROM)})")
  default_temperature = 0.0 if args.num_beams > 1 else 0.8
  scfg = sampling.SamplingConfig(
      temperature=default_temperature if args.temperature is None else args.temperature,
      top_k=args.top_k, top_p=args.top_p, min_p=args.min_p, max_new_tokens=args.max_new_tokens,
      prefix_lm=cfg.objective == "prefix_lm", num_beams=args.num_beams,
      length_penalty=args.length_penalty)
  if cfg.objective in ("span", "seq2seq"):  # T5: the prompt is the encoder's input (spans to
    # fill marked with <extra_id_k>), the sample what the decoder writes
    from jaxlm.data.sentinels import Markup
    texts = sampling.infill_text(graphdef, params, Markup(tokenizer),
                                 [args.prompt] * args.num_samples, scfg, jax.random.key(args.seed),
                                 rows_sharding)
    for i, text in enumerate(texts):
      print(f"--- sample {i} ---\n{text}")
    return 0
  if args.chat:  # the run's chat template: the prompt is a user turn, the reply ends at <end>
    from jaxlm.data import chat
    template = chat.from_config(cfg.chat)
    ids = [template.prompt_ids([{"role": "user", "content": args.prompt}], tokenizer)]
    eos_id = template.stop_id(tokenizer)
  else:
    ids, eos_id = sampling.prompt_ids(tokenizer, [args.prompt]), tokenizer.contract.eos_id
  common = dict(eos_id=eos_id, pad_id=tokenizer.contract.pad_id)
  if args.draft:  # speculative decoding: the draft run proposes, this run decides
    from jaxlm import speculative
    draft_graphdef, draft_params = load_run(args.draft)[2:]
    out, counts = speculative.generate(graphdef, params, draft_graphdef, draft_params,
                                       ids * args.num_samples, scfg, jax.random.key(args.seed),
                                       gamma=args.gamma, **common)
    print(f"draft tokens accepted: {counts['accepted']} of {counts['proposed']} "
          f"({counts['acceptance']:.1%}), {counts['tokens_per_target_pass']:.2f} tokens per "
          "target pass", file=sys.stderr)
  else:
    out = sampling.generate(graphdef, params, ids * args.num_samples, scfg,
                            jax.random.key(args.seed), batch_sharding=rows_sharding, **common)
  texts = ([template.response_text(o, tokenizer) for o in out] if args.chat
           else [tokenizer.decode(o) for o in out])
  for i, text in enumerate(texts):
    print(f"--- sample {i} ---\n{'' if args.chat else args.prompt}{text}")
  return 0


def cmd_score(args: argparse.Namespace, overrides: list[str]) -> int:
  """Scores responses to a prompt with a trained reward model."""
  from jaxlm.eval.reward_scores import score_texts
  if overrides:
    raise SystemExit("error: score takes no --config overrides")
  scores = score_texts(args.workdir, [args.prompt] * len(args.response), args.response)
  for response, value in zip(args.response, scores):
    print(f"{value:+.4f}\t{response}")
  return 0


def cmd_eval(args: argparse.Namespace, overrides: list[str]) -> int:
  """Runs an evaluation task on a trained run; writes W/eval/<task>.json, prints a table."""
  from jaxlm.eval import runner, task_config
  result = runner.run(args.workdir, task_config.load(args.task, overrides))
  print(runner.format_table(result))
  print(f"wrote {result['path']}")
  return 0


def cmd_convert(args: argparse.Namespace, overrides: list[str]) -> int:
  """Imports an HF checkpoint into a jaxlm workdir, or exports a workdir as an HF model."""
  from jaxlm.interop import workdir as convert
  if overrides:
    raise SystemExit("error: convert takes no --config overrides")
  if bool(args.from_hf) == bool(args.to_hf):
    raise SystemExit("error: convert needs exactly one of --from-hf DIR or --to-hf WORKDIR")
  other_way = ({"--tokenizer": args.tokenizer, "--scan-layers": args.scan_layers,
                "--adapter": args.adapter} if args.to_hf
               else {"--merge-lora": args.merge_lora})
  for flag, given in other_way.items():
    if given:
      raise ValueError(f"{flag} is for {'--from-hf' if args.to_hf else '--to-hf'} only")
  if args.from_hf:
    if not args.workdir:
      raise SystemExit("error: --from-hf needs --workdir OUT")
    info = convert.import_hf(args.from_hf, args.workdir, dtype=args.dtype or "auto",
                             tokenizer=args.tokenizer, scan_layers=args.scan_layers,
                             adapter=args.adapter)
    print(f"imported a {info['style']} model ({info['tensors']} tensors, vocabulary "
          f"{info['hf_vocab_size']} -> {info['vocab_size']}) into {args.workdir}"
          + (f", with the LoRA adapter {info['adapter']}" if info["adapter"] else ""))
    if info["unused"]:
      print(f"not used: {', '.join(info['unused'])}")
    print(f"chat.format={info['chat_format']}: {info['chat_reason']}")
    print(f"texts open with BOS: {'yes' if info['opens_with_bos'] else 'no'} (the tokenizer's "
          "own setting; documents, prompts and perplexity follow it)")
    flags = " ".join(shlex.quote(f"--config.{k}={v}") for k, v in info["overrides"].items())
    print(f"fine-tune with: jaxlm train --config CONFIG --workdir NEW --config.init_from="
          f"{args.workdir} --config.data.tokenizer.num_sentinels={info['num_sentinels']} {flags}")
  else:
    if not args.out:
      raise SystemExit("error: --to-hf needs --out DIR")
    info = convert.export_hf(args.to_hf, args.out, dtype=args.dtype or "float32",
                             merge_lora=args.merge_lora)
    print(f"wrote {info['out']}" + (f" and the LoRA adapter {info['adapter']}"
                                     if info["adapter"] else ""))
  return 0


def cmd_sweep(args: argparse.Namespace, overrides: list[str]) -> int:
  """Runs a scaling sweep (or prints its train commands), and/or fits a results table.
  `--config.run.KEY=V` overrides every run's train config, `--config.KEY=V` the sweep's."""
  from jaxlm.scaling import command
  return command.run(args, overrides)


def parser() -> argparse.ArgumentParser:
  """The argument parser with its subcommands."""
  p = argparse.ArgumentParser(prog="jaxlm", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="command", required=True)
  t = sub.add_parser("train", help="train or resume a run")
  t.add_argument("--config", required=True, help="configs/NAME.py[:preset]")
  t.add_argument("--workdir", required=True, help="run folder: checkpoints, logs, tokenizer")
  t.set_defaults(fn=cmd_train)
  s = sub.add_parser("sample", help="generate text from a trained run")
  s.add_argument("--workdir", required=True)
  s.add_argument("--prompt", default="")
  s.add_argument("--num_samples", type=int, default=1)
  s.add_argument("--max_new_tokens", type=int, default=200)
  s.add_argument("--temperature", type=float, default=None, help="default 0.8 (sampling)")
  s.add_argument("--top_k", type=int, default=0)
  s.add_argument("--top_p", type=float, default=1.0)
  s.add_argument("--min_p", type=float, default=0.0,
                 help="drop tokens below min_p x the likeliest one's probability")
  s.add_argument("--num_beams", type=int, default=1, help="> 1: beam search")
  s.add_argument("--length_penalty", type=float, default=1.0,
                 help="beam scores: sum log p / new_tokens ** length_penalty")
  s.add_argument("--draft", help="a smaller run of the same tokenizer: speculative decoding")
  s.add_argument("--gamma", type=int, default=4, help="tokens the draft proposes per round")
  s.add_argument("--seed", type=int, default=0)
  s.add_argument("--chat", action="store_true", help="prompt as a user turn of the chat template")
  s.set_defaults(fn=cmd_sample)
  r = sub.add_parser("score", help="score responses with a trained reward model")
  r.add_argument("--workdir", required=True)
  r.add_argument("--prompt", required=True)
  r.add_argument("--response", required=True, action="append", help="repeatable")
  r.set_defaults(fn=cmd_score)
  e = sub.add_parser("eval", help="evaluate a trained run on a task (configs/eval/)")
  e.add_argument("--workdir", required=True)
  e.add_argument("--task", required=True, help="configs/eval/NAME.py[:preset] or NAME[:preset]")
  e.set_defaults(fn=cmd_eval)
  c = sub.add_parser("convert", help="Hugging Face checkpoints to / from jaxlm workdirs")
  c.add_argument("--from-hf", dest="from_hf", help="HF folder (config.json + safetensors)")
  c.add_argument("--workdir", help="new jaxlm workdir to create (with --from-hf)")
  c.add_argument("--to-hf", dest="to_hf", help="jaxlm workdir to export")
  c.add_argument("--out", help="HF folder to write (with --to-hf)")
  c.add_argument("--dtype", help="export: float32|bfloat16 tensors; import: model.dtype")
  c.add_argument("--tokenizer", help="import: tokenizer file if the HF folder has none")
  c.add_argument("--merge-lora", dest="merge_lora", action="store_true",
                 help="export: fold a LoRA adapter into the weights instead of a PEFT adapter")
  c.add_argument("--adapter", help="import: a PEFT LoRA adapter folder of the HF model, "
                 "imported as the run's LoRA")
  c.add_argument("--scan-layers", dest="scan_layers", action="store_true",
                 help="import: store the blocks stacked, run by lax.scan (model.scan_layers)")
  c.set_defaults(fn=cmd_convert)
  w = sub.add_parser("sweep", help="scaling-law sweeps (grid / IsoFLOP) and their fits")
  w.add_argument("--config", help="configs/sweeps/NAME.py[:arg]")
  w.add_argument("--workdir", help="sweep folder (default runs/sweeps/NAME)")
  w.add_argument("--print-commands", dest="print_commands", action="store_true",
                 help="print one `jaxlm train` command per run instead of running")
  w.add_argument("--limit", type=int, help="train at most this many unfinished runs")
  w.add_argument("--fit", metavar="TABLE", help="fit a results table (.csv / .jsonl)")
  w.add_argument("--loss", default="final_eval_loss", help="table column the fits use")
  w.add_argument("--bootstrap", type=int, default=200, help="approach-3 bootstrap resamples")
  w.add_argument("--plots", help="folder for the plots (default: beside the table)")
  w.set_defaults(fn=cmd_sweep)
  return p


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point of the `jaxlm` command; user errors print one clear line, no traceback."""
  rest, overrides = split_overrides(sys.argv[1:] if argv is None else argv)
  args = parser().parse_args(rest)
  try:
    return args.fn(args, overrides)
  except (ValueError, KeyError, TypeError, FileNotFoundError, RuntimeError) as e:
    if isinstance(e, (TypeError, RuntimeError)) and not _is_user_error(e):
      raise
    print(f"jaxlm {args.command}: error: {e}", file=sys.stderr)
    return 2


def _is_user_error(e: Exception) -> bool:
  from jaxlm.train.checkpoint import CheckpointError
  from jaxlm.train.loop import NonFiniteLossError
  return isinstance(e, (CheckpointError, NonFiniteLossError)) or "config key" in str(e)


if __name__ == "__main__":
  sys.exit(main())
