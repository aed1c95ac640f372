"""The eval CLI (val loss, benchmarks, JSON output, errors) and benchmarks logged during training."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_run import SMALL, WORDS, tiny

from fastgpt.checkpoint import load
from fastgpt.eval import evaluate as eval_mod
from fastgpt.eval.evaluate import evaluate_loss
from fastgpt.train import cli as train_mod

TINY = tiny(*SMALL, "train.batch_size=4", "train.eval_iters=2", "train.log_interval=1", "optim.warmup_iters=2",
            "optim.lr=0.01", drop=("train.device", "train.max_iters"))


def _question(i: int) -> dict:
    words = [WORDS[(i * 5 + j) % len(WORDS)] for j in range(6)]
    return {"context": " ".join(words[:4]), "choices": [words[4], words[5], "ghost"], "label": i % 3}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny byte-level run trained 4 steps, scoring 5 local piqa-format questions at each eval."""
    tmp = tmp_path_factory.mktemp("eval")
    (tmp / "corpus.txt").write_text("\n".join(" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(9))
                                              for i in range(300)))
    (tmp / "questions.jsonl").write_text("".join(json.dumps(_question(i)) + "\n" for i in range(12)))
    train_mod.main([*TINY, f"data.dataset={tmp / 'corpus.txt'}", f"data.cache_dir={tmp / 'cache'}",
                    "data.tokenizer=byte", f"train.out_dir={tmp / 'out'}", "train.max_iters=4", "train.eval_interval=2",
                    "eval.mcq_benchmarks=[piqa]", f"eval.data={{piqa: {tmp / 'questions.jsonl'}}}",
                    "eval.num_samples=5"])  # fmt: skip
    return tmp


def test_training_logs_benchmarks_at_each_eval(run: Path) -> None:
    events = [json.loads(line) for line in (run / "out" / "metrics.jsonl").read_text().splitlines()]
    scored = [e for e in events if "piqa_acc" in e]
    assert [e["iter"] for e in scored] == [0, 2, 4]
    assert all(set(e) == {"iter", "piqa_acc", "piqa_acc_norm"} for e in scored)
    assert all(v in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0) for e in scored for v in (e["piqa_acc"], e["piqa_acc_norm"]))


