"""fastgpt checkpoints as an lm-evaluation-harness model: ``--model fastgpt``.

``python -m fastgpt lm_eval --model_args checkpoint=DIR[,device=cuda,batch_size=32,dtype=bfloat16]
--tasks hellaswag,arc_easy [any other lm_eval option]`` imports this module (which registers the
model) and runs lm_eval's command line; ``--model fastgpt`` is added when missing. Needs
``pip install 'fastgpt[eval]'`` (lm-eval >= 0.4). lm_eval versions with plugin discovery also find
the model through fastgpt's ``lm_eval.models`` entry point, so plain ``lm_eval --model fastgpt``
works there too.

``loglikelihood`` scores like ``fastgpt.eval.mcq`` (the same tokenization, cropping and batching);
``loglikelihood_rolling`` cuts a text into windows of ``block_size`` predictions, each token
predicted once with as much context as fits; ``generate_until`` samples greedily (or with the
request's temperature when ``do_sample`` is set) until a stop string, end of text or
``max_gen_toks`` tokens.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

import torch

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as exc:
    _MISSING = "fastgpt.eval.lm_eval_adapter needs lm-evaluation-harness: pip install 'fastgpt[eval]'"
    if __name__ == "__main__":
        print(f"error: {_MISSING}", file=sys.stderr)
        sys.exit(2)
    raise ModuleNotFoundError(_MISSING, name=exc.name) from exc

from fastgpt.checkpoint import load
from fastgpt.data.sources import hub_unreachable
from fastgpt.device import resolve_device
from fastgpt.eval.mcq import encode_pair, score_tokens
from fastgpt.generate import generate
from fastgpt.messages import cut
from fastgpt.tokenizers import EOT_TEXT

DEFAULT_BATCH_SIZE = 16


@register_model("fastgpt")
class FastGPTLM(LM):
    """A fastgpt checkpoint behind lm_eval's ``LM`` interface (one process, one device)."""

    def __init__(
        self,
        checkpoint: str,
        device: str | None = "auto",
        batch_size: int | str | None = DEFAULT_BATCH_SIZE,
        max_batch_size: int | None = None,
        dtype: str = "float32",
        max_gen_toks: int = 256,
        allow_pickle: bool | str = False,
    ) -> None:
        super().__init__()
        device = resolve_device("auto" if device is None else device, "device")
        # lm_eval passes batch_size as given on its command line: a number, or "auto" (not supported: default)
        size = str(batch_size) if batch_size is not None else ""
        self.batch_size = int(size) if size.isdigit() else min(DEFAULT_BATCH_SIZE, max_batch_size or DEFAULT_BATCH_SIZE)
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype={dtype!r} is not one of float32, bfloat16, float16")
        # lm_eval passes --model_args values as strings: only an explicit true reads pickled DCP metadata
        trusted = allow_pickle is True or str(allow_pickle).lower() == "true"
        self.model, self.tokenizer = load(checkpoint, device=device, allow_pickle=trusted)
        self._device = device
        self.dtype = getattr(torch, dtype)
        self.max_gen_toks = int(max_gen_toks)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> FastGPTLM:
        """The model of ``--model_args``; they win over lm_eval's --batch_size and --device, which
        lm_eval always passes (batch size 1 by default)."""
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None) -> FastGPTLM:
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**{**extra, **arg_dict})

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self._device.type, dtype=self.dtype)

    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        """(log p(continuation | context), is_greedy) for each request's ``args = (context, continuation)``."""
        pairs = [encode_pair(self.tokenizer, *req.args) for req in requests]
        with self._autocast():
            results = score_tokens(self.model, pairs, self.batch_size, progress=True, desc="loglikelihood")
        for req, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", req.args, result)
        return results

    def loglikelihood_rolling(self, requests: list[Any]) -> list[float]:
        """log p(text) for each request's ``args = (text,)``, conditioned on the end-of-text token."""
        block = self.model.config.block_size
        windows, owner = [], []
        for n, req in enumerate(requests):
            tokens = [self.tokenizer.eot_id, *self.tokenizer.encode(req.args[0])]
            # predictions [start, end) of tokens[1:], with up to `block` tokens of input before each
            for start in range(0, len(tokens) - 1, block):
                end = min(start + block, len(tokens) - 1)
                first = max(0, end - block)
                windows.append((tokens[first : start + 1], tokens[start + 1 : end + 1]))
                owner.append(n)
        with self._autocast():
            scores = score_tokens(self.model, windows, self.batch_size, progress=True, desc="loglikelihood_rolling")
        totals = [0.0] * len(requests)
        for n, (logprob, _) in zip(owner, scores):
            totals[n] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests: list[Any]) -> list[str]:
        """Text continuing each request's context until one of ``gen_kwargs["until"]`` (cut off)."""
        outputs = []
        for req in requests:
            context, gen_kwargs = req.args
            outputs.append(self._generate(context, dict(gen_kwargs)))
            self.cache_hook.add_partial("generate_until", req.args, outputs[-1])
        return outputs

    def _generate(self, context: str, gen_kwargs: dict[str, Any]) -> str:
        until = gen_kwargs.pop("until", None) or [EOT_TEXT]
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks))
        temperature = float(gen_kwargs.pop("temperature", 0.0))
        greedy = not gen_kwargs.pop("do_sample", False) or temperature == 0
        prompt = self.tokenizer.encode(context) or [self.tokenizer.eot_id]
        ids: list[int] = []
        text = ""
        with self._autocast():
            for token in generate(self.model, prompt, max_new, temperature=temperature or 1.0, greedy=greedy,
                                  top_k=gen_kwargs.get("top_k"), top_p=gen_kwargs.get("top_p"),
                                  eot_id=self.tokenizer.eot_id):
                if token == self.tokenizer.eot_id:
                    break
                ids.append(token)
                text = self.tokenizer.decode(ids)
                if any(stop in text for stop in until):
                    break
        cut = min((text.index(stop) for stop in until if stop in text), default=len(text))
        return text[:cut]


