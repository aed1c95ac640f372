"""Every configuration dataclass: ``GPTConfig`` (model), ``DataConfig``, ``TrainConfig``, ``OptimConfig``,
``EvalConfig``, ``LoggingConfig`` and ``Config`` (all six sections), each checking its values when built.

The valid values of every numeric field are in one table, ``RANGES`` (read by ``check_ranges``, which each
section runs first, and listed by ``--help``); ``__post_init__`` keeps the checks that relate several fields.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fastgpt.messages import cut, cut_path
from fastgpt.nn.lora import TARGETS as LORA_TARGETS
from fastgpt.nn.mlp import ACTIVATIONS, FFN_TYPES
from fastgpt.nn.norm import NORMS
from fastgpt.ops._backend import CHOICES as BACKENDS

POS_ENCODINGS = ("learned", "sincos", "rope", "none")
INITS = ("gpt2", "xavier", "kaiming", "none")
INIT_MODES = ("fan_in", "fan_out")
INIT_NONLINEARITIES = ("relu", "leaky_relu", "linear", "tanh", "sigmoid")

@dataclass
class GPTConfig:
    vocab_size: int = 50304  # GPT-2's 50257 rounded up to a multiple of 64
    block_size: int = 1024  # longest sequence (context length)
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None  # None = n_head; fewer = grouped-query (1 = multi-query)
    n_embd: int = 768
    ffn_dim: int | None = None  # feed-forward hidden size; None = 4 * n_embd
    ffn_type: str = "gelu_mlp"  # gelu_mlp | swiglu (gated; its activation is `activation`)
    activation: str = "gelu"  # gelu | gelu_tanh | relu | relu2 (squared) | leakyrelu | tanh | sigmoid | silu | none
    norm: str = "layer_norm"  # layer_norm | rms_norm | none
    norm_eps: float = 1e-5
    lm_head_norm: bool = True  # final norm before the language-model head
    pos_encoding: str = "learned"  # learned | sincos | rope | none
    rope_theta: float = 10000.0
    bias: bool = True  # biases in Linear layers and LayerNorms
    dropout: float = 0.0  # residual dropout after attention and feed-forward
    attn_dropout: float = 0.0  # dropout on attention probabilities (runs SDPA while training)
    embedding_dropout: float = 0.0
    lm_head_dropout: float = 0.0  # dropout on the final hidden state before the head
    causal: bool = True  # False = bidirectional attention
    tie_embeddings: bool = True  # lm_head shares the token embedding matrix
    tie_ffn_across_layers: bool = False  # every block uses one feed-forward module
    tie_attn_proj_across_layers: bool = False  # every block uses one set of attention projections
    init: str = "gpt2"  # gpt2 | xavier | kaiming | none (PyTorch's defaults)
    init_gain: float = 1.0  # scales the init's std (gpt2: 0.02 * gain) or gain (xavier)
    init_mode: str = "fan_in"  # kaiming: fan_in | fan_out
    init_nonlinearity: str = "relu"  # kaiming: relu | leaky_relu | linear | tanh | sigmoid
    attn_backend: str = "auto"  # auto | torch | triton | cuda
    norm_backend: str = "auto"  # auto | torch | triton | cuda
    qk_norm: bool = False  # RMSNorm on each head's q and k (learned weight of head_dim) before RoPE and attention
    zero_init_proj: bool = False  # the output projections (attention c_proj, feed-forward c_proj/down) start at 0
    logit_softcap: float | None = None  # logits -> c * tanh(logits / c) (Gemma-2, modded-nanogpt); None = off

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.ffn_dim is None:
            self.ffn_dim = 4 * self.n_embd
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field that is out of range (``RANGES``) or inconsistent."""
        check_ranges(self, "model")
        choices = {
            "ffn_type": FFN_TYPES, "activation": tuple(ACTIVATIONS), "norm": NORMS,
            "pos_encoding": POS_ENCODINGS, "init": INITS, "init_mode": INIT_MODES,
            "init_nonlinearity": INIT_NONLINEARITIES, "attn_backend": BACKENDS, "norm_backend": BACKENDS,
        }
        for name, allowed in choices.items():
            _choice(f"model.{name}", getattr(self, name), allowed)
        if self.n_embd % self.n_head:
            raise ValueError(f"model.n_embd={self.n_embd} must be divisible by model.n_head={self.n_head}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"model.n_head={self.n_head} must be divisible by model.n_kv_head={self.n_kv_head}")
        if self.pos_encoding == "rope" and self.head_dim % 2:
            raise ValueError(f"model.pos_encoding='rope' needs an even head dim; n_embd/n_head = {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


DATA_MODES = ("random", "epoch", "padded", "sft")  # how fastgpt.data.loader cuts batches
OBJECTIVES = ("next_token", "next_token_mlm")  # fastgpt.train.objectives


@dataclass
class DataConfig:
    """The ``data`` section of a run config: what to read, how to tokenize it, how to batch it."""

    dataset: str | list[str] = "shakespeare"  # a source (see fastgpt.data.sources), or a list to mix
    weights: list[float] | None = None  # token share of each source when mixing (normalised)
    text_column: str = "text"  # field holding the text in jsonl/json/csv/parquet/hub data
    tokenizer: str = "char"  # char | byte | gpt2 | cl100k_base | ... | bpe | tokenizer.json | hub id
    vocab_size: int | None = None  # bpe vocabulary size (default 4096)
    simplify: bool = False  # bpe: split digits, drop rare non-Latin characters from training text
    val_fraction: float = 0.1  # the last fraction of each source's tokens is validation data
    sample_ratio: float = 1.0  # use this fraction of the documents (seeded choice, order kept)
    cache_dir: str = "data_cache"  # prepared data goes to <cache_dir>/<name>-<hash>/
    mode: str = "random"  # random windows | epoch (shuffled disjoint windows) | padded (a doc per row) | sft
    chat_template: str = "auto"  # sft: auto (data.tokenizer's, else default) | default | PATH (data/chat_template.py)
    special_token_weight: float = 1.0  # loss weight of targets that are special tokens (eot)
    num_workers: int = 0  # tokenizer threads during preparation (0 = one per core)
    seed: int = 1337  # document sampling, mixing and batch order

    def __post_init__(self) -> None:
        sources = self.sources
        if not sources or not all(isinstance(s, str) and s for s in sources):
            raise ValueError(f"data.dataset must be a non-empty name or list of names, got {cut(self.dataset)}")
        check_ranges(self, "data")
        if self.weights is not None and len(self.weights) != len(sources):
            raise ValueError(f"data.weights must be {len(sources)} positive numbers (one per dataset), got "
                             f"{cut(self.weights)}")
        if self.mode not in DATA_MODES:
            raise ValueError(f"data.mode must be one of {', '.join(DATA_MODES)}, got {cut(self.mode)}")
        if not isinstance(self.chat_template, str) or not self.chat_template:
            raise ValueError(f"data.chat_template must be auto, default or a path, got {cut(self.chat_template)}")

    @property
    def sources(self) -> list[str]:
        """``dataset`` as a list."""
        return [self.dataset] if isinstance(self.dataset, str) else list(self.dataset)


@dataclass
class TrainConfig:
    out_dir: str = "out"  # checkpoints, metrics.jsonl, loss.png, config.yaml
    batch_size: int = 12  # sequences per micro-batch (per rank)
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    max_iters: int = 2000  # optimizer steps (ignored when epochs is set)
    epochs: float | None = None  # train for this many passes over the data instead
    eval_interval: int = 250  # estimate train/val loss every N steps
    eval_iters: int = 20  # batches per loss estimate
    log_interval: int = 10  # log the training loss every N steps
    ckpt_interval: int = 0  # save every N steps (0 = at evals and the end)
    keep_checkpoints: int = 1  # keep the N newest checkpoints (and the best one, always)
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps | xpu | xpu:N (fastgpt.device)
    dtype: str = "auto"  # auto (bf16 where measured faster, else fp32) | float32 | bfloat16 | float16 (autocast)
    compile: bool = False  # torch.compile the model
    parallel: str = "ddp"  # under torchrun: ddp (a replica per rank) | fsdp (FSDP2 shards, DCP checkpoints)
    grad_clip: float = 1.0  # max gradient norm (0 = off)
    sample_tokens: int = 200  # tokens of text sampled at the end of training (0 = none)
    # scratch | hf:PATH_OR_HUB_ID (a Hugging Face GPT-2 or Llama) | DIR (a fastgpt run or checkpoint); the
    # last two set model.* (fastgpt.train.init_from)
    init_from: str = "scratch"
    overwrite: bool = False  # a new run may replace the run already in out_dir (else it is refused)
    objective: str = "next_token"  # next_token | next_token_mlm (bidirectional models; fastgpt.train.objectives)
    mlm_fraction: float = 0.15  # next_token_mlm: the fraction of input tokens masked
    lora_rank: int = 0  # > 0: train LoRA adapters of this rank on a frozen train.init_from base (fastgpt.nn.lora)
    lora_alpha: float = 16.0  # adapters scale by lora_alpha / lora_rank
    lora_dropout: float = 0.0  # dropout on the adapters' input
    lora_targets: list[str] = field(default_factory=lambda: ["attn.c_attn", "attn.c_proj"])  # projections adapted
    freeze: list[str] = field(default_factory=list)  # glob patterns of parameter names not trained (blocks.0.*)

    def __post_init__(self) -> None:
        _choice("train.dtype", self.dtype, ("float32", "bfloat16", "float16", "auto"))
        _choice("train.parallel", self.parallel, ("ddp", "fsdp"))
        check_ranges(self, "train")
        if not self.init_from or self.init_from == "hf:":
            raise ValueError(f"train.init_from={cut(self.init_from)} is not 'scratch', 'hf:PATH_OR_HUB_ID' or a "
                             "fastgpt run or checkpoint folder")
        self._check_finetuning()

    def _check_finetuning(self) -> None:
        _choice("train.objective", self.objective, OBJECTIVES)
        if self.objective == "next_token_mlm" and self.init_from != "scratch":
            raise ValueError(f"train.objective=next_token_mlm trains from scratch, not train.init_from="
                             f"{cut(self.init_from)}: its mask token is an id past the tokenizer's vocabulary, which "
                             "an imported model has no embedding for")
        for target in self.lora_targets:
            _choice("train.lora_targets item", target, LORA_TARGETS)
        if not self.lora_targets or len(set(self.lora_targets)) != len(self.lora_targets):
            raise ValueError(f"train.lora_targets must name distinct projections of {', '.join(LORA_TARGETS)}, "
                             f"got {cut(self.lora_targets)}")
        if self.lora_rank and self.init_from == "scratch":
            raise ValueError(f"train.lora_rank={self.lora_rank} adapts a base model: set train.init_from to a fastgpt "
                             "run or checkpoint folder, or to hf:PATH_OR_HUB_ID, not 'scratch'")
        if self.lora_rank and self.parallel == "fsdp":
            raise ValueError("train.lora_rank > 0 saves its adapters in one file; use train.parallel=ddp")
        if self.lora_rank and self.freeze:
            raise ValueError(f"train.freeze={cut(self.freeze)} with train.lora_rank={self.lora_rank}: LoRA already "
                             "freezes every base weight; drop one of them")
        if not all(isinstance(p, str) and p for p in self.freeze):
            raise ValueError(f"train.freeze must be a list of non-empty glob patterns, got {cut(self.freeze)}")


OPTIMIZERS = ("adamw", "fused_adamw", "sgd", "muon")  # fastgpt.train.optimizer


@dataclass
class OptimConfig:
    # adamw | fused_adamw | sgd | muon ("adamw" uses the fused kernels when available; "muon": Muon for the
    # blocks' weight matrices, AdamW for the rest)
    name: str = "adamw"
    lr: float = 1e-3  # peak learning rate (optim.name=muon: AdamW's, for embeddings, head, norms, biases)
    min_lr: float = 1e-4  # floor of the cosine and linear schedules
    weight_decay: float = 0.1  # on matrices and embeddings only, never on biases or norms
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    scheduler: str = "cosine"  # cosine | linear | step | constant (each after warmup)
    warmup_iters: int = 100
    lr_decay_iters: int | None = None  # None = the run's length
    step_size: int = 1000  # step scheduler: decay every N iterations
    gamma: float = 0.1  # step scheduler: multiply the lr by this every step_size steps
    # optim.name=muon (fastgpt.optim.Muon); its lr follows the same schedule, floor min_lr * muon_lr / lr
    muon_lr: float = 0.02  # peak learning rate of the Muon matrices
    muon_momentum: float = 0.95
    muon_nesterov: bool = True
    muon_ns_steps: int = 5  # Newton-Schulz iterations per step

    def __post_init__(self) -> None:
        _choice("optim.name", self.name, OPTIMIZERS)
        _choice("optim.scheduler", self.scheduler, ("cosine", "linear", "step", "constant"))
        check_ranges(self, "optim")


@dataclass
class EvalConfig:
    mcq_benchmarks: list[str] = field(default_factory=list)  # e.g. [hellaswag] run at each eval
    num_samples: int = 200  # examples per benchmark during training
    data: dict[str, str] = field(default_factory=dict)  # task -> local JSONL (offline)

    def __post_init__(self) -> None:
        check_ranges(self, "eval")


@dataclass
class LoggingConfig:
    wandb: bool = False
    wandb_project: str = "fastgpt"
    run_name: str | None = None


@dataclass(frozen=True)
class Range:
    """The values a numeric config field may take: ``low`` and up (to ``high``, if given), each bound included
    unless ``low_open`` / ``high_open``. ``limit``: a cap on a size or a count, far beyond any model or run this
    package trains and well below sizes that overflow 32-bit indexing or loop for days, checked before anything
    is allocated (the run's memory is checked later, against the machine, by fastgpt.preflight).
    ``why``: said in the error. An int field takes ints, a float field any finite number; a list field's
    items are checked one by one."""

    low: float
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    limit: float | None = None
    why: str = ""

    def __str__(self) -> str:
        """``[0, 1)``, ``> 0``, ``[1, 1048576]`` (a limit as the upper bound)."""
        return self._written(exponents=False)

    def text(self) -> str:
        """The range as ``--help`` lists it: ``in [0, 1)``, ``> 0``, ``in [1, 2^20]`` (a bound past 2^16 that
        is a power of two, or one less, as ``2^20``, ``2^63-1``)."""
        written = self._written(exponents=True)
        return f"in {written}" if written[0] in "[(" else written

    def _written(self, exponents: bool) -> str:
        high, high_open = (self.high, self.high_open) if self.high is not None else (self.limit, False)
        if high is None:
            return self._above()
        end = _power(high) if exponents else _number(high)
        return f"{'(' if self.low_open else '['}{_number(self.low)}, {end}{')' if high_open else ']'}"

    def error(self, key: str, value: float, integer: bool) -> str | None:
        """The error line for ``key=value``; None when the value is in the range."""
        why = f" ({self.why})" if self.why else ""
        above_low = value > self.low if self.low_open else value >= self.low
        below_high = self.high is None or (value < self.high if self.high_open else value <= self.high)
        if not (above_low and below_high):
            if self.high is not None:
                rule = f"in {self}"
            elif integer and self.low == 1 and not self.low_open:
                rule = "a positive integer"
            else:
                rule = self._above()
            return f"{key} must be {rule}{why}, got {cut(value)}"
        if self.limit is not None and value > self.limit:
            return f"{key}={cut(value)} is beyond the limit of {_number(self.limit, grouped=True)}{why}"
        return None

    def _above(self) -> str:
        return f"{'>' if self.low_open else '>='} {_number(self.low)}"


FRACTION = Range(0, 1, high_open=True)  # [0, 1): dropout probabilities, shares held out
POSITIVE = Range(0, low_open=True)  # > 0
AT_LEAST_0 = Range(0)
AT_LEAST_1 = Range(1)
SEED = Range(0, limit=(1 << 63) - 1)  # torch takes 64-bit seeds (train.seed + rank among them)

# the valid values of every numeric field, section by section (check_ranges; --help lists them)
RANGES: dict[str, dict[str, Range]] = {
    "model": {
        "vocab_size": Range(1, limit=1 << 24), "block_size": Range(1, limit=1 << 20),
        "n_layer": Range(1, limit=1024), "n_head": Range(1, limit=1 << 12), "n_kv_head": Range(1, limit=1 << 12),
        "n_embd": Range(1, limit=1 << 16), "ffn_dim": Range(1, limit=1 << 18),
        "norm_eps": POSITIVE,  # added to the variance under the square root
        # the base of RoPE's wavelengths, which grow with the dimension only for a base above 1 (a tiny one
        # overflows float32's frequencies to inf and the rotations to NaN)
        "rope_theta": Range(1, low_open=True),
        "dropout": FRACTION, "attn_dropout": FRACTION, "embedding_dropout": FRACTION, "lm_head_dropout": FRACTION,
        "init_gain": POSITIVE,
        "logit_softcap": POSITIVE,  # None = no cap; tanh bounds the logits to (-c, c)
    },
    "data": {
        "weights": POSITIVE,  # each one (normalised)
        "vocab_size": Range(258, limit=1 << 24, why="256 bytes + eot + pad"),
        "val_fraction": FRACTION,
        "sample_ratio": Range(0, 1, low_open=True),
        "special_token_weight": Range(0, limit=1000),
        "num_workers": Range(0, limit=1024),  # 0 = one per core
        "seed": SEED,
    },
    "train": {
        "batch_size": Range(1, limit=1 << 20), "grad_accum_steps": Range(1, limit=1 << 20),
        "max_iters": Range(0, limit=1 << 40), "epochs": Range(0, low_open=True, limit=1_000_000),
        "eval_interval": AT_LEAST_1, "eval_iters": Range(1, limit=100_000), "log_interval": AT_LEAST_1,
        "ckpt_interval": AT_LEAST_0,  # 0 = at evals and the end
        "keep_checkpoints": Range(1, limit=1 << 20), "seed": SEED,
        "grad_clip": AT_LEAST_0,  # 0 = off
        "sample_tokens": Range(0, limit=1 << 20),
        "mlm_fraction": Range(0, 1, low_open=True, high_open=True),
        "lora_rank": Range(0, limit=1 << 16),  # 0 = no LoRA; at most the largest model.n_embd
        "lora_alpha": POSITIVE, "lora_dropout": FRACTION,
    },
    "optim": {
        "lr": POSITIVE, "min_lr": AT_LEAST_0,
        # decoupled (AdamW) or L2 (SGD); torch's own check never sees it, as it is set per parameter group
        "weight_decay": AT_LEAST_0,
        "beta1": FRACTION, "beta2": FRACTION,  # beta1 is SGD's momentum
        "eps": POSITIVE,  # 0 divides zero by zero where a gradient was always 0
        "warmup_iters": AT_LEAST_0,
        "lr_decay_iters": AT_LEAST_1,  # None = the run's length
        "step_size": AT_LEAST_1,
        "gamma": Range(0, 1, low_open=True),  # a decay: beyond 1, gamma ** steps overflows
        "muon_lr": POSITIVE, "muon_momentum": FRACTION,
        "muon_ns_steps": Range(1, limit=100),  # 5 suffice; each costs three matmuls per matrix
    },
    "eval": {"num_samples": AT_LEAST_1},
}


def check_ranges(config: Any, section: str) -> None:
    """Raise ValueError naming the first numeric field of ``config`` (the dataclass of ``section``) that is not
    a finite number of its type within its range (``RANGES``); None passes where the field's type allows it."""
    hints = _hints(type(config))
    for name, allowed in RANGES.get(section, {}).items():
        value, (number, listed, optional) = getattr(config, name), numeric_type(hints[name])
        if value is None and optional:
            continue
        if listed and not isinstance(value, list):
            raise ValueError(f"{section}.{name} must be a list of numbers, got {cut(value)}")
        for i, item in enumerate(value) if listed else [(None, value)]:
            key = f"{section}.{name}" if i is None else f"{section}.{name}[{i}]"
            if isinstance(item, bool) or not isinstance(item, int if number is int else int | float):
                raise ValueError(f"{key} must be {'an integer' if number is int else 'a number'}, got {cut(item)}")
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"{key} must be a finite number, got {cut(item)}")
            problem = allowed.error(key, item, number is int)
            if problem is not None:
                raise ValueError(problem)


def numeric_type(tp: Any) -> tuple[type | None, bool, bool]:
    """(int or float, or None for any other type; whether it is a list of them; whether None is allowed) of
    a field's type hint: ``int | None`` -> (int, False, True), ``list[float] | None`` -> (float, True, True)."""
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    kinds = [a for a in args if a is not type(None)]
    optional = len(kinds) < len(args)
    if len(kinds) == 1 and typing.get_origin(kinds[0]) is list:
        (item,) = typing.get_args(kinds[0])
        return (item if item in (int, float) else None), True, optional
    return (kinds[0] if len(kinds) == 1 and kinds[0] in (int, float) else None), False, optional


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _power(value: float) -> str:
    """``value`` as ``2^k`` or ``2^k-1`` where it is one past 2^16, else as ``_number`` writes it."""
    for minus in (0, 1):
        n = int(value) + minus
        if n == value + minus and n >= 1 << 16 and n & (n - 1) == 0:
            return f"2^{n.bit_length() - 1}" + ("-1" if minus else "")
    return _number(value)


def _number(value: float, grouped: bool = False) -> str:
    """A bound as written: 0, 1, 1048576 (1,048,576 when ``grouped``), 1e-08."""
    if value == int(value):
        return f"{int(value):,}" if grouped else str(int(value))
    return repr(value)


SECTIONS: dict[str, type] = {
    "model": GPTConfig, "data": DataConfig, "train": TrainConfig,
    "optim": OptimConfig, "eval": EvalConfig, "logging": LoggingConfig,
}

@dataclass
class Config:
    model: GPTConfig = field(default_factory=GPTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        if not self.model.causal and self.train.objective == "next_token" and self.train.init_from == "scratch":
            raise ValueError("model.causal=false with train.objective=next_token leaks the targets: a bidirectional "
                             "model sees the token it predicts; use train.objective=next_token_mlm or "
                             "model.causal=true")
        if self.optim.name == "muon" and self.train.parallel == "fsdp":
            raise ValueError("optim.name=muon does not run with train.parallel=fsdp (Muon orthogonalizes whole "
                             "matrices, which FSDP shards); use train.parallel=ddp")

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        near = difflib.get_close_matches(value, allowed, n=1) if isinstance(value, str) else []
        hint = f"; did you mean {near[0]}?" if near else ""
        raise ValueError(f"{name}={cut(value)} is not one of {', '.join(allowed)}{hint}")


def folder_error(setting: str, value: str, exc: OSError) -> ValueError:
    """The one-line error for the folder ``setting=value`` that could not be made or written (``exc``)."""
    reason = (exc.strerror or type(exc).__name__).lower()
    where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(value) else ""
    return ValueError(f"{setting}={cut_path(value)}: {reason}{where}")

