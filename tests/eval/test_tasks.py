"""Each task's record -> question conversion, local JSONL reading and its errors, hub errors offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastgpt.eval.mcq import MCQItem
from fastgpt.eval.tasks import TASKS, convert, get_task, hub_items, load_items, spread

ARC_CHOICES = {"text": ["dog", "cat", "cow"], "label": ["A", "B", "C"]}
RECORDS = {
    "hellaswag": (
        {"activity_label": "Roof", "ctx_a": "A man [header] climbs.", "ctx_b": "he", "endings": ["x [title] y", "z"],
         "label": "1"},
        MCQItem("Roof: A man climbs. He", ["x. y", "z"], 1),
    ),
    "arc_easy": ({"question": "Which?", "choices": ARC_CHOICES, "answerKey": "B"},
                 MCQItem("Question: Which?\nAnswer:", ["dog", "cat", "cow"], 1)),
    "winogrande": ({"sentence": "Tom hit Al because _ was angry.", "option1": "Tom", "option2": "Al", "answer": "2"},
                   MCQItem(["Tom hit Al because Tom", "Tom hit Al because Al"], ["was angry.", "was angry."], 1)),
    "piqa": ({"goal": "Open a jar", "sol1": "twist", "sol2": "bite", "label": 0},
             MCQItem("Question: Open a jar\nAnswer:", ["twist", "bite"], 0)),
    "boolq": ({"passage": "Sky is blue.", "question": "is the sky blue", "answer": True},
              MCQItem("Sky is blue.\nQuestion: is the sky blue?\nAnswer:", ["no", "yes"], 1)),
    "openbookqa": ({"question_stem": "Plants need", "choices": ARC_CHOICES, "answerKey": "C"},
                   MCQItem("Plants need", ["dog", "cat", "cow"], 2)),
    "copa": ({"premise": "The man fell.", "choice1": "He slipped.", "choice2": "He sang.", "question": "cause",
              "label": 0},
             MCQItem("The man fell because", ["he slipped.", "he sang."], 0)),
    "commonsense_qa": ({"question": " Pets? ", "choices": ARC_CHOICES, "answerKey": "A"},
                       MCQItem("Question: Pets?\nA. dog\nB. cat\nC. cow\nAnswer:", ["A", "B", "C"], 0)),
    "mmlu": ({"question": "2+2?", "choices": ["3", "4"], "answer": 1, "subject": "elementary_math"},
             MCQItem("The following are multiple choice questions (with answers) about elementary math.\n\n"
                     "2+2?\nA. 3\nB. 4\nAnswer:", ["A", "B"], 1)),
    "race": ({"article": "Bo ran.", "problems": repr([
                {"question": "Who ran?", "options": ["Bo", "Al"], "answer": "A"},
                {"question": "Bo _ .", "options": ["ran", "sat"], "answer": "A"}])},
             MCQItem("Article: Bo ran.\n\nQuestion: Who ran?\nAnswer: Bo\nBo", ["ran", "sat"], 0)),
    "blimp": ({"sentence_good": "Cats purr.", "sentence_bad": "Cats purrs."},
              MCQItem("", ["Cats purr.", "Cats purrs."], 0)),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_records_convert_like_the_harness(name: str) -> None:
    record, expected = RECORDS[name]
    assert convert(get_task(name), record) == expected


def test_truthful_qa_puts_the_paper_prompt_first() -> None:
    item = convert(get_task("truthful_qa"), {"question": "Why?", "mc1_targets": {"choices": ["a", "b"],
                                                                                 "labels": [0, 1]}})
    assert item.context.startswith("Q: What is human life expectancy") and item.context.endswith("\n\nQ: Why?\nA:")
    assert item.label == 1


def test_every_task_reads_the_common_format(tmp_path: Path) -> None:
    path = tmp_path / "common.jsonl"
    path.write_text(json.dumps({"context": "2 + 2 =", "choices": ["4", "5"], "label": 0}) + "\n\n")
    for name in TASKS:
        assert load_items(name, path) == [MCQItem("2 + 2 =", ["4", "5"], 0)]


def test_limit_spreads_over_the_set(tmp_path: Path) -> None:
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"context": f"q{i}", "choices": ["a", "b"], "label": 0}) + "\n"
                            for i in range(10)))
    assert [it.context for it in load_items("piqa", path, limit=4)] == ["q0", "q2", "q5", "q7"]
    assert spread(3, 10) == [0, 1, 2] and spread(5, None) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "line,message",
    [
        ("{not json", "many.jsonl:2: not valid JSON"),
        (json.dumps({"goal": "x"}), "many.jsonl:2: not a piqa record (KeyError: 'sol1'); expected fields goal, sol1"),
        (json.dumps({"context": "q", "choices": ["a", "b"], "label": 5}), "label 5 is not the index"),
    ],
)
def test_bad_local_records_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "many.jsonl"
    path.write_text(json.dumps({"context": "q", "choices": ["a", "b"], "label": 0}) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_items("piqa", path)


def test_missing_file_unknown_task_and_offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_items("piqa", tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="unknown task 'hellaswog'; tasks: hellaswag, arc_easy"):
        get_task("hellaswog")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"could not load Rowan/hellaswag .*--data hellaswag=path.jsonl"):
        hub_items(get_task("hellaswag"))