def main(argv: list[str] | None = None) -> int:
    """lm_eval's command line with the ``fastgpt`` model registered (and chosen when --model is absent).

    Without network (no connection to the hub within a few seconds) the hub clients are put offline
    before any task loads, so a dataset in their cache is still read and a missing one fails at once,
    not after half a minute of retries; a task whose dataset cannot be downloaded is a ValueError."""
    from lm_eval.__main__ import cli_evaluate

    args = list(sys.argv[1:] if argv is None else argv)
    command = args[:1] if args[:1] in (["run"], ["ls"], ["validate"]) else []
    rest = args[len(command):]
    if command in ([], ["run"]) and not any(a == "--model" or a.startswith("--model=") for a in rest):
        rest = ["--model", "fastgpt", *rest]
    tasks = _option(rest, "--tasks")
    unreachable = None if tasks is None or _offline() else hub_unreachable()
    if unreachable:  # read when datasets and huggingface_hub are imported, which has not happened yet
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    sys.argv = ["lm_eval", *command, *rest]
    try:
        cli_evaluate()
    except (ConnectionError, TimeoutError) as exc:  # datasets' "Couldn't reach 'Rowan/hellaswag' on the Hub"
        raise ValueError(_not_downloaded(tasks or "", exc, unreachable)) from None
    return 0


def _option(args: list[str], name: str) -> str | None:
    """The value of ``name VALUE`` or ``name=VALUE`` in ``args``."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.partition("=")[2]
    return None


def _offline() -> bool:
    """The user asked the hub clients for their local cache only."""
    return any(os.environ.get(var, "").upper() in ("1", "ON", "YES", "TRUE")
               for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _not_downloaded(tasks: str, exc: BaseException, unreachable: str | None) -> str:
    """The error line for a task dataset the hub clients could not fetch, with the ways to a local copy."""
    from fastgpt.eval.tasks import TASKS

    reason = cut(" ".join(str(exc).split()) or type(exc).__name__, 200, quote=False)
    network = f"; no network: {unreachable}" if unreachable else ""
    ours = [t.strip() for t in tasks.split(",") if t.strip() in TASKS]
    local = (f"; fastgpt's own eval reads local JSONL files: python -m fastgpt eval --checkpoint DIR --tasks "
             f"{','.join(ours)} --data {ours[0]}=FILE.jsonl" if ours else "")
    return (f"lm_eval --tasks {cut(tasks, 80, quote=False)}: a task's dataset could not be downloaded ({reason}"
            f"{network}); a copy downloaded before is read from the Hugging Face cache with HF_DATASETS_OFFLINE=1, "
            f"and lm_eval reads a task YAML naming local files with --include_path DIR{local}")


if __name__ == "__main__":
    from fastgpt.__main__ import run

    run(main)
