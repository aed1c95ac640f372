"""Text generation: sampling with a KV cache, and ``python -m fastgpt.generate``.

``python -m fastgpt.generate --checkpoint DIR --prompt "ROMEO:" [--max_new_tokens N]
[--temperature T] [--top_k K] [--top_p P] [--greedy] [--num_samples N] [--seed S] [--no_cache]``
streams each sample to stdout.

``--chat`` renders the prompt as a user message through the checkpoint's chat template
(``fastgpt.data.chat_template``) and prints only the reply. ``--prompt_file FILE`` (one prompt a line,
blank lines skipped) writes a ``{"prompt", "response"}`` JSON line per prompt, in order, to ``--output
OUT.jsonl`` (else stdout); prompts of the same length in tokens are generated together, up to
``--batch_size`` at a time.

``--chat`` without ``--prompt``, ``--prompt_file`` or ``--output`` is a multi-turn chat (``chat``): a
message a line from stdin (after a ``>>>`` prompt on a terminal), each reply streamed to stdout. The
conversation is rendered whole each turn, and the model sees at most ``block_size`` tokens: a reply may
take ``min(--max_new_tokens, block_size // 2)`` of them (what is left, when the message alone is longer),
and the oldest turns (a message and its reply) are dropped to make that room, with a note on stderr.
``/reset`` clears the history; ``/exit`` or the end of the input (Ctrl-D) ends the chat with exit code 0;
Ctrl-C stops the reply being generated (what it said so far stays in the history) and, at the prompt,
discards the line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from fastgpt.data.chat_template import ChatTemplate
from fastgpt.device import resolve_device
from fastgpt.messages import ArgumentParser, cut, cut_path
from fastgpt.model import GPT
from fastgpt.output import check_output, write_output


@torch.no_grad()
def generate(
    model: GPT,
    prompt: list[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    eot_id: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` token ids continuing ``prompt``; stops after ``eot_id``.

    One sequence of ``GPT.stream`` (its context, cache and sampling); the model's mode is left as it is.
    """
    if not prompt:
        raise ValueError("the prompt encodes to no tokens; give at least one character")
    idx = torch.tensor([prompt], device=model.wte.weight.device)
    for nxt in model.stream(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                            greedy=greedy, use_cache=use_cache, generator=generator):
        token = nxt.item()
        yield token
        if eot_id is not None and token == eot_id:
            return


