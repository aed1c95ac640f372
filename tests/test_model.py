"""GPTConfig validation, every architecture option, causality, presets, overfitting, KV cache."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from tiny_run import TINY_MODEL as TINY

from fastgpt import GPT, GPTConfig
from fastgpt.presets import PRESETS

OPTIONS = [
    {},
    {"n_kv_head": 2},
    {"n_kv_head": 1},
    {"ffn_dim": 40},
    {"ffn_type": "swiglu", "activation": "silu"},
    *({"activation": a} for a in ("gelu", "gelu_tanh", "relu", "leakyrelu", "tanh", "sigmoid", "silu", "none")),
    {"norm": "rms_norm"},
    {"norm": "none"},
    {"lm_head_norm": False},
    {"pos_encoding": "sincos"},
    {"pos_encoding": "rope", "rope_theta": 500.0},
    {"pos_encoding": "none"},
    {"bias": False},
    {"dropout": 0.1, "attn_dropout": 0.1, "embedding_dropout": 0.1, "lm_head_dropout": 0.1},
    {"causal": False},
    {"tie_embeddings": False},
    {"tie_ffn_across_layers": True},
    {"tie_attn_proj_across_layers": True},
    {"init": "xavier", "init_gain": 0.5},
    {"init": "kaiming", "init_mode": "fan_out", "init_nonlinearity": "linear"},
    {"init": "none"},
    {"attn_backend": "torch", "norm_backend": "torch", "norm": "rms_norm"},
]


def _ids(opts: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in opts.items()) or "defaults"


@pytest.mark.parametrize("opts", OPTIONS, ids=[_ids(o) for o in OPTIONS])
def test_every_option_runs_forward_and_backward(opts: dict) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY, **opts))
    idx = torch.randint(0, 61, (3, 11))
    logits, loss = model(idx, targets=torch.roll(idx, -1, 1))
    assert logits.shape == (3, 11, 61)
    assert torch.isfinite(loss)
    if opts.get("init") != "none":  # PyTorch's default N(0, 1) embeddings give confident logits
        assert 3.0 < loss.item() < 5.5  # ~ln(61) = 4.1 at init
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_tying_shares_parameters() -> None:
    base = GPT(GPTConfig(**TINY, tie_embeddings=False)).num_params()
    tied = GPT(GPTConfig(**TINY, tie_embeddings=True))
    assert tied.lm_head.weight is tied.wte.weight
    assert base - tied.num_params() == 61 * 32
    ffn = GPT(GPTConfig(**TINY, tie_ffn_across_layers=True))
    assert ffn.blocks[0].mlp is ffn.blocks[1].mlp
    attn = GPT(GPTConfig(**TINY, tie_attn_proj_across_layers=True))
    assert attn.blocks[0].attn.c_attn is attn.blocks[1].attn.c_attn


@pytest.mark.parametrize("opts", [{}, {"pos_encoding": "rope", "norm": "rms_norm", "n_kv_head": 1}])
def test_causal_future_tokens_do_not_change_earlier_logits(opts: dict) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY, **opts)).eval()
    idx = torch.randint(0, 61, (2, 12))
    changed = idx.clone()
    changed[:, 7:] = (changed[:, 7:] + 5) % 61
    a, _ = model(idx)
    b, _ = model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_bidirectional_sees_the_future() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY, causal=False)).eval()
    idx = torch.randint(0, 61, (1, 12))
    changed = idx.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 61
    assert not torch.allclose(model(idx)[0][:, 0], model(changed)[0][:, 0])


@pytest.mark.parametrize("field,value,message", [
    ("n_embd", 30, "divisible by model.n_head"),
    ("n_kv_head", 3, "divisible by model.n_kv_head"),
    ("norm", "batch_norm", "model.norm='batch_norm' is not one of layer_norm, rms_norm, none"),
    ("activation", "swish", "model.activation"),
    ("pos_encoding", "alibi", "model.pos_encoding"),
    ("n_layer", 0, "model.n_layer must be a positive integer"),
    ("dropout", 1.5, "model.dropout"),
    ("attn_backend", "cudnn", "model.attn_backend"),
])
def test_invalid_configs_name_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        GPTConfig(**{**TINY, field: value})


def test_rope_needs_even_head_dim() -> None:
    with pytest.raises(ValueError, match="even head dim"):
        GPTConfig(vocab_size=10, n_head=4, n_embd=36, pos_encoding="rope")  # head dim 9


@pytest.mark.parametrize("name,count", [
    ("gpt2", 124_439_808), ("gpt2-medium", 354_823_168), ("gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200),
])
def test_gpt2_presets_match_hf_parameter_counts(name: str, count: int) -> None:
    assert GPT.from_preset(name, device="meta").num_params() == count


def test_every_preset_builds_on_meta_and_overrides_apply() -> None:
    for name in PRESETS:
        model = GPT.from_preset(name, device="meta", dropout=0.0)
        assert model.config.dropout == 0.0
        assert model.wte.weight.is_meta
    with pytest.raises(ValueError, match="unknown preset 'gpt3'"):
        GPT.from_preset("gpt3")


def test_loss_ignores_minus_one_and_applies_weights() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    targets = torch.randint(0, 7, (2, 5))
    full = GPT.loss(logits, targets)
    masked = targets.clone()
    masked[:, 3:] = -1
    expected = torch.nn.functional.cross_entropy(logits[:, :3].reshape(-1, 7), targets[:, :3].reshape(-1))
    torch.testing.assert_close(GPT.loss(logits, masked), expected)
    weights = torch.ones(2, 5)
    weights[:, 3:] = 0
    torch.testing.assert_close(GPT.loss(logits, targets, weights), expected)
    assert not torch.allclose(full, expected)


def test_tiny_model_overfits_one_batch() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY))
    idx = torch.randint(0, 61, (4, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


@pytest.mark.parametrize("opts", [{}, {"pos_encoding": "rope", "n_kv_head": 2}, {"pos_encoding": "sincos"},
                                  {"tie_attn_proj_across_layers": True, "pos_encoding": "rope"}])
def test_kv_cache_matches_full_forward(opts: dict) -> None:
    """One KV cache per block, also when the blocks share one tied attention module."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY, **opts)).eval()
    idx = torch.randint(0, 61, (2, 10))
    full, _ = model(idx)
    cache = model.new_cache(batch=2)
    prefix, _ = model(idx[:, :6], cache=cache)
    steps = [model(idx[:, t : t + 1], cache=cache)[0] for t in range(6, 10)]
    torch.testing.assert_close(torch.cat([prefix, *steps], dim=1), full, rtol=1e-5, atol=1e-5)
    assert len(cache) == 2 and all(c.pos == 10 for c in cache)


