"""Every configuration dataclass, and run configs: YAML files plus ``section.key=value`` overrides.

A config has the sections ``model`` (``GPTConfig`` fields, or ``preset: NAME`` plus overrides),
``data`` (``DataConfig``), ``train``, ``optim``, ``eval`` and ``logging``. Every key is type-checked;
an unknown one fails with a message naming it and the nearest valid keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fastgpt.nn.lora import TARGETS as LORA_TARGETS
from fastgpt.nn.mlp import ACTIVATIONS, FFN_TYPES
from fastgpt.nn.norm import NORMS
from fastgpt.ops._backend import CHOICES as BACKENDS
from fastgpt.presets import preset_fields

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
                raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
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
                raise ValueError(f"model.{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
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
            raise ValueError(f"data.dataset must be a non-empty name or list of names, got {self.dataset!r}")
        if self.weights is not None and (len(self.weights) != len(sources) or not all(w > 0 for w in self.weights)):
            raise ValueError(
                f"data.weights must be {len(sources)} positive numbers (one per dataset), got {self.weights}"
            )
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 < self.sample_ratio <= 1:
            raise ValueError(f"data.sample_ratio must be in (0, 1], got {self.sample_ratio}")
        if self.mode not in DATA_MODES:
            raise ValueError(f"data.mode must be one of {', '.join(DATA_MODES)}, got {self.mode!r}")
        if not isinstance(self.chat_template, str) or not self.chat_template:
            raise ValueError(f"data.chat_template must be auto, default or a path, got {self.chat_template!r}")
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
    device: str = "auto"  # auto | cpu | cuda | cuda:N
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
            raise ValueError(f"train.init_from={self.init_from!r} is not 'scratch', 'hf:PATH_OR_HUB_ID' or a fastgpt "
                             "run or checkpoint folder")
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError(f"train.epochs must be positive, got {self.epochs!r}")
        self._check_finetuning()

    def _check_finetuning(self) -> None:
        _choice("train.objective", self.objective, OBJECTIVES)
        if not 0 < self.mlm_fraction < 1:
            raise ValueError(f"train.mlm_fraction must be in (0, 1), got {self.mlm_fraction!r}")
        if self.objective == "next_token_mlm" and self.init_from != "scratch":
            raise ValueError(f"train.objective=next_token_mlm trains from scratch, not train.init_from="
                             f"{self.init_from!r}: its mask token is an id past the tokenizer's vocabulary, which "
                             "an imported model has no embedding for")
        if self.lora_rank < 0:
            raise ValueError(f"train.lora_rank must be >= 0 (0 = no LoRA), got {self.lora_rank!r}")
        _at_most("train.lora_rank", self.lora_rank, MODEL_LIMITS["n_embd"])
        if not self.lora_alpha > 0 or not 0 <= self.lora_dropout < 1:
            raise ValueError(f"train.lora_alpha must be positive and train.lora_dropout in [0, 1), got "
                             f"{self.lora_alpha!r} and {self.lora_dropout!r}")
        for target in self.lora_targets:
            _choice("train.lora_targets item", target, LORA_TARGETS)
        if not self.lora_targets or len(set(self.lora_targets)) != len(self.lora_targets):
            raise ValueError(f"train.lora_targets must name distinct projections of {', '.join(LORA_TARGETS)}, "
                             f"got {self.lora_targets!r}")
        if self.lora_rank and not self.init_from.startswith("hf:"):
            raise ValueError(f"train.lora_rank={self.lora_rank} adapts a Hugging Face base model: set train.init_from="
                             "hf:PATH_OR_HUB_ID (a fastgpt run as the base: python -m fastgpt export it first, "
                             f"then hf:THAT_FOLDER), not {self.init_from!r}")
        if self.lora_rank and self.parallel == "fsdp":
            raise ValueError("train.lora_rank > 0 saves its adapters in one file; use train.parallel=ddp")
        if self.lora_rank and self.freeze:
            raise ValueError(f"train.freeze={self.freeze!r} with train.lora_rank={self.lora_rank}: LoRA already "
                             "freezes every base weight; drop one of them")
        if not all(isinstance(p, str) and p for p in self.freeze):
            raise ValueError(f"train.freeze must be a list of non-empty glob patterns, got {self.freeze!r}")


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
    gamma: float = 0.1  # step scheduler: multiply the lr by this

    def __post_init__(self) -> None:
        _choice("optim.name", self.name, ("adamw", "fused_adamw", "sgd"))
        _choice("optim.scheduler", self.scheduler, ("cosine", "linear", "step", "constant"))
        if self.lr <= 0 or self.min_lr < 0:
            raise ValueError(f"optim.lr must be positive and optim.min_lr >= 0 (got {self.lr!r}, {self.min_lr!r})")
        if self.warmup_iters < 0:
            raise ValueError(f"optim.warmup_iters must be >= 0, got {self.warmup_iters!r}")
        _positive("optim.step_size", self.step_size)
        if not self.gamma > 0:
            raise ValueError(f"optim.gamma must be positive, got {self.gamma!r}")


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

# what ``--resume`` may change: settings that leave the saved state meaning what it meant (how long
# to train, how often to evaluate, log and save, the learning-rate schedule from here on, where it
# runs, the per-rank batch for another number of ranks: keep batch_size x grad_accum_steps x ranks
# to stay exact); every other key keeps the run's saved value ("*": the whole section)
RESUME_CHANGEABLE: dict[str, tuple[str, ...] | str] = {
    "model": ("attn_backend", "norm_backend"),
    "data": ("cache_dir", "num_workers"),
    "train": ("out_dir", "batch_size", "grad_accum_steps", "max_iters", "epochs", "eval_interval", "eval_iters",
              "log_interval", "ckpt_interval", "keep_checkpoints", "sample_tokens", "device", "compile", "grad_clip"),
    "optim": ("lr", "min_lr", "scheduler", "warmup_iters", "lr_decay_iters", "step_size", "gamma"),
    "eval": "*",
    "logging": "*",
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


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, dict[str, Any]] | None = None) -> Config:
    """Read a YAML config (else ``base``, else the defaults), apply ``section.key=value`` overrides, validate."""
    raw: dict[str, dict[str, Any]] = {}
    if path is not None:
        raw = read_yaml(Path(path))
    elif base is not None:
        raw = {section: dict(values) for section, values in base.items()}
    return build_config(apply_overrides(raw, overrides or []))


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``raw`` (nested dicts, changed in place and returned) with each ``section.key=value`` set."""
    for item in overrides:
        section, key, value = parse_override(item)
        if raw.get(section) is None:
            raw[section] = {}
        if not isinstance(raw[section], dict):
            raise ValueError(f"config section {section!r} must be a mapping of keys to values, "
                             f"got {type(raw[section]).__name__}")
        raw[section][key] = value
    return raw