@torch.no_grad()
def generate_batch(
    model: GPT,
    prompts: list[list[int]],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    stop_ids: set[int] = frozenset(),
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Continue prompts of one length together: a (B, L) forward for the prompts, then (B, 1) steps.

    Each continuation (up to ``max_new_tokens`` ids) ends after its first id in ``stop_ids``; the batch
    stops when all have. ``GPT.stream`` runs the steps, as for ``generate``, so greedy continuations are
    the same tokens as ``generate``'s (and as a batch of one).
    """
    if not prompts or len({len(p) for p in prompts}) != 1 or not prompts[0]:
        raise ValueError("generate_batch needs prompts of one length, at least one token each")
    out: list[list[int]] = [[] for _ in prompts]
    running = list(range(len(prompts)))
    idx = torch.tensor(prompts, device=model.wte.weight.device)  # (B, L)
    for nxt in model.stream(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                            greedy=greedy, generator=generator):
        ids = nxt[:, 0].tolist()
        for b in running:
            out[b].append(ids[b])
        running = [b for b in running if ids[b] not in stop_ids]
        if not running:
            break
    return out


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m fastgpt.generate", description="Sample text from a checkpoint.")
    p.add_argument("--checkpoint", required=True, help="a run's out_dir or a ckpt-* folder")
    p.add_argument("--prompt", default=None, help="text to continue (default: a newline)")
    p.add_argument("--chat", action="store_true",
                   help="the prompt is a user message rendered by the chat template; print only the reply. "
                        "Without --prompt, --prompt_file or --output: a multi-turn chat on stdin (/reset, /exit)")
    p.add_argument("--prompt_file", help="a text file of prompts, one a line: a JSON line per prompt out")
    p.add_argument("--output", help="write the {prompt, response} JSON lines to this file (default: stdout)")
    p.add_argument("--batch_size", type=int, default=16, help="--prompt_file: prompts generated together")
    p.add_argument("--max_new_tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top_k", type=int, default=200)
    p.add_argument("--top_p", type=float, default=None)
    p.add_argument("--greedy", action="store_true", help="always take the most likely token")
    p.add_argument("--num_samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps | xpu")
    p.add_argument("--no_cache", action="store_true", help="recompute the whole context every step")
    p.add_argument("--allow_pickle", action="store_true",
                   help="also read a checkpoint of DCP shards only (train.parallel=fsdp), whose pickled metadata "
                        "can run code: only for runs of your own")
    return p


def stream_text(tokenizer, ids: Iterator[int], out=None, stop_ids: set[int] | None = None,
                generated: list[int] | None = None) -> list[int]:
    """Write the decoded tokens to ``out`` (default stdout) as ``ids`` arrive, up to a stop id (default the
    eot; not written); return them. ``generated``: the list they are appended to, which holds those that
    came before an exception (Ctrl-C) too."""
    out = sys.stdout if out is None else out
    stop_ids = {tokenizer.eot_id} if stop_ids is None else stop_ids
    generated = [] if generated is None else generated
    shown = ""
    for tok in ids:
        if tok in stop_ids:
            break
        generated.append(tok)
        text = tokenizer.decode(generated)
        if text.endswith("\ufffd"):  # a multi-byte character is still incomplete
            continue
        out.write(text[len(shown):])
        out.flush()
        shown = text
    out.write(tokenizer.decode(generated)[len(shown):])
    return generated


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.max_new_tokens < 0 or args.num_samples < 1 or not 0 <= args.temperature < math.inf:
        raise ValueError(f"--max_new_tokens must be >= 0, --num_samples >= 1 and --temperature a finite number "
                         f">= 0 (got {args.max_new_tokens}, {args.num_samples}, {args.temperature})")
    if args.top_k is not None and args.top_k < 1 or args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError(f"--top_k must be >= 1 and --top_p in (0, 1] (got {args.top_k}, {args.top_p})")
    from fastgpt.checkpoint import load

    prompts = _prompts(args)  # before the model loads: a missing file is a quick error
    device = resolve_device(args.device, "--device")
    model, tokenizer = load(args.checkpoint, device=device, allow_pickle=args.allow_pickle)
    if args.chat and args.prompt is None and args.prompt_file is None and args.output is None:
        return chat(model, tokenizer, args, device)
    if args.chat or args.prompt_file or args.output:
        return _replies(args, prompts, model, tokenizer, device)
    prompt_ids = tokenizer.encode(prompts[0])
    generator = torch.Generator(device=device).manual_seed(args.seed)
    for i in range(args.num_samples):
        if args.num_samples > 1:
            print(f"--- sample {i + 1} ---")
        sys.stdout.write(prompts[0])
        ids = generate(model, prompt_ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                       top_p=args.top_p, greedy=args.greedy, eot_id=tokenizer.eot_id,
                       use_cache=not args.no_cache, generator=generator)
        stream_text(tokenizer, ids)
        print()
    return 0


def _prompts(args: argparse.Namespace) -> list[str]:
    """The prompts asked for; ValueError/FileNotFoundError for a missing or empty file, or an --output that
    cannot be written."""
    if args.prompt_file is not None and args.prompt is not None:
        raise ValueError("give --prompt TEXT or --prompt_file FILE, not both")
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.output is not None:
        check_output(args.output)  # a folder, a missing folder, /proc/x: said now, not after the work
    if (args.prompt_file or args.output) and args.num_samples != 1:
        raise ValueError("--num_samples applies to --prompt printed to stdout; --prompt_file and --output give "
                         "one response per prompt")
    if args.chat and args.prompt is None and args.prompt_file is None and args.num_samples != 1:
        raise ValueError("--num_samples applies to --prompt; the chat (--chat without --prompt) gives one reply "
                         "a turn")
    if args.prompt_file is None:
        return [args.prompt if args.prompt is not None else "\n"]
    file = Path(args.prompt_file).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"--prompt_file {args.prompt_file!r} does not exist or is not a file")
    try:
        prompts = [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise ValueError(f"--prompt_file {args.prompt_file!r} is not UTF-8 text") from None
    if not prompts:
        raise ValueError(f"--prompt_file {args.prompt_file!r} has no prompts (every line is blank)")
    return prompts


def _replies(args: argparse.Namespace, prompts: list[str], model: GPT, tokenizer, device: torch.device) -> int:
    """--chat and --prompt_file: each prompt's response, printed alone or as {prompt, response} JSON lines."""
    template = ChatTemplate(tokenizer)
    stop_ids = template.stop_ids if args.chat else {tokenizer.eot_id}
    encoded = []
    for i, text in enumerate(prompts):
        try:
            ids = template.prompt([{"role": "user", "content": text}]) if args.chat else tokenizer.encode(text)
        except ValueError as exc:
            where = f"--prompt_file {args.prompt_file!r} prompt {i + 1}" if args.prompt_file else "--prompt"
            raise ValueError(f"{where}: {exc}") from None
        if not ids:
            raise ValueError(f"prompt {i + 1} encodes to no tokens; give at least one character")
        encoded.append(ids)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    options = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, greedy=args.greedy,
                   stop_ids=stop_ids, generator=generator)
    if args.prompt_file is None and args.output is None:  # --chat --prompt TEXT: the replies alone
        for n in range(args.num_samples):
            if args.num_samples > 1:
                print(f"--- sample {n + 1} ---")
            ids = generate_batch(model, encoded, args.max_new_tokens, **options)[0]
            print(tokenizer.decode(ids[:-1] if ids and ids[-1] in stop_ids else ids))
        return 0
    replies: list[str] = [""] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    for group in by_length.values():
        for start in range(0, len(group), args.batch_size):
            batch = group[start : start + args.batch_size]
            outs = generate_batch(model, [encoded[i] for i in batch], args.max_new_tokens, **options)
            for i, ids in zip(batch, outs, strict=True):
                replies[i] = tokenizer.decode(ids[:-1] if ids and ids[-1] in stop_ids else ids)
    lines = "".join(json.dumps({"prompt": p, "response": r}, ensure_ascii=False) + "\n"
                    for p, r in zip(prompts, replies, strict=True))
    if args.output is None:
        sys.stdout.write(lines)
    else:
        write_output(args.output, lines)  # atomic: a full disk leaves no half file
    return 0


