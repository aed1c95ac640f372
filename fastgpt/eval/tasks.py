"""Benchmark tasks: their Hugging Face hub data sets and local JSONL formats, as ``MCQItem`` lists.

Every task turns one record into a question (context, choices, label) the way
lm-evaluation-harness formats it for zero-shot scoring (``fastgpt.eval.mcq`` scores it). Records come
from the hub (``datasets``, needs network) or from a local JSONL file, one JSON object a line.

Every task reads the common format ``{"context": "...", "choices": ["...", ...], "label": 0}``:
each choice is scored as the continuation ``" " + choice`` of the context (no space when the
context is empty; then it is scored after the end-of-text token). ``context`` may also be a list
with one context per choice. Besides that, each task reads its hub data set's own fields, so a
dump of the hub split (``Dataset.to_json``) works as is:

* ``hellaswag``: ``ctx`` (or ``activity_label``, ``ctx_a``, ``ctx_b``), ``endings``, ``label``.
  Hub rows become ``"{activity_label}: {ctx_a} {ctx_b.capitalize()}"``; a ``ctx`` is used as
  written. WikiHow markup is cleaned from contexts and endings (``" [title]"`` becomes ``". "``,
  other ``[...]`` tags are dropped, double spaces collapse).
* ``arc_easy``, ``arc_challenge``: ``question``, ``choices`` (``{"text": [...], "label": [...]}``),
  ``answerKey``; context ``"Question: {question}\\nAnswer:"``.
* ``winogrande``: ``sentence`` (with one ``_``), ``option1``, ``option2``, ``answer`` (1 or 2);
  each option fills the blank in its context, and the rest of the sentence is scored.
* ``piqa``: ``goal``, ``sol1``, ``sol2``, ``label``; context ``"Question: {goal}\\nAnswer:"``.
* ``boolq``: ``passage``, ``question``, ``label`` (or ``answer``: true/false); context
  ``"{passage}\\nQuestion: {question}?\\nAnswer:"``, choices ``no``, ``yes``.
* ``openbookqa``: ``question_stem``, ``choices`` (as ARC), ``answerKey``.
* ``copa``: ``premise``, ``choice1``, ``choice2``, ``question`` (cause or effect), ``label``;
  context ``"{premise without its final period} because"`` (or ``therefore``), the choices
  start lower-case.
* ``commonsense_qa``: ``question``, ``choices`` (as ARC), ``answerKey``; the question and its
  lettered choices form the context, and the letters are scored.
* ``mmlu``: ``question``, ``choices`` (a list), ``answer`` (index or letter), optional
  ``subject``; the lettered choices are in the context and the letters A-D are scored.
* ``truthful_qa``: ``question``, ``mc1_targets`` (``{"choices": [...], "labels": [1, 0, ...]}``);
  the TruthfulQA paper's six-question prompt comes first (the MC1 setting).
* ``race``: ``article``, ``question``, ``options``, ``answer`` (a letter), one question per record;
  or the harness's hub layout, ``article`` and ``problems`` (all questions of an article), where
  the last question is asked after the earlier ones with their answers.
* ``blimp``: ``sentence_good``, ``sentence_bad``; each sentence is scored whole, the good one
  should win. The hub task covers all 67 BLiMP paradigms.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastgpt.eval.mcq import MCQItem
from fastgpt.messages import cut

LETTERS = "ABCDEFGHIJ"
TRUTHFULQA_PROMPT = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain."
)


@dataclass(frozen=True)
class Task:
    """A benchmark: where its hub data lives and how one record becomes a question."""

    name: str
    hub: str  # data set id on the Hugging Face hub
    configs: tuple[str | None, ...] | None  # configurations to concatenate; None = all of them
    split: str
    fields: str  # the record fields ``convert`` reads, for error messages
    convert: Callable[[dict[str, Any]], MCQItem]


# ----------------------------------------------------------------------------- converters
def _hellaswag_clean(text: str) -> str:
    text = re.sub(r"\[.*?\]", "", text.strip().replace(" [title]", ". "))
    return text.replace("  ", " ")


def _hellaswag(r: dict) -> MCQItem:
    ctx = r["ctx"] if "ctx_a" not in r else f"{r['activity_label']}: {r['ctx_a']} {r['ctx_b'].capitalize()}"
    return MCQItem(_hellaswag_clean(ctx), [_hellaswag_clean(e) for e in r["endings"]], int(r["label"]))


def _keyed_choices(r: dict, key: str = "answerKey") -> tuple[list[str], int]:
    """ARC-style ``choices`` {"text", "label"} and the index of ``r[key]`` among the labels."""
    labels = [str(x).strip() for x in r["choices"]["label"]]
    answer = str(r[key]).strip()
    if answer not in labels:
        raise ValueError(f"answer {answer!r} is not one of the choice labels {labels}")
    return list(r["choices"]["text"]), labels.index(answer)


def _arc(r: dict) -> MCQItem:
    choices, label = _keyed_choices(r)
    return MCQItem(f"Question: {r['question']}\nAnswer:", choices, label)


def _winogrande(r: dict) -> MCQItem:
    sentence = r["sentence"]
    blank = sentence.index("_")
    rest = sentence[blank + 1 :].strip()
    options = [r["option1"], r["option2"]]
    return MCQItem([sentence[:blank] + o for o in options], [rest, rest], int(r["answer"]) - 1)


def _piqa(r: dict) -> MCQItem:
    return MCQItem(f"Question: {r['goal']}\nAnswer:", [r["sol1"], r["sol2"]], int(r["label"]))


def _boolq(r: dict) -> MCQItem:
    label = int(r["label"]) if "label" in r else int(bool(r["answer"]))
    return MCQItem(f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:", ["no", "yes"], label)


def _openbookqa(r: dict) -> MCQItem:
    choices, label = _keyed_choices(r)
    return MCQItem(r["question_stem"], choices, label)


def _copa(r: dict) -> MCQItem:
    connector = {"cause": "because", "effect": "therefore"}[r["question"]]
    premise = r["premise"].strip()
    context = (premise[:-1] if premise.endswith(".") else premise) + f" {connector}"
    choices = [c[:1].lower() + c[1:] for c in (r["choice1"], r["choice2"])]
    return MCQItem(context, choices, int(r["label"]))


def _lettered(question: str, choices: list[str]) -> str:
    return question + "".join(f"\n{LETTERS[i]}. {c}" for i, c in enumerate(choices)) + "\nAnswer:"


def _commonsense_qa(r: dict) -> MCQItem:
    choices, label = _keyed_choices(r)
    return MCQItem(_lettered(f"Question: {r['question'].strip()}", choices), list(LETTERS[: len(choices)]), label)


def _mmlu(r: dict) -> MCQItem:
    subject = f" about {r['subject'].replace('_', ' ')}" if r.get("subject") else ""
    header = f"The following are multiple choice questions (with answers){subject}.\n\n"
    answer = r["answer"]
    label = LETTERS.index(answer.strip()) if isinstance(answer, str) and not answer.isdigit() else int(answer)
    choices = list(r["choices"])
    return MCQItem(header + _lettered(r["question"].strip(), choices), list(LETTERS[: len(choices)]), label)


def _truthful_qa(r: dict) -> MCQItem:
    targets = r["mc1_targets"]
    return MCQItem(f"{TRUTHFULQA_PROMPT}\n\nQ: {r['question']}\nA:", list(targets["choices"]),
                   list(targets["labels"]).index(1))


def _race_answered(problem: dict) -> str:
    """An earlier question of the article with its answer filled in."""
    answer = problem["options"][LETTERS.index(problem["answer"])]
    if "_" in problem["question"]:
        return problem["question"].replace("_", answer, 1).strip() + "\n"
    return f"Question: {problem['question']}\nAnswer: {answer}\n"


def _race(r: dict) -> MCQItem:
    if "problems" in r:
        problems = r["problems"] if isinstance(r["problems"], list) else ast.literal_eval(r["problems"])
        earlier, last = problems[:-1], problems[-1]
    else:
        earlier, last = [], r
    context = f"Article: {r['article']}\n\n" + "".join(_race_answered(p) for p in earlier)
    question = last["question"]
    if "_" in question:  # a blank to fill: the options continue the text before it
        context += question[: question.index("_")].rstrip()
    else:
        context += f"Question: {question}\nAnswer:"
    return MCQItem(context, list(last["options"]), LETTERS.index(last["answer"]))


def _blimp(r: dict) -> MCQItem:
    return MCQItem("", [r["sentence_good"], r["sentence_bad"]], 0)


def _common(r: dict) -> MCQItem:
    context = r["context"]
    if not isinstance(context, str | list):
        raise ValueError(f"context must be a string or a list of strings, got {type(context).__name__}")
    return MCQItem(context, list(r["choices"]), int(r["label"]))


_ARC_FIELDS = "question, choices {text, label}, answerKey"
TASKS: dict[str, Task] = {t.name: t for t in [
    Task("hellaswag", "Rowan/hellaswag", (None,), "validation", "ctx, endings, label", _hellaswag),
    Task("arc_easy", "allenai/ai2_arc", ("ARC-Easy",), "test", _ARC_FIELDS, _arc),
    Task("arc_challenge", "allenai/ai2_arc", ("ARC-Challenge",), "test", _ARC_FIELDS, _arc),
    Task("winogrande", "allenai/winogrande", ("winogrande_xl",), "validation",
         "sentence, option1, option2, answer", _winogrande),
    Task("piqa", "baber/piqa", (None,), "validation", "goal, sol1, sol2, label", _piqa),
    Task("boolq", "aps/super_glue", ("boolq",), "validation", "passage, question, label", _boolq),
    Task("openbookqa", "allenai/openbookqa", ("main",), "test", "question_stem, choices {text, label}, answerKey",
         _openbookqa),
    Task("copa", "aps/super_glue", ("copa",), "validation", "premise, choice1, choice2, question, label", _copa),
    Task("commonsense_qa", "tau/commonsense_qa", (None,), "validation", _ARC_FIELDS, _commonsense_qa),
    Task("mmlu", "cais/mmlu", ("all",), "test", "question, choices, answer", _mmlu),
    Task("truthful_qa", "truthfulqa/truthful_qa", ("multiple_choice",), "validation",
         "question, mc1_targets {choices, labels}", _truthful_qa),
    Task("race", "EleutherAI/race", ("high",), "test", "article, question, options, answer", _race),
    Task("blimp", "nyu-mll/blimp", None, "train", "sentence_good, sentence_bad", _blimp),
]}  # fmt: skip


# -------------------------------------------------------------------------------- loading
def get_task(name: str) -> Task:
    """The task called ``name``; unknown names raise ValueError listing the tasks."""
    if name not in TASKS:
        raise ValueError(f"unknown task {cut(name)}; tasks: {', '.join(TASKS)}")
    return TASKS[name]


def convert(task: Task, record: dict[str, Any]) -> MCQItem:
    """One record (common format, or the task's own fields) as a question."""
    return _common(record) if "context" in record and "choices" in record else task.convert(record)


def read_jsonl(task: Task, path: str | Path) -> list[MCQItem]:
    """The questions in a local JSONL file (the module docstring lists the formats)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{task.name} data file {str(path)!r} does not exist")
    items = []
    with open(path, encoding="utf-8-sig") as f:  # a byte-order mark opening the file is dropped
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                items.append(convert(task, record))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            except RecursionError:  # json's decoder on deeply nested arrays or objects
                raise ValueError(f"{path}:{lineno}: nested too deeply to read") from None
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise ValueError(
                    f"{path}:{lineno}: not a {task.name} record ({type(exc).__name__}: {exc}); expected fields "
                    f"{task.fields}, or context, choices, label; got {keys}"
                ) from None
    if not items:
        raise ValueError(f"{task.name} data file {str(path)!r} holds no records")
    return items


def eval_cli_setting(task: str) -> str:
    """How ``python -m fastgpt.eval`` is given a local file for ``task``."""
    return f"--data {task}=path.jsonl"


def hub_items(task: Task, setting: Callable[[str], str] = eval_cli_setting) -> list[MCQItem]:
    """The task's evaluation split from the Hugging Face hub (needs ``datasets`` and network).

    ``setting(task name)`` is how the command in use takes a local file instead, for the errors.
    """
    hint = f"without network, pass a local JSONL file: {setting(task.name)} (see fastgpt.eval.tasks)"
    try:
        import datasets
    except ImportError:
        raise ValueError(f"task {task.name!r} needs the datasets package to load {task.hub}; {hint}") from None
    try:
        configs = task.configs if task.configs is not None else datasets.get_dataset_config_names(task.hub)
        records = [r for config in configs for r in datasets.load_dataset(task.hub, config, split=task.split)]
    except Exception as exc:  # the hub client raises many unrelated error types
        reason = " ".join(str(exc).split())[:160]
        raise ValueError(f"task {task.name!r}: could not load {task.hub} from the Hugging Face hub "
                         f"({type(exc).__name__}: {reason}); {hint}") from None
    return [convert(task, r) for r in records]


def spread(count: int, limit: int | None) -> list[int]:
    """``limit`` indices spread evenly over ``range(count)`` (all of them when limit is None or larger)."""
    if limit is None or limit >= count:
        return list(range(count))
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    return [i * count // limit for i in range(limit)]


def load_items(name: str, path: str | Path | None = None, limit: int | None = None,
               setting: Callable[[str], str] = eval_cli_setting) -> list[MCQItem]:
    """Task ``name``'s questions, from ``path`` (JSONL) or else the hub (``hub_items``, ``setting``).

    With ``limit``, that many questions spread evenly over the set (a subject-sorted set such as
    MMLU stays covered), in their original order.
    """
    task = get_task(name)
    items = read_jsonl(task, path) if path is not None else hub_items(task, setting)
    return [items[i] for i in spread(len(items), limit)]
