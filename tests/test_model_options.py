"""The model options peers use (issue 29): ``qk_norm``, ``activation=relu2``, ``zero_init_proj``, ``logit_softcap``.

Each changes what it should and nothing else: under one seed a model with the option has the default
model's parameters (plus the q/k norms' weights), and the default model is the one fastgpt built
before the options existed (its state_dict keys and a loss recorded from that code).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny_run import TINY_MODEL, tiny, word_corpus

import fastgpt.model as model_mod
import fastgpt.nn.attention as attention_mod
from fastgpt.checkpoint import load
from fastgpt.config import GPTConfig
from fastgpt.hf import export as export_mod
from fastgpt.model import GPT, softcap
from fastgpt.nn.mlp import MLP, GatedMLP
from fastgpt.train import cli as train_cli

ALL_FOUR = ("model.qk_norm=true", "model.activation=relu2", "model.zero_init_proj=true", "model.logit_softcap=15")
PROJECTIONS = ("attn.c_proj", "mlp.c_proj", "mlp.down")
# the default GPT(GPTConfig(**TINY_MODEL)) before these options existed: its keys (block 0's; block 1 alike)
BLOCK_KEYS = {f"attn.{m}.{p}" for m in ("c_attn", "c_proj") for p in ("weight", "bias")} | {
    f"mlp.{m}.{p}" for m in ("c_fc", "c_proj") for p in ("weight", "bias")} | {
    f"{n}.norm.{p}" for n in ("ln_1", "ln_2") for p in ("weight", "bias")}
DEFAULT_KEYS = {f"blocks.{i}.{k}" for i in range(2) for k in BLOCK_KEYS} | {
    "lm_head.weight", "ln_f.norm.bias", "ln_f.norm.weight", "wpe.weight", "wte.weight"}
DEFAULT_LOSS = 3.7469379901885986  # its loss on _batch() after torch.manual_seed(0), recorded from that code


def _model(**fields: object) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**TINY_MODEL, **fields}))


def _batch() -> torch.Tensor:
    return torch.arange(32).reshape(2, 16) % TINY_MODEL["vocab_size"]


def _same_except(a: GPT, b: GPT, changed: tuple[str, ...] = ()) -> None:
    """a and b hold equal tensors under every key they share, except keys ending in ``changed``."""
    sa, sb = a.state_dict(), b.state_dict()
    for key in sa.keys() & sb.keys():
        if not key.endswith(changed):
            assert torch.equal(sa[key], sb[key]), key


def test_default_model_is_unchanged() -> None:
    model = _model()
    assert set(model.state_dict()) == DEFAULT_KEYS
    _, loss = model(_batch(), _batch())
    assert loss.item() == pytest.approx(DEFAULT_LOSS, abs=1e-6)
    explicit = _model(qk_norm=False, activation="gelu", zero_init_proj=False, logit_softcap=None)
    _same_except(explicit, model)
    assert torch.equal(explicit(_batch())[0], model(_batch())[0])


# ------------------------------------------------------------------------------- qk_norm
@pytest.mark.parametrize("fields", [dict(), dict(pos_encoding="rope", n_kv_head=2)], ids=["learned", "rope-gqa"])
def test_qk_norm_gives_each_head_unit_rms_before_rope(fields: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    # init_gain: q and k well above the norm's eps (1e-5 on a mean square), so their RMS is 1 to 1e-4
    model, base = _model(qk_norm=True, init_gain=10.0, **fields), _model(init_gain=10.0, **fields)
    hd = model.config.head_dim
    extra = {f"blocks.{i}.attn.{n}.weight" for i in range(2) for n in ("q_norm", "k_norm")}
    assert set(model.state_dict()) == set(base.state_dict()) | extra
    assert all(model.state_dict()[k].shape == (hd,) for k in extra)
    _same_except(model, base)  # the same draws: the norms' weights start at 1 and draw nothing
    seen = []
    real = attention_mod.flash_attention
    monkeypatch.setattr(attention_mod, "flash_attention",
                        lambda q, k, v, **kw: seen.append((q, k)) or real(q, k, v, **kw))
    model(_batch())
    for q, k in seen:  # (B, H, T, hd), as attention gets them (before its 1/sqrt(hd) scale)
        for t in (q, k):
            torch.testing.assert_close(t.pow(2).mean(-1).sqrt(), torch.ones(t.shape[:-1]), rtol=1e-4, atol=1e-4)
    # with weights away from 1 the order shows: normalize (times the weight), then rotate
    attn = model.blocks[0].attn
    with torch.no_grad():
        attn.q_norm.weight.uniform_(0.5, 2.0)
        attn.k_norm.weight.uniform_(0.5, 2.0)
    seen.clear()
    x = torch.randn(2, 16, 32)
    attn(x)
    q_raw, k_raw, _ = attn.c_attn(x).split([32, attn.n_kv_head * hd, attn.n_kv_head * hd], dim=2)
    q = F.rms_norm(q_raw.view(2, 16, 4, hd), (hd,), attn.q_norm.weight, attn.q_norm.eps).transpose(1, 2)
    k = F.rms_norm(k_raw.view(2, 16, -1, hd), (hd,), attn.k_norm.weight, attn.k_norm.eps).transpose(1, 2)
    if attn.rotate is not None:
        q, k = attn.rotate(q, k, 0)
    torch.testing.assert_close(seen[0][0], q)
    torch.testing.assert_close(seen[0][1], k)


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_qk_norm_runs_the_rms_norm_kernels(backend: str) -> None:
    """Each head's (B, T, H, hd) view (not contiguous, hd=6) through the kernels: the torch path's
    logits and gradients (the interpreter and the CUDA emulator on a CPU)."""
    from fastgpt.ops._backend import unavailable_reason

    reason = unavailable_reason(backend, torch.device("cpu"))
    if reason:
        pytest.skip(reason)
    fields = dict(n_embd=24, qk_norm=True, norm="rms_norm", pos_encoding="rope", n_kv_head=2)
    x = torch.randint(0, 61, (2, 13), generator=torch.Generator().manual_seed(0))
    results = []
    for b in ("torch", backend):
        model = _model(**fields, norm_backend=b)
        assert model.blocks[0].attn.q_norm.backend == model.blocks[0].attn.k_norm.backend == b
        logits, loss = model(x, x)
        loss.backward()
        results.append([logits, *(p.grad for p in model.blocks[0].attn.parameters())])
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_qk_norm_works_with_the_kv_cache() -> None:
    model = _model(qk_norm=True, pos_encoding="rope").eval()
    prompt = torch.randint(0, 61, (1, 5))
    assert torch.equal(model.generate(prompt, 8, greedy=True), model.generate(prompt, 8, greedy=True, use_cache=False))


# --------------------------------------------------------------------------------- relu2
@pytest.mark.parametrize("cls", [MLP, GatedMLP])
def test_relu2_is_relu_squared(cls: type) -> None:
    torch.manual_seed(0)
    mlp = cls(32, 48, activation="relu2")
    x = torch.randn(3, 7, 32)
    d = {k: v.double() for k, v in mlp.state_dict().items()}
    x64 = x.double()

    def lin(name: str, t: torch.Tensor) -> torch.Tensor:
        return t @ d[f"{name}.weight"].T + d[f"{name}.bias"]

    def relu2(t: torch.Tensor) -> torch.Tensor:
        return torch.where(t > 0, t * t, torch.zeros_like(t))

    want = (lin("c_proj", relu2(lin("c_fc", x64))) if cls is MLP
            else lin("down", relu2(lin("gate", x64)) * lin("up", x64)))
    torch.testing.assert_close(mlp(x).double(), want, rtol=1e-5, atol=1e-6)


def test_relu2_changes_only_the_activation() -> None:
    model, base = _model(activation="relu2"), _model()
    assert set(model.state_dict()) == DEFAULT_KEYS
    _same_except(model, base)
    assert not torch.allclose(model(_batch())[0], base(_batch())[0])


# ------------------------------------------------------------------------ zero_init_proj
@pytest.mark.parametrize("init", ["gpt2", "xavier", "kaiming", "none"])
@pytest.mark.parametrize("ffn_type", ["gelu_mlp", "swiglu"])
def test_zero_init_proj_survives_every_init(init: str, ffn_type: str) -> None:
    model, base = _model(zero_init_proj=True, init=init, ffn_type=ffn_type), _model(init=init, ffn_type=ffn_type)
    assert set(model.state_dict()) == set(base.state_dict())
    zeroed = [k for k in model.state_dict() if ".".join(k.split(".")[2:4]) in PROJECTIONS]
    assert len(zeroed) == 2 * 2 * 2  # weight and bias of 2 projections in 2 blocks
    assert all(not model.state_dict()[k].any() for k in zeroed)
    assert any(base.state_dict()[k].any() for k in zeroed)
    _same_except(model, base, changed=tuple(k.partition(".")[2] for k in zeroed))


def test_zero_init_proj_still_trains() -> None:
    model = _model(zero_init_proj=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randint(0, 61, (4, 16), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(8):
        _, loss = model(x[:, :-1], x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses
    for name in ("blocks.0.attn.c_attn.weight", "blocks.0.mlp.c_fc.weight", "blocks.0.mlp.c_proj.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


# ------------------------------------------------------------------------- logit_softcap
def test_softcap_bounds_the_logits_and_changes_nothing_else() -> None:
    c = 1.5
    model, base = _model(logit_softcap=c, init_gain=20.0), _model(init_gain=20.0)
    assert set(model.state_dict()) == DEFAULT_KEYS
    _same_except(model, base)
    raw, capped = base(_batch())[0], model(_batch())[0]
    assert raw.abs().max() > 3 * c  # the cap is at work
    # <= rather than <: float32's tanh reaches exactly 1 beyond |x| of about 9
    assert capped.abs().max() <= c and (capped.abs() < c).float().mean() > 0.5
    torch.testing.assert_close(capped.double(), c * torch.tanh(raw.double() / c), rtol=1e-5, atol=1e-6)


def test_softcap_loss_is_cross_entropy_of_the_capped_logits() -> None:
    c = 1.5
    model, base = _model(logit_softcap=c, init_gain=10.0), _model(init_gain=10.0)
    x = _batch()
    y = x.roll(-1, 1)
    y[0, 3:9] = -1  # masked targets (SFT's prompt tokens)
    w = torch.rand(2, 16, generator=torch.Generator().manual_seed(0))
    by_hand = (c * torch.tanh(base(x)[0].double() / c)).reshape(-1, 61)
    _, loss = model(x, y)
    torch.testing.assert_close(loss.double(), F.cross_entropy(by_hand, y.reshape(-1), ignore_index=-1),
                               rtol=1e-5, atol=1e-6)
    _, weighted = model(x, y, w)
    per = F.cross_entropy(by_hand, y.reshape(-1), ignore_index=-1, reduction="none")
    mask = w.reshape(-1).double() * (y.reshape(-1) != -1)
    torch.testing.assert_close(weighted.double(), (per * mask).sum() / mask.sum(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_samples_from_the_capped_logits(use_cache: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    c = 1.0
    model, base = _model(logit_softcap=c, init_gain=10.0), _model(init_gain=10.0)
    seen = []
    real = model_mod.sample_next
    monkeypatch.setattr(model_mod, "sample_next", lambda logits, *a: seen.append(logits) or real(logits, *a))
    out = model.generate(_batch()[:1, :4], 5, generator=torch.Generator().manual_seed(0), use_cache=use_cache)
    assert len(seen) == 5
    for i, logits in enumerate(seen):
        assert logits.abs().max() <= c
        torch.testing.assert_close(logits, softcap(base(out[:, : 4 + i])[0][:, -1], c), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------ the CLI, export
@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny CLI runs: ``all`` with the four options, ``softcap`` with all but qk_norm."""
    folder = tmp_path_factory.mktemp("options")
    corpus = word_corpus(folder)
    out = {}
    for name, extra in (("all", ALL_FOUR), ("softcap", ALL_FOUR[1:])):
        out[name] = folder / name
        train_cli.main(tiny(*SMALL_RUN, *extra, "train.max_iters=6", f"data.dataset={corpus}",
                            f"data.cache_dir={folder / 'cache'}", f"train.out_dir={out[name]}"))
    return out