class Conversation:
    """The turns of a chat (a user message and its reply), kept within the model's context window.

    ``prompt(message)`` renders the kept turns and the new message with the chat template, the oldest
    turns dropped until ``reply_tokens`` of the ``block_size`` window are left for the reply.
    """

    def __init__(self, template: ChatTemplate, block_size: int, reply_tokens: int) -> None:
        self.template, self.block_size, self.reply_tokens = template, block_size, reply_tokens
        self.turns: list[tuple[str, str]] = []

    def messages(self, message: str) -> list[dict[str, str]]:
        """The kept turns and ``message`` as chat messages."""
        out = []
        for user, reply in self.turns:
            out += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        return [*out, {"role": "user", "content": message}]

    def prompt(self, message: str) -> tuple[list[int], int]:
        """The token ids the reply to ``message`` continues, and how many of the oldest turns were dropped
        for them to fit. ValueError (the history untouched) when the message does not encode, or alone
        leaves no room for a reply."""
        alone = len(self.template.prompt(self.messages(message)[-1:]))
        if alone >= self.block_size:
            raise ValueError(f"this message is {alone} tokens with the chat template, and the model reads "
                             f"{self.block_size} at most (its block_size): say it in fewer words")
        dropped = 0
        while True:
            ids = self.template.prompt(self.messages(message))
            if len(ids) + self.reply_tokens <= self.block_size or not self.turns:
                return ids, dropped
            self.turns.pop(0)
            dropped += 1

    def add(self, message: str, reply: str) -> None:
        self.turns.append((message, reply))