def test_eval_cli_writes_table_and_json(run: Path, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    monkeypatch.chdir(run)  # val_loss reads the checkpoint's dataset only inside the current folder
    out = run / "results.json"
    assert eval_mod.main(["--checkpoint", str(run / "out"), "--tasks", "val_loss,piqa", "--data",
                          f"piqa={run / 'questions.jsonl'}", "--limit", "7", "--batch_size", "3",
                          "--output", str(out)]) == 0  # fmt: skip
    results = json.loads(out.read_text())
    assert set(results) == {"val_loss", "piqa"} and results["piqa"]["n"] == 7
    assert results["val_loss"]["perplexity"] == pytest.approx(math.exp(results["val_loss"]["loss"]))
    assert results["val_loss"]["tokens"] == 7 * 32
    table = capsys.readouterr().out
    assert "piqa" in table and "acc_norm" in table and "perplexity" in table


def test_val_loss_matches_window_by_window_reference(run: Path, tmp_path: Path) -> None:
    model, tok = load(run / "out")
    tokens = np.asarray(tok.encode("the castle walk by night " * 30), dtype=np.int64)  # 750 tokens: 24 windows
    got = evaluate_loss(model, tokens, batch_size=5)
    total, count = 0.0, 0
    for start in range(0, len(tokens) - 1, 32):
        window = torch.from_numpy(tokens[start : start + 33])[None]
        with torch.no_grad():
            _, loss = model(window[:, :-1], window[:, 1:])
        total, count = total + loss.item() * (window.shape[1] - 1), count + window.shape[1] - 1
    assert got["tokens"] == count == len(tokens) - 1
    assert got["loss"] == pytest.approx(total / count, rel=1e-5)
    # --data val_loss=FILE reads any source and scores all of it
    (tmp_path / "other.txt").write_text("the castle walk by night " * 30)
    assert eval_mod.main(["--checkpoint", str(run / "out"), "--data", f"val_loss={tmp_path / 'other.txt'}",
                          "--output", str(tmp_path / "r.json")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "r.json").read_text())["val_loss"]["tokens"] == len(tokens)  # + the eot


def test_eval_skips_questions_the_tokenizer_cannot_encode(run: Path, tmp_path: Path, capsys) -> None:
    char_run = tmp_path / "char"  # a char vocabulary: the corpus's letters only
    train_mod.main([*TINY, f"data.dataset={run / 'corpus.txt'}", f"data.cache_dir={tmp_path / 'cache'}",
                    f"train.out_dir={char_run}", "train.max_iters=1"])
    questions = [_question(i) for i in range(6)] + [{"context": "the king", "choices": ["walk", "zebra"], "label": 0}]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    capsys.readouterr()
    assert eval_mod.main(["--checkpoint", str(char_run), "--data", f"val_loss={run / 'corpus.txt'}", "--data",
                          f"hellaswag={tmp_path / 'q.jsonl'}", "--output", str(tmp_path / "r.json")]) == 0
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["hellaswag"]["n"] == 6 and results["hellaswag"]["skipped"] == 1 and "loss" in results["val_loss"]
    captured = capsys.readouterr()
    assert "hellaswag: 1 of 7 questions skipped, they do not encode with the checkpoint's tokenizer (char)" in \
        captured.err and "'z' (U+007A)" in captured.err
    assert "skipped" in captured.out  # the table counts them too
    (tmp_path / "z.jsonl").write_text(json.dumps(questions[-1]) + "\n")
    with pytest.raises(ValueError, match=r"^hellaswag: all 1 questions do not encode"):
        eval_mod.main(["--checkpoint", str(char_run), "--data", f"hellaswag={tmp_path / 'z.jsonl'}"])


def test_training_skips_unencodable_questions_and_fails_when_none_encode(run: Path, tmp_path: Path, capsys) -> None:
    questions = [_question(i) for i in range(4)] + [{"context": "the king", "choices": ["walk", "zebra"], "label": 0}]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    train_mod.main([*TINY, f"data.dataset={run / 'corpus.txt'}", f"data.cache_dir={run / 'cache'}",
                    f"train.out_dir={tmp_path / 'ok'}", "eval.mcq_benchmarks=piqa", "train.max_iters=1",
                    f"eval.data={{piqa: {tmp_path / 'q.jsonl'}}}"])  # fmt: skip
    assert "eval.mcq_benchmarks: piqa: 1 of 5 questions skipped, they do not encode with data.tokenizer='char'" \
        in capsys.readouterr().err
    events = [json.loads(line) for line in (tmp_path / "ok" / "metrics.jsonl").read_text().splitlines()]
    assert [e["iter"] for e in events if "piqa_acc" in e] == [0, 1]
    (tmp_path / "q.jsonl").write_text(json.dumps(questions[-1]))
    with pytest.raises(ValueError, match="eval.mcq_benchmarks: piqa: all 1 questions do not encode with data"):
        train_mod.main([*TINY, f"data.dataset={run / 'corpus.txt'}", f"data.cache_dir={run / 'cache'}",
                        f"train.out_dir={tmp_path / 'out'}", "eval.mcq_benchmarks=piqa",
                        f"eval.data={{piqa: {tmp_path / 'q.jsonl'}}}"])  # fmt: skip


@pytest.mark.parametrize(
    "args,message",
    [
        (["--tasks", "hellaswag,winogrand"], "error: unknown task 'winogrand'; tasks: hellaswag, arc_easy"),
        (["--tasks", "hellaswag"], "--data hellaswag=path.jsonl"),
    ],
)
def test_cli_errors_are_one_line_exit_2(run: Path, args: list[str], message: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "fastgpt.eval", "--checkpoint", str(run / "out"), *args],
                          capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr


def test_bits_per_byte_in_eval_json_and_in_training_metrics(run: Path, tmp_path: Path) -> None:
    (tmp_path / "other.txt").write_text("the castle walk by night " * 30)
    out = tmp_path / "r.json"
    assert eval_mod.main(["--checkpoint", str(run / "out"), "--data", f"val_loss={tmp_path / 'other.txt'}",
                          "--output", str(out)]) == 0  # fmt: skip
    got = json.loads(out.read_text())["val_loss"]
    # byte tokens of ASCII text: every scored token but the final eot is one byte and one character
    assert got["bytes"] == got["tokens"] - 1
    want = got["loss"] * got["tokens"] / math.log(2) / (got["tokens"] - 1)
    assert got["bits_per_byte"] == pytest.approx(want, rel=1e-9) == pytest.approx(got["bits_per_char"], rel=1e-12)
    events = [json.loads(line) for line in (run / "out" / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in events if "val_loss" in e]
    assert [e["iter"] for e in evals] == [0, 2, 4] and all("val_bpb" in e and "train_bpb" in e for e in evals)
    # one byte per ASCII token (the corpus is one document: at most one eot): bpb is the loss in bits
    assert all(e["val_bpb"] == pytest.approx(e["val_loss"] / math.log(2), rel=0.01) for e in evals)


def test_training_hint_names_the_training_setting(run: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"pass a local JSONL file: 'eval.data=\{hellaswag: path.jsonl\}'") as info:
        train_mod.main([*TINY, f"data.dataset={run / 'corpus.txt'}", f"data.cache_dir={run / 'cache'}",
                        f"train.out_dir={tmp_path / 'out'}", "eval.mcq_benchmarks=hellaswag"])
    assert "--data" not in str(info.value)
