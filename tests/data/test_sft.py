"""data.mode=sft: the three JSONL shapes, the chat templates, loss weights, held-out rows, bad rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer as HFTok
from tokenizers import decoders, models, pre_tokenizers, trainers

from fastgpt.config import DataConfig
from fastgpt.data import prepare_data
from fastgpt.data.chat_template import ChatTemplate
from fastgpt.data.sft import conversation, cut_note
from fastgpt.tokenizers import EOT_TEXT, build_tokenizer, load_tokenizer

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _prepare(tmp_path: Path, source: Path, **kwargs):
    return prepare_data(DataConfig(dataset=str(source), mode="sft", cache_dir=str(tmp_path / "cache"),
                                   **{"tokenizer": "char", **kwargs}), progress=False)


def _examples(data, split: str) -> list[tuple[list[int], list[int]]]:
    """(ids, mask) of every example of ``split``, read back from the prepared files."""
    tokens = np.fromfile(data.dir / f"{split}.bin", dtype=data.dtype)
    mask = np.fromfile(data.dir / f"{split}_mask.bin", dtype=np.uint8)
    offsets = data.doc_offsets(split)
    return [(tokens[a:b].tolist(), mask[a:b].tolist()) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


SHAPES = [
    {"prompt": "add 2 and 3", "response": "5"},
    {"instruction": "add 2 and 3", "input": "", "output": "5"},
    {"messages": [{"role": "user", "content": "add 2 and 3"}, {"role": "assistant", "content": "5"}]},
]


@pytest.mark.parametrize("tokenizer", ["char", "byte"])
def test_three_shapes_give_the_same_tokens(tmp_path: Path, tokenizer: str) -> None:
    files = []
    for i, row in enumerate(SHAPES):
        source = _jsonl(tmp_path / f"shape{i}.jsonl", [row] * 4)
        data = _prepare(tmp_path, source, tokenizer=tokenizer, val_fraction=0.0)
        files.append((data.dir / "train.bin").read_bytes() + (data.dir / "train_mask.bin").read_bytes())
    assert files[0] == files[1] == files[2]
    tok = data.tokenizer  # the default template, written out here independently of the code under test
    prompt = tok.encode("<|user|>\nadd 2 and 3\n<|assistant|>\n")
    assert _examples(data, "train")[0] == (prompt + tok.encode("5") + [tok.eot_id], [0] * len(prompt) + [1, 1])


def test_alpaca_input_follows_the_instruction_after_a_blank_line() -> None:
    row = {"instruction": "Translate", "input": "bonjour", "output": "hello"}
    assert conversation(row)[0] == {"role": "user", "content": "Translate\n\nbonjour"}


def test_loss_weights_are_zero_on_prompt_and_padding(tmp_path: Path) -> None:
    rows = [{"prompt": "q" * (1 + i % 5), "response": "r" * (1 + i % 5 % 3)} for i in range(40)]
    data = _prepare(tmp_path, _jsonl(tmp_path / "sft.jsonl", rows), val_fraction=0.0)
    tok = data.tokenizer
    x, y, w = data.loader("train", 32, 8, DataConfig(mode="sft")).next_batch()
    assert (y == -1).any(), "the batch should have padding"
    for xr, yr, wr in zip(x.tolist(), y.tolist(), w.tolist(), strict=True):
        q = tok.decode(xr).split("\n")[1]  # the row reads <|user|>\nqqq\n<|assistant|>\nrr<eot><pad>...
        prompt = len(tok.encode(f"<|user|>\n{q}\n<|assistant|>\n"))
        reply = "r" * (1 + (len(q) - 1) % 3)
        # target j is token j + 1: trained from the first reply token through eot; padding after it
        end = prompt + len(reply)  # where eot is in the row
        assert wr == [1.0 if prompt - 1 <= j < end else 0.0 for j in range(32)]
        assert yr[end - 1] == tok.eot_id and all(t == -1 for t in yr[end:])


def test_validation_rows_are_held_out(tmp_path: Path) -> None:
    rows = [{"prompt": f"p{i:03d}", "response": f"r{i:03d}"} for i in range(100)]
    data = _prepare(tmp_path, _jsonl(tmp_path / "sft.jsonl", rows), val_fraction=0.2)
    prompts = {split: [data.tokenizer.decode(ids).split("\n")[1] for ids, _ in _examples(data, split)]
               for split in ("train", "val")}
    assert len(prompts["val"]) == 20 and len(prompts["train"]) == 80
    assert set(prompts["train"]).isdisjoint(prompts["val"])
    assert set(prompts["train"]) | set(prompts["val"]) == {r["prompt"] for r in rows}
    assert prompts["val"] != [f"p{i:03d}" for i in range(80, 100)]  # chosen by the seed, not the last rows


BAD_ROWS = [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ({"prompt": "a"}, "field 'response' is missing"),
    ({"prompt": 1, "response": "b"}, "field 'prompt' must be a string"),
    ({"instruction": "a", "input": 3, "output": "b"}, "field 'input' must be a string"),
    ({"text": "a"}, "must be one of"),
    ({"prompt": "a", "response": "b", "messages": []}, "several shapes"),
    ({"messages": []}, "non-empty list"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0] must be an object with role"),
    ({"messages": [{"role": "user", "content": "x"}]}, "no assistant message"),
]


@pytest.mark.parametrize("row,message", BAD_ROWS)
def test_a_bad_row_names_file_line_and_problem(tmp_path: Path, row, message: str) -> None:
    source = _jsonl(tmp_path / "bad.jsonl", [SHAPES[0], "", row])  # line 2 is blank and skipped
    with pytest.raises(ValueError) as err:
        _prepare(tmp_path, source)
    assert str(err.value).startswith(f"{source}:3: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_sft_sources_must_be_jsonl_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _prepare(tmp_path, tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="reads .jsonl files"):
        _prepare(tmp_path, _jsonl(tmp_path / "rows.txt", [SHAPES[0]]))
    with pytest.raises(ValueError, match="has no rows"):
        _prepare(tmp_path, _jsonl(tmp_path / "empty.jsonl", ["", "  "]))
    with pytest.raises(FileNotFoundError, match="data.chat_template=.nope.jinja. does not exist"):
        _prepare(tmp_path, _jsonl(tmp_path / "ok.jsonl", [SHAPES[0]]), chat_template="nope.jinja")


def test_a_bad_row_is_one_error_line_from_the_cli(tmp_path: Path, cli_error) -> None:
    from fastgpt.train import cli

    source = _jsonl(tmp_path / "bad.jsonl", [SHAPES[0], {"prompt": "a"}])
    line = cli_error(cli.main, [f"data.dataset={source}", "data.mode=sft", f"data.cache_dir={tmp_path / 'c'}",
                                f"train.out_dir={tmp_path / 'out'}", "train.device=cpu"])
    assert line == f"error: {source}:2: field 'response' is missing"


def _chatml_folder(tmp_path: Path, template: str = CHATML) -> Path:
    """A tiny Hugging Face tokenizer folder with ChatML special tokens and a chat template."""
    tok = HFTok(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    specials = [EOT_TEXT, "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(["hello there, how are you", "user assistant system"] * 20,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    folder = tmp_path / "chatml"
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, "eos_token": "<|im_end|>"}))
    return folder


def test_a_hugging_face_chat_template_is_used_and_saved(tmp_path: Path) -> None:
    folder = _chatml_folder(tmp_path)
    row = {"messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hello"},
                        {"role": "assistant", "content": "hi"}, {"role": "user", "content": "how are you"},
                        {"role": "assistant", "content": "fine"}]}
    data = _prepare(tmp_path, _jsonl(tmp_path / "chat.jsonl", [row]), tokenizer=str(folder), val_fraction=0.0)
    tok = data.tokenizer
    start, end = tok.special_tokens["<|im_start|>"], tok.special_tokens["<|im_end|>"]
    ids, mask = _examples(data, "train")[0]
    assert ids.count(start) == 5 and ids.count(end) == 5  # special tokens as their ids, not as text
    trained = [i for i, m in zip(ids, mask, strict=True) if m]
    assert tok.decode(trained) == "hi<|im_end|>\nfine<|im_end|>\n"
    reloaded = load_tokenizer(data.dir)  # the template travels with the tokenizer into checkpoints
    assert reloaded.chat_template["template"] == CHATML
    template = ChatTemplate(reloaded)
    assert template.stop_ids == {reloaded.eot_id, end}
    prompt = template.prompt([{"role": "user", "content": "hello"}])
    assert tok.decode(prompt) == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    # data.chat_template=default ignores the tokenizer's own template
    plain = _prepare(tmp_path, _jsonl(tmp_path / "chat.jsonl", [row]), tokenizer=str(folder), val_fraction=0.0,
                     chat_template="default")
    assert plain.tokenizer.chat_template is None and start not in _examples(plain, "train")[0][0]


@pytest.mark.parametrize("template,message", [
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "the chat template failed"),  # the sandbox refuses
    ("{% for m in messages %}{{ m['content'] }}{% endfor %}{{ messages | length }}", "incrementally"),
    ("{% for m in messages %}", "not valid Jinja"),
    ("{{ raise_exception('no system messages') }}", "no system messages"),
])
def test_a_template_that_cannot_serve_is_refused(tmp_path: Path, template: str, message: str) -> None:
    folder = _chatml_folder(tmp_path, template)
    with pytest.raises(ValueError, match=message):
        _prepare(tmp_path, _jsonl(tmp_path / "chat.jsonl", SHAPES), tokenizer=str(folder))


def test_the_default_template_encodes_with_every_tokenizer_kind() -> None:
    messages = conversation(SHAPES[2])
    for tok in (build_tokenizer("char", ["add 2 and 3 5 <|user|>\n<|assistant|>\n"]), build_tokenizer("byte")):
        ids, mask = ChatTemplate(tok).encode(messages)
        assert ids[-1] == tok.eot_id and sum(mask) == 2


def test_examples_longer_than_a_row_are_counted() -> None:
    offsets = np.array([0, 10, 43, 77, 90])  # lengths 10, 33, 34, 13
    assert cut_note(offsets, 32) == ("1 of 4 training examples are longer than model.block_size + 1 = 33 tokens "
                                     "(the longest has 34): their ends are cut and not trained on")
    assert cut_note(offsets, 33) is None
