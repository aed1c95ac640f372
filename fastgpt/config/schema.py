"""Every configuration dataclass: ``GPTConfig`` (model), ``DataConfig``, ``TrainConfig``, ``OptimConfig``,
``EvalConfig``, ``LoggingConfig`` and ``Config`` (all six sections), each checking its values when built.
"""

from __future__ import annotations

import dataclasses
import math
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
# upper bounds checked before anything is allocated: far beyond any model or run this package trains,
# well below sizes that overflow 32-bit indexing or loop for days (the run's memory is checked later,
# against the machine, by fastgpt.train.preflight)
MODEL_LIMITS = {"vocab_size": 1 << 24, "block_size": 1 << 20, "n_layer": 1024, "n_head": 1 << 12,
                "n_kv_head": 1 << 12, "n_embd": 1 << 16, "ffn_dim": 1 << 18}
TRAIN_LIMITS = {"batch_size": 1 << 20, "grad_accum_steps": 1 << 20, "eval_iters": 100_000,
                "max_iters": 1 << 40, "sample_tokens": 1 << 20, "keep_checkpoints": 1 << 20}
MAX_SPECIAL_TOKEN_WEIGHT = 1000.0
MAX_EPOCHS = 1_000_000
MAX_WORKERS = 1024


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
    activation: str = "gelu"  # gelu | gelu_tanh | relu | leakyrelu | tanh | sigmoid | silu | none
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

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.ffn_dim is None:
            self.ffn_dim = 4 * self.n_embd
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field that is out of range or inconsistent."""
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "n_embd", "ffn_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"model.{name} must be a positive integer, got {cut(value)}")
            _at_most(f"model.{name}", value, MODEL_LIMITS[name])
        if not isinstance(self.init_gain, int | float) or not 0 < self.init_gain < math.inf:
            raise ValueError(f"model.init_gain must be a positive finite number, got {self.init_gain!r}")
        choices = {
            "ffn_type": FFN_TYPES, "activation": tuple(ACTIVATIONS), "norm": NORMS,
            "pos_encoding": POS_ENCODINGS, "init": INITS, "init_mode": INIT_MODES,
            "init_nonlinearity": INIT_NONLINEARITIES, "attn_backend": BACKENDS, "norm_backend": BACKENDS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"model.{name}={cut(getattr(self, name))} is not one of {', '.join(allowed)}")
        for name in ("dropout", "attn_dropout", "embedding_dropout", "lm_head_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"model.{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.norm_eps <= 0:
            raise ValueError(f"model.norm_eps must be positive, got {self.norm_eps!r}")
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
        if self.weights is not None and (len(self.weights) != len(sources) or not all(w > 0 for w in self.weights)):
            raise ValueError(
                f"data.weights must be {len(sources)} positive numbers (one per dataset), got {self.weights}"
            )
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 < self.sample_ratio <= 1:
            raise ValueError(f"data.sample_ratio must be in (0, 1], got {self.sample_ratio}")
        if self.mode not in DATA_MODES:
            raise ValueError(f"data.mode must be one of {', '.join(DATA_MODES)}, got {cut(self.mode)}")
        if not isinstance(self.chat_template, str) or not self.chat_template:
            raise ValueError(f"data.chat_template must be auto, default or a path, got {cut(self.chat_template)}")
        if self.special_token_weight < 0:
            raise ValueError(f"data.special_token_weight must be >= 0, got {self.special_token_weight}")
        _at_most("data.special_token_weight", self.special_token_weight, MAX_SPECIAL_TOKEN_WEIGHT)
        _at_most("data.num_workers", self.num_workers, MAX_WORKERS)
        if self.num_workers < 0 or self.seed < 0:
            raise ValueError(f"data.num_workers and data.seed must be >= 0, got {self.num_workers}, {self.seed}")
        if self.vocab_size is not None and self.vocab_size < 258:
            raise ValueError(f"data.vocab_size must be at least 258 (256 bytes + eot + pad), got {self.vocab_size}")
        if self.vocab_size is not None:
            _at_most("data.vocab_size", self.vocab_size, MODEL_LIMITS["vocab_size"])

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
        for name in ("batch_size", "grad_accum_steps", "eval_interval", "eval_iters", "log_interval",
                     "keep_checkpoints"):
            _positive(f"train.{name}", getattr(self, name))
        for name, limit in TRAIN_LIMITS.items():
            _at_most(f"train.{name}", getattr(self, name), limit)
        if self.max_iters < 0 or self.ckpt_interval < 0 or self.sample_tokens < 0:
            raise ValueError("train.max_iters, train.ckpt_interval and train.sample_tokens must be >= 0")
        if not self.init_from or self.init_from == "hf:":
            raise ValueError(f"train.init_from={cut(self.init_from)} is not 'scratch', 'hf:PATH_OR_HUB_ID' or a "
                             "fastgpt run or checkpoint folder")
        if self.epochs is not None and not 0 < self.epochs <= MAX_EPOCHS:  # nan too
            raise ValueError(f"train.epochs must be positive and at most {MAX_EPOCHS:,}, got {cut(self.epochs)}")
        self._check_finetuning()

    def _check_finetuning(self) -> None:
        _choice("train.objective", self.objective, OBJECTIVES)
        if not 0 < self.mlm_fraction < 1:
            raise ValueError(f"train.mlm_fraction must be in (0, 1), got {self.mlm_fraction!r}")
        if self.objective == "next_token_mlm" and self.init_from != "scratch":
            raise ValueError(f"train.objective=next_token_mlm trains from scratch, not train.init_from="
                             f"{cut(self.init_from)}: its mask token is an id past the tokenizer's vocabulary, which "
                             "an imported model has no embedding for")
        if self.lora_rank < 0:
            raise ValueError(f"train.lora_rank must be >= 0 (0 = no LoRA), got {cut(self.lora_rank)}")
        _at_most("train.lora_rank", self.lora_rank, MODEL_LIMITS["n_embd"])
        if not self.lora_alpha > 0 or not 0 <= self.lora_dropout < 1:
            raise ValueError(f"train.lora_alpha must be positive and train.lora_dropout in [0, 1), got "
                             f"{self.lora_alpha!r} and {self.lora_dropout!r}")
        for target in self.lora_targets:
            _choice("train.lora_targets item", target, LORA_TARGETS)
        if not self.lora_targets or len(set(self.lora_targets)) != len(self.lora_targets):
            raise ValueError(f"train.lora_targets must name distinct projections of {', '.join(LORA_TARGETS)}, "
                             f"got {cut(self.lora_targets)}")
        if self.lora_rank and not self.init_from.startswith("hf:"):
            raise ValueError(f"train.lora_rank={self.lora_rank} adapts a Hugging Face base model: set train.init_from="
                             "hf:PATH_OR_HUB_ID (a fastgpt run as the base: python -m fastgpt export it first, "
                             f"then hf:THAT_FOLDER), not {cut(self.init_from)}")
        if self.lora_rank and self.parallel == "fsdp":
            raise ValueError("train.lora_rank > 0 saves its adapters in one file; use train.parallel=ddp")
        if self.lora_rank and self.freeze:
            raise ValueError(f"train.freeze={cut(self.freeze)} with train.lora_rank={self.lora_rank}: LoRA already "
                             "freezes every base weight; drop one of them")
        if not all(isinstance(p, str) and p for p in self.freeze):
            raise ValueError(f"train.freeze must be a list of non-empty glob patterns, got {cut(self.freeze)}")


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | fused_adamw | sgd ("adamw" uses the fused kernels when available)
    lr: float = 1e-3  # peak learning rate
    min_lr: float = 1e-4  # floor of the cosine and linear schedules
    weight_decay: float = 0.1  # on matrices and embeddings only, never on biases or norms
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    scheduler: str = "cosine"  # cosine | linear | step | constant (each after warmup)
    warmup_iters: int = 100
    lr_decay_iters: int | None = None  # None = the run's length
    step_size: int = 1000  # step scheduler: decay every N iterations
    gamma: float = 0.1  # step scheduler: multiply the lr by this (in (0, 1]) every step_size steps

    def __post_init__(self) -> None:
        _choice("optim.name", self.name, ("adamw", "fused_adamw", "sgd"))
        _choice("optim.scheduler", self.scheduler, ("cosine", "linear", "step", "constant"))
        if self.lr <= 0 or self.min_lr < 0:
            raise ValueError(f"optim.lr must be positive and optim.min_lr >= 0 (got {self.lr!r}, {self.min_lr!r})")
        if self.warmup_iters < 0:
            raise ValueError(f"optim.warmup_iters must be >= 0, got {cut(self.warmup_iters)}")
        _positive("optim.step_size", self.step_size)
        if not 0 < self.gamma <= 1:  # a decay: beyond 1, gamma ** steps overflows
            raise ValueError(f"optim.gamma must be in (0, 1], got {self.gamma!r}")


@dataclass
class EvalConfig:
    mcq_benchmarks: list[str] = field(default_factory=list)  # e.g. [hellaswag] run at each eval
    num_samples: int = 200  # examples per benchmark during training
    data: dict[str, str] = field(default_factory=dict)  # task -> local JSONL (offline)


@dataclass
class LoggingConfig:
    wandb: bool = False
    wandb_project: str = "fastgpt"
    run_name: str | None = None


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

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={cut(value)} is not one of {', '.join(allowed)}")


def folder_error(setting: str, value: str, exc: OSError) -> ValueError:
    """The one-line error for the folder ``setting=value`` that could not be made or written (``exc``)."""
    reason = (exc.strerror or type(exc).__name__).lower()
    where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(value) else ""
    return ValueError(f"{setting}={cut_path(value)}: {reason}{where}")


def _at_most(name: str, value: float, limit: float) -> None:
    if value > limit:
        raise ValueError(f"{name}={cut(value)} is beyond the limit of {limit:,}")


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {cut(value)}")
