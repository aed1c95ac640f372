"""``python -m fastgpt export --checkpoint DIR --out PATH``: a checkpoint as a Hugging Face model folder.

Writes config.json and model.safetensors (``GPT2LMHeadModel`` or ``LlamaForCausalLM``, see
``fastgpt.hf.convert``) and, where the tokenizer has a HF equivalent (tiktoken encodings, HF
``tokenizers``), tokenizer.json and tokenizer_config.json, so that
``AutoModelForCausalLM.from_pretrained(PATH)`` and ``AutoTokenizer.from_pretrained(PATH)`` load it.
Char and byte tokenizers are skipped with a note.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fastgpt.messages import ArgumentParser


def main(argv: list[str] | None = None) -> int:
    from fastgpt.checkpoint import load
    from fastgpt.hf.convert import hf_architecture

    p = ArgumentParser(prog="python -m fastgpt export",
                       description="Write a checkpoint as a Hugging Face model folder.")
    p.add_argument("--checkpoint", required=True, help="a run's out_dir (its best checkpoint) or a ckpt-* folder")
    p.add_argument("--out", required=True, help="the folder to write")
    p.add_argument("--allow_pickle", action="store_true",
                   help="also read a checkpoint of DCP shards only (train.parallel=fsdp), whose pickled metadata "
                        "can run code: only for runs of your own")
    args = p.parse_args(argv)
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out!r} is a file; name a folder to write the Hugging Face model into")
    model, tokenizer = load(args.checkpoint, allow_pickle=args.allow_pickle)
    arch = hf_architecture(model.config)  # refuses what HF cannot express, before writing anything
    files = model.to_hf(args.out, tokenizer)
    print(f"wrote a {arch} to {args.out}: {', '.join(files)}")
    if not any(f.startswith("tokenizer") for f in files):
        print(f"note: the {tokenizer.name} tokenizer has no Hugging Face equivalent; no tokenizer files written",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    from fastgpt.__main__ import run

    run(main)