def chat(model: GPT, tokenizer, args: argparse.Namespace, device: torch.device) -> int:
    """The multi-turn chat of ``--chat`` without a prompt (the module docstring): read a message a line from
    stdin until ``/exit`` or its end, stream each reply to stdout; notes go to stderr. Returns 0."""
    template = ChatTemplate(tokenizer)
    try:  # a tokenizer that cannot encode the template's own text is said now, not at every message
        template.prompt([{"role": "user", "content": ""}])
    except ValueError as exc:
        raise ValueError(f"--chat: this checkpoint's chat template does not encode: {exc}") from None
    block = model.config.block_size
    conversation = Conversation(template, block, min(args.max_new_tokens, block // 2))
    generator = torch.Generator(device=device).manual_seed(args.seed)
    options = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, greedy=args.greedy,
                   use_cache=not args.no_cache, generator=generator)
    terminal = sys.stdin.isatty() and sys.stdout.isatty()
    if terminal:
        with contextlib.suppress(ImportError):  # line editing and history for input()
            import readline  # noqa: F401
    _note(f"chat with {cut_path(args.checkpoint)} (a {block}-token context): a message a line; /reset clears "
          "the history, /exit or Ctrl-D ends")
    while True:
        try:
            line = _read_line(terminal)
        except KeyboardInterrupt:  # at the prompt: the line is dropped, the chat goes on
            print()
            _note("(Ctrl-D or /exit ends the chat)")
            continue
        if line is None or line.strip() == "/exit":
            if terminal and line is None:
                print()
            return 0
        message = line.strip()
        if not message:
            continue
        if message == "/reset":
            conversation.turns.clear()
            _note("(history cleared)")
            continue
        if message.startswith("/") and " " not in message:
            _note(f"(unknown command {cut(message)}: /reset clears the history, /exit ends the chat)")
            continue
        try:
            ids, dropped = conversation.prompt(message)
        except ValueError as exc:
            _note(f"(not sent: {exc})")
            continue
        if dropped:
            _note(f"(dropped the oldest {dropped} turn{'s' if dropped > 1 else ''} of the history: the model reads "
                  f"{block} tokens at most; {len(conversation.turns)} kept)")
        conversation.add(message, _reply(model, tokenizer, template, ids, min(args.max_new_tokens, block - len(ids)),
                                         options))


def _reply(model: GPT, tokenizer, template: ChatTemplate, ids: list[int], budget: int, options: dict) -> str:
    """Stream the reply continuing ``ids`` (up to ``budget`` tokens or a stop id) to stdout and return its
    text; Ctrl-C stops it there."""
    generated: list[int] = []
    tokens = generate(model, ids, budget, **options)
    try:
        stream_text(tokenizer, tokens, stop_ids=template.stop_ids, generated=generated)
        stopped = False
    except KeyboardInterrupt:
        stopped = True
    finally:
        tokens.close()
    print(flush=True)
    if stopped:
        _note("(reply stopped)")
    return tokenizer.decode(generated)


def _read_line(terminal: bool) -> str | None:
    """The next line of stdin, after a prompt on a terminal; None at its end."""
    if terminal:
        try:
            return input(">>> ")
        except EOFError:
            return None
    line = sys.stdin.readline()
    return line if line else None


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    from fastgpt.__main__ import run

    run(main)