SMALL_RUN = ("model.n_layer=2", "model.n_embd=32", "model.block_size=32", "train.eval_interval=3",
             "optim.lr=3e-3")


def test_cli_run_with_all_four_trains_saves_and_reloads(runs: dict[str, Path],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    model, tok = load(runs["all"])
    cfg = model.config
    assert (cfg.qk_norm, cfg.activation, cfg.zero_init_proj, cfg.logit_softcap) == (True, "relu2", True, 15)
    assert model.blocks[0].attn.q_norm is not None
    assert model.blocks[0].mlp.c_proj.weight.abs().sum() > 0  # trained away from its zero init
    rows = [json.loads(line) for line in (runs["all"] / "metrics.jsonl").read_text().splitlines()]
    losses = [r["val_loss"] for r in rows if "val_loss" in r]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses
    again, _ = load(runs["all"])
    idx = torch.tensor([tok.encode("the king and the ghost")])
    logits = model(idx)[0]
    assert torch.equal(again(idx)[0], logits) and logits.abs().max() <= 15
    seen = []
    real = model_mod.sample_next
    monkeypatch.setattr(model_mod, "sample_next", lambda lg, *a: seen.append(lg) or real(lg, *a))
    again.generate(idx, 1, greedy=True)
    torch.testing.assert_close(seen[0], logits[:, -1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("run,option", [("all", "model.qk_norm=True"), ("softcap", "model.logit_softcap=15.0")])
def test_export_refuses_what_hf_cannot_express(runs: dict[str, Path], run: str, option: str, cli_error,
                                               tmp_path: Path) -> None:
    line = cli_error(export_mod.main, ["--checkpoint", str(runs[run]), "--out", str(tmp_path / "hf")])
    assert line.startswith(f"error: cannot convert to Hugging Face: {option}:"), line
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("fields", [dict(), dict(pos_encoding="rope", norm="rms_norm", ffn_type="swiglu")],
                         ids=["gpt2", "llama"])
def test_relu2_and_zero_init_proj_export_with_identical_logits(fields: dict, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    model = _model(activation="relu2", zero_init_proj=True, **fields).eval()
    for p in model.parameters():  # the zeroed projections away from 0, so that every weight shows
        p.data.add_(0.1 * torch.randn_like(p))
    model.to_hf(tmp_path)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(back(_batch()).logits, model(_batch())[0], rtol=1e-5, atol=1e-5)
    assert GPT.from_hf(back).config.activation == "relu2"


@pytest.mark.parametrize("override,message", [
    ("model.logit_softcap=0", "model.logit_softcap must be > 0, got 0"),
    ("model.logit_softcap=-3", "model.logit_softcap must be > 0, got -3"),
    ("model.activation=relu3", "model.activation='relu3' is not one of gelu, gelu_tanh, relu, relu2, "),
    ("model.qk_norm=maybe", "model.qk_norm"),
])
def test_bad_values_are_one_error_line(override: str, message: str, cli_error, tmp_path: Path) -> None:
    line = cli_error(train_cli.main, tiny(override, f"train.out_dir={tmp_path / 'out'}"))
    assert line.startswith(f"error: {message}"), line
    if "relu3" in override:
        assert "; did you mean relu" in line, line