def resume_config(saved: dict[str, Any], given: dict[str, Any], source: str) -> tuple[Config, list[str]]:
    """The config a resumed run continues with: its ``saved`` one, changed by the ``given`` keys (a
    ``--config`` file and overrides, nested dicts) where ``RESUME_CHANGEABLE`` allows; and one line per
    setting changed (``train.max_iters 5000 -> 8000``).

    A given key equal to the saved value changes nothing; ``model.vocab_size`` is the tokenizer's, as
    in a new run; ``train.dtype=auto`` stands for the dtype the run chose when it started. Any other
    change raises ValueError naming the key. ``source`` names the saved config in errors.
    """
    try:
        before = build_config(saved)
    except ValueError as exc:
        raise ValueError(f"{source} does not load: {exc}") from None
    merged = {name: dict(values) for name, values in before.to_dict().items()}
    for section, values in given.items():
        if section not in SECTIONS:
            raise ValueError(f"unknown config section {section!r}{_near(section, SECTIONS)}")
        if not isinstance(values, dict):
            raise ValueError(f"config section {section!r} must be a mapping of keys to values, "
                             f"got {type(values).__name__}")
        values = dict(values)
        if section == "model" and "preset" in values:
            values = {**preset_fields(str(values.pop("preset"))), **values}
        if section == "model":
            values.pop("vocab_size", None)
        if section == "train" and values.get("dtype") == "auto":
            values.pop("dtype")
        merged[section].update(values)
    after = build_config(merged)
    changes = []
    for section, values in after.to_dict().items():
        old = before.to_dict()[section]
        for key, value in values.items():
            if value == old[key]:
                continue
            allowed = RESUME_CHANGEABLE[section]
            if allowed != "*" and key not in allowed:
                raise ValueError(f"{section}.{key} cannot change when resuming (the run has {old[key]!r}, "
                                 f"given {value!r}); --resume may change only {changeable_on_resume()}")
            changes.append(f"{section}.{key} {old[key]!r} -> {value!r}")
    return after, changes


def changeable_on_resume() -> str:
    """The keys ``--resume`` may change, as one line."""
    return ", ".join(f"{s}.*" if keys == "*" else ", ".join(f"{s}.{k}" for k in keys)
                     for s, keys in RESUME_CHANGEABLE.items() if keys)


def config_reference() -> str:
    """Every config key, section by section, with its default and the comment beside its field in this
    file (what ``python -m fastgpt.train --help`` lists)."""
    lines = []
    for name, cls in SECTIONS.items():
        notes = _field_comments(cls)
        lines.append(f"{name}:")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            text = f"  {name}.{f.name}={_plain(default)}"
            lines.append(f"{text:<33}  {notes[f.name]}" if f.name in notes else text)
    return "\n".join(lines)