def test_sequence_longer_than_block_size_is_refused() -> None:
    model = GPT(GPTConfig(**TINY))
    with pytest.raises(ValueError, match="exceeds block_size=16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_summary_and_flops() -> None:
    model = GPT(GPTConfig(**TINY, norm="rms_norm"))
    text = model.summary()
    assert "2 layers" in text and f"{model.num_params():,}" in text and "norm=rms_norm" in text
    cfg = model.config
    assert model.flops_per_token() == 6 * model.num_params(non_embedding=True) + 12 * 2 * 16 * 32
    assert dataclasses.asdict(cfg)["n_kv_head"] == 4 and cfg.ffn_dim == 128


@pytest.mark.parametrize("norm", ["rms_norm", "layer_norm"])
def test_bf16_autocast_matches_fp32(norm: str) -> None:
    """Sublayers return bf16 under autocast while the residual stream stays fp32."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY, norm=norm))
    idx = torch.randint(0, 61, (2, 12))
    _, ref = model(idx, idx)
    seen: dict[str, list[torch.dtype]] = {"block h": [], "attn": [], "mlp": []}
    hooks = [block.register_forward_hook(lambda mod, args, out: seen["block h"].append(out[0].dtype))
             for block in model.blocks]
    hooks += [block.attn.register_forward_hook(lambda mod, args, out: seen["attn"].append(out.dtype))
              for block in model.blocks]
    hooks += [block.mlp.register_forward_hook(lambda mod, args, out: seen["mlp"].append(out.dtype))
              for block in model.blocks]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = model(idx, idx)
    for hook in hooks:
        hook.remove()
    n = len(model.blocks)
    assert seen == {"block h": [torch.float32] * n, "attn": [torch.bfloat16] * n, "mlp": [torch.bfloat16] * n}
    loss.backward()
    assert abs(loss.item() - ref.item()) < 0.05


LLAMA_LIKE = {"norm": "rms_norm", "pos_encoding": "rope", "n_kv_head": 2, "ffn_type": "swiglu"}


@pytest.mark.parametrize("opts", [{}, LLAMA_LIKE])
def test_compiled_model_has_no_graph_breaks_and_matches_eager(opts: dict) -> None:
    """torch.compile(fullgraph=True) traces the model, the op dispatcher included, in one graph.

    ``aot_eager`` runs the traced forward and backward graphs without code generation, so this
    stays quick on CPU; the Triton/CUDA ops under compile are GPU tests (tests/ops/).
    """
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY, **opts))
    idx, targets = torch.randint(0, 61, (2, 13)), torch.randint(0, 61, (2, 13))
    results = []
    for fn in (model, torch.compile(model, fullgraph=True, backend="aot_eager")):
        logits, loss = fn(idx, targets)
        loss.backward()
        results.append((logits.detach(), *(p.grad.clone() for p in model.parameters())))
        model.zero_grad(set_to_none=True)
    for eager, compiled in zip(*results, strict=True):
        torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-6)


@pytest.mark.parametrize("ffn_type", ["gelu_mlp", "swiglu"])
def test_gpt2_init_scales_the_residual_projections_by_name(ffn_type: str) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=8, n_head=4, n_embd=256, ffn_type=ffn_type))
    shrink = 1 / math.sqrt(2 * 8)
    for name, p in model.named_parameters():
        if p.dim() == 2 and name.startswith("blocks."):
            residual = name.endswith(("attn.c_proj.weight", "mlp.c_proj.weight", "mlp.down.weight"))
            assert p.std().item() == pytest.approx(0.02 * (shrink if residual else 1.0), rel=0.05), name


def test_sublayer_options_are_keyword_only() -> None:
    from fastgpt.nn import MLP, SelfAttention

    with pytest.raises(TypeError):
        SelfAttention(64, 4, 4, True, True, 0.1, 0.0, "auto", None)  # swapped dropouts would go unnoticed
    with pytest.raises(TypeError):
        MLP(64, 256, "gelu", True, 0.0)
    attn = SelfAttention(64, 4, n_kv_head=2, attn_dropout=0.1, dropout=0.2)
    assert (attn.n_kv_head, attn.attn_dropout, attn.resid_dropout.p) == (2, 0.1, 0.2)
