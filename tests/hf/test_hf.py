"""The Hugging Face bridge: logits parity both ways, export of trained checkpoints, refusals, init_from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fastgpt.checkpoint import load
from fastgpt.hf import export as export_mod
from fastgpt.hf.convert import hf_architecture
from fastgpt.hf.tokenizer_files import transformers_tokenizer
from fastgpt.model import GPT, GPTConfig
from fastgpt.tokenizers import build_tokenizer
from fastgpt.train import cli as train_mod

transformers = pytest.importorskip("transformers")
AutoModelForCausalLM, AutoTokenizer = transformers.AutoModelForCausalLM, transformers.AutoTokenizer
GPT2Config, GPT2LMHeadModel = transformers.GPT2Config, transformers.GPT2LMHeadModel
LlamaConfig, LlamaForCausalLM = transformers.LlamaConfig, transformers.LlamaForCausalLM

V, T = 97, 64
GPT2_TINY = dict(n_layer=2, n_embd=32, n_head=4, vocab_size=V, n_positions=T, initializer_range=0.3)
LLAMA_TINY = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=T, initializer_range=0.3, rope_theta=500.0)
WORDS = "the king and queen of the castle walk by night to see a ghost upon the wall".split()
TINY_RUN = ["model.n_layer=2", "model.n_head=4", "model.n_embd=32", "model.block_size=32", "train.batch_size=4",
            "train.eval_iters=1", "train.eval_interval=100", "train.sample_tokens=0", "optim.warmup_iters=1"]


def _logits(model: torch.nn.Module, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(idx)
    return out[0] if isinstance(out, tuple) else out.logits


def _hf_models() -> list[torch.nn.Module]:
    torch.manual_seed(0)
    return [
        GPT2LMHeadModel(GPT2Config(**GPT2_TINY)),
        GPT2LMHeadModel(GPT2Config(**GPT2_TINY, activation_function="relu", n_inner=40, tie_word_embeddings=False)),
        LlamaForCausalLM(LlamaConfig(**LLAMA_TINY)),  # GQA, untied
        LlamaForCausalLM(LlamaConfig(**LLAMA_TINY, attention_bias=True, mlp_bias=True, tie_word_embeddings=True)),
    ]


@pytest.mark.parametrize("index", range(4), ids=["gpt2", "gpt2-relu-untied", "llama-gqa", "llama-bias-tied"])
def test_logits_match_both_ways(index: int, tmp_path: Path) -> None:
    hf = _hf_models()[index].eval()
    idx = torch.randint(0, V, (3, 41), generator=torch.Generator().manual_seed(1))
    model = GPT.from_hf(hf)
    want = _logits(hf, idx)
    torch.testing.assert_close(_logits(model, idx), want, rtol=1e-5, atol=1e-5)
    model.to_hf(tmp_path / "hf")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(back) is type(hf)
    torch.testing.assert_close(_logits(back, idx), want, rtol=1e-5, atol=1e-5)


def test_from_local_folders(tmp_path: Path) -> None:
    hf = _hf_models()[0].eval()
    idx = torch.randint(0, V, (2, 17))
    hf.save_pretrained(tmp_path / "st")
    hf.save_pretrained(tmp_path / "bin", safe_serialization=False)
    for folder in ("st", "bin"):
        torch.testing.assert_close(_logits(GPT.from_hf(str(tmp_path / folder)), idx), _logits(hf, idx), rtol=1e-5,
                                   atol=1e-5)
    with pytest.raises(FileNotFoundError, match="is not a folder holding a Hugging Face model"):
        GPT.from_hf(str(tmp_path / "missing"))


@pytest.mark.parametrize(
    "fields",
    [dict(bias=False, tie_embeddings=False, activation="gelu"),  # GPT-2 with zero biases
     dict(pos_encoding="rope", norm="rms_norm", ffn_type="swiglu", activation="silu", n_kv_head=1, bias=False),
     dict(pos_encoding="rope", norm="rms_norm", ffn_type="swiglu", activation="gelu_tanh", bias=True)],
    ids=["gpt2-no-bias", "llama-mqa", "llama-geglu-bias"],
)
def test_native_models_export_with_identical_logits(fields: dict, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=2, n_head=4, n_embd=32, init_gain=10.0, **fields))
    for p in model.parameters():  # norms and biases away from their 1 / 0 init too
        p.data.add_(0.1 * torch.randn_like(p))
    idx = torch.randint(0, V, (2, 29))
    model.eval().to_hf(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(back, idx), _logits(model, idx), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "fields,option",
    [
        (dict(pos_encoding="sincos"), "model.pos_encoding='sincos'"),
        (dict(pos_encoding="none"), "model.pos_encoding='none'"),
        (dict(causal=False), "model.causal=False"),
        (dict(tie_ffn_across_layers=True), "model.tie_ffn_across_layers=True"),
        (dict(tie_attn_proj_across_layers=True), "model.tie_attn_proj_across_layers=True"),
        (dict(norm="none"), "model.norm='none'"),
        (dict(lm_head_norm=False), "model.lm_head_norm=False"),
        (dict(lm_head_dropout=0.1), "model.lm_head_dropout>0"),
        (dict(norm="rms_norm"), "model.norm='rms_norm' with learned positions"),
        (dict(ffn_type="swiglu"), "model.ffn_type='swiglu' with learned positions"),
        (dict(n_kv_head=2), "model.n_kv_head=2 with learned positions"),
        (dict(pos_encoding="rope", ffn_type="swiglu"), "model.norm='layer_norm' with RoPE"),
        (dict(pos_encoding="rope", norm="rms_norm"), "model.ffn_type='gelu_mlp' with RoPE"),
        (dict(pos_encoding="rope", norm="rms_norm", ffn_type="swiglu", dropout=0.1), "model.dropout>0 with RoPE"),
    ],
)
def test_options_hf_cannot_express_are_refused(fields: dict, option: str) -> None:
    config = GPTConfig(vocab_size=V, block_size=T, n_layer=1, n_head=4, n_embd=32, **fields)
    with pytest.raises(ValueError, match="^cannot convert to Hugging Face: " + option.replace("(", r"\(")):
        hf_architecture(config)


def test_hf_options_fastgpt_cannot_express_are_refused() -> None:
    with pytest.raises(ValueError, match="model_type 'gpt_neox' is not supported"):
        GPT.from_hf(transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
            vocab_size=V, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)))
    with pytest.raises(ValueError, match="Llama RoPE scaling 'linear'"):
        GPT.from_hf(LlamaForCausalLM(LlamaConfig(**{**LLAMA_TINY, "rope_theta": 10000.0},
                                             rope_scaling={"rope_type": "linear", "factor": 2.0})))
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx=True"):
        GPT.from_hf(GPT2LMHeadModel(GPT2Config(**GPT2_TINY, scale_attn_by_inverse_layer_idx=True)))
    with pytest.raises(ValueError, match="from_hf cannot override n_layer"):
        GPT.from_hf(GPT2LMHeadModel(GPT2Config(**GPT2_TINY)), n_layer=3, dropout=0.0)


def _corpus(folder: Path) -> Path:
    path = folder / "corpus.txt"
    path.write_text("\n".join(" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(9)) for i in range(300)))
    return path


def _train(folder: Path, *overrides: str) -> Path:
    out = folder / "out"
    train_mod.main([*TINY_RUN, f"data.dataset={_corpus(folder)}", f"data.cache_dir={folder / 'cache'}",
                    f"train.out_dir={out}", *overrides])  # fmt: skip
    return out


def test_export_cli_gpt2_style_with_bpe_tokenizer(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = _train(tmp_path, "data.tokenizer=bpe", "data.vocab_size=300", "train.max_iters=3")
    assert export_mod.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "hf")]) == 0
    assert "wrote a GPT2LMHeadModel" in capsys.readouterr().out
    model, tok = load(ckpt)
    hf_model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "the queen walks upon the castle wall by night"
    ids = hf_tok(text)["input_ids"]
    assert ids == tok.encode(text) and hf_tok.eos_token_id == tok.eot_id == hf_model.config.eos_token_id
    torch.testing.assert_close(_logits(hf_model, torch.tensor([ids])), _logits(model, torch.tensor([ids])),
                               rtol=1e-5, atol=1e-5)


def test_export_cli_llama_style_skips_char_tokenizer(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = _train(tmp_path, "model.pos_encoding=rope", "model.norm=rms_norm", "model.ffn_type=swiglu",
                  "model.activation=silu", "model.n_kv_head=2", "model.bias=false", "train.max_iters=2")
    assert export_mod.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "hf")]) == 0
    out, err = capsys.readouterr()
    assert "wrote a LlamaForCausalLM" in out and "note: the char tokenizer has no Hugging Face equivalent" in err
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "model.safetensors"]
    model, tok = load(ckpt)
    idx = torch.tensor([tok.encode("the ghost and the king")])
    hf_model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    torch.testing.assert_close(_logits(hf_model, idx), _logits(model, idx), rtol=1e-5, atol=1e-5)


def test_tiktoken_gpt2_becomes_an_identical_transformers_tokenizer(tiktoken_cache: Path, shared_data: Path) -> None:
    tok = build_tokenizer("gpt2")
    hf_tok = transformers_tokenizer(tok)
    texts = [json.loads(line)["ctx"] for line in (shared_data / "hellaswag_val.jsonl").open().readlines()[:200]]
    texts += ["  two  spaces\n\n\ttab", "naïve café 日本語 🎉", "It's 12345 o'clock!!", " 's 'LL\r\n"]
    assert [hf_tok(t)["input_ids"] for t in texts] == [tok.encode(t) for t in texts]
    assert hf_tok.decode(tok.encode(texts[-3])) == texts[-3] and hf_tok.eos_token_id == 50256


def test_init_from_hf_fine_tunes_gpt2_weights(tmp_path: Path, tiktoken_cache: Path) -> None:
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(**{**GPT2_TINY, "vocab_size": 50257}, resid_pdrop=0.0, embd_pdrop=0.0,
                                    attn_pdrop=0.0)).eval()
    hf.save_pretrained(tmp_path / "gpt2-tiny")
    with pytest.raises(ValueError, match="has a vocabulary of 50257 tokens but data.tokenizer='byte' has 258"):
        _train(tmp_path, f"train.init_from=hf:{tmp_path / 'gpt2-tiny'}", "data.tokenizer=byte")
    # a learning rate too small to move the weights: the checkpoint must hold the HF model's
    ckpt = _train(tmp_path, f"train.init_from=hf:{tmp_path / 'gpt2-tiny'}", "data.tokenizer=gpt2",
                  "train.max_iters=2", "optim.lr=1e-12", "optim.min_lr=0")
    model, _ = load(ckpt)
    assert model.config.block_size == T and model.config.activation == "gelu_tanh"
    idx = torch.randint(0, 50257, (2, 20))
    torch.testing.assert_close(_logits(model, idx), _logits(hf, idx), rtol=1e-4, atol=1e-4)
