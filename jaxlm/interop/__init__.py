"""Hugging Face interop: GPT-2, OPT, Llama-family, GPT-NeoX, Phi,
BERT and T5 checkpoints to and from jaxlm.

`hf.load_hf` / `hf.save_hf` convert in memory; `workdir.import_hf` / `workdir.export_hf`
turn an HF folder into a normal jaxlm workdir and back (`jaxlm convert`); `hf_peft`
writes a LoRA adapter in the layout `peft.PeftModel.from_pretrained` loads.
"""