def _field_comments(cls: type) -> dict[str, str]:
    """``name -> comment`` for the fields of ``cls`` written ``name: type = default  # comment``."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # no source (a frozen install): the keys and defaults alone
        return {}
    names, notes = {f.name for f in dataclasses.fields(cls)}, {}
    for line in source.splitlines():
        match = re.match(r"\s+(\w+):[^#]*#\s*(.+)", line)
        if match and match.group(1) in names and match.group(1) not in notes:
            notes[match.group(1)] = match.group(2).replace("`", "")
    return notes


def _plain(value: Any) -> str:
    """A default as it is typed on the command line: null, true, 0.001, [], out."""
    return value if isinstance(value, str) else json.dumps(value)


def build_config(raw: dict[str, Any]) -> Config:
    """A Config from nested dicts; unknown sections or keys and wrong types raise ValueError."""
    for section in raw:
        if section not in SECTIONS:
            raise ValueError(f"unknown config section {section!r}{_near(section, SECTIONS)}")
    sections = {}
    for name, cls in SECTIONS.items():
        values = raw.get(name) or {}
        if not isinstance(values, dict):
            raise ValueError(f"config section {name!r} must be a mapping of keys to values, "
                             f"got {type(values).__name__}")
        values = dict(values)
        if name == "model" and "preset" in values:
            values = {**preset_fields(str(values.pop("preset"))), **values}
        sections[name] = _make(cls, name, values)
    return Config(**sections)


def parse_override(item: str) -> tuple[str, str, Any]:
    """'train.lr=3e-4' -> ('train', 'lr', 0.0003); the value is parsed as YAML."""
    key, sep, value = item.partition("=")
    section, dot, name = key.partition(".")
    if not sep or not dot or not section or not name:
        raise ValueError(f"override {item!r} must look like section.key=value (e.g. train.max_iters=100)")
    if value == "":
        return section, name, ""
    try:
        return section, name, yaml.safe_load(value)
    except yaml.YAMLError as exc:
        reason = " ".join(str(exc).split())[:120]
        raise ValueError(f"override {item!r}: the value is not valid YAML ({reason})") from None


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML config file as nested dicts (not yet checked); errors name the file (and the line)."""
    if not path.exists():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:  # a folder, no permission, ...
        raise ValueError(f"config file {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark, context = exc.problem_mark, f" ({exc.context})" if exc.context else ""
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ValueError(f"config file {str(path)!r} is not valid YAML{where}: {exc.problem}{context}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(f"config file {str(path)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must map section names to mappings, got {type(data).__name__}")
    return data


def _make(cls: type, section: str, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in values.items():
        if key not in names:
            raise ValueError(f"unknown config key {section}.{key}{_near_key(section, key)}")
        values[key] = _coerce(f"{section}.{key}", value, hints[key])
    return cls(**values)


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the type hint ``tp``; ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _coerce(name, value, arg)
            except ValueError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise ValueError(f"{name} must be a list, got {value!r}")
        return [_coerce(name, v, item) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be a mapping, got {value!r}")
        return {str(k): str(v) for k, v in value.items()}
    if tp is float and isinstance(value, int | float | str) and not isinstance(value, bool):
        try:  # YAML 1.1 reads "3e-4" (no dot) as a string
            number = float(value)
        except OverflowError:  # an int beyond float's range
            number = math.inf
        except ValueError:
            number = None  # not a number: the type error below
        if number is not None:
            if not math.isfinite(number):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            return number
    if tp is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ValueError(f"{name} must be {tp.__name__}, got {value!r} ({type(value).__name__})")


def _near(name: str, valid: typing.Iterable[str]) -> str:
    near = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(near)}?" if near else f"; valid sections: {', '.join(valid)}"


def _near_key(section: str, key: str) -> str:
    """'; did you mean ...?' for the unknown ``section.key``: the same key in another section first
    (``train.lr``: ``optim.lr``), then close keys in its own section, then close ones elsewhere."""
    fields = {name: [f.name for f in dataclasses.fields(cls)] for name, cls in SECTIONS.items()}
    same = [f"{other}.{key}" for other, names in fields.items() if other != section and key in names]
    own = [f"{section}.{n}" for n in difflib.get_close_matches(key, fields[section], n=3, cutoff=0.5)]
    elsewhere = [f"{other}.{n}" for other, names in fields.items() if other != section
                 for n in difflib.get_close_matches(key, names, n=2, cutoff=0.8) if n != key]
    near = list(dict.fromkeys(same + own + elsewhere))[:4]
    if near:
        return f"; did you mean {', '.join(near)}?"
    return f"; valid keys: {', '.join(f'{section}.{n}' for n in fields[section])}"


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(allowed)}")


def folder_error(setting: str, value: str, exc: OSError) -> ValueError:
    """The one-line error for the folder ``setting=value`` that could not be made or written (``exc``)."""
    reason = (exc.strerror or type(exc).__name__).lower()
    where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(value) else ""
    return ValueError(f"{setting}={str(value)!r}: {reason}{where}")


def _at_most(name: str, value: float, limit: float) -> None:
    if value > limit:
        raise ValueError(f"{name}={value!r} is beyond the limit of {limit:,}")


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
