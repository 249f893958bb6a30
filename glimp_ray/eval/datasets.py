"""Evaluation datasets and their answer checkers.

``demo`` is the synthetic task (checked by its own verifier). Any JSONL file with
``problem`` and ``answer`` fields (an ``id`` is optional) is a math dataset, checked with
math-verify when it is installed and by comparing the last number otherwise.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from glimp_ray.demo import task
from glimp_ray.prompts import PLACEHOLDER, apply_template, resolve_template

Checker = Callable[[str, str], bool]


@dataclass(frozen=True)
class Example:
    id: str
    problem: str
    answer: str
    gold_steps: tuple[str, ...] = ()  # known for the synthetic task only
    hard_steps: tuple[bool, ...] = ()  # per gold step: one the task calls hard (synthetic task)
    template: str = PLACEHOLDER  # how the problem becomes the user's message (glimp_ray.prompts)

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": apply_template(self.template, self.problem)}]


@dataclass(frozen=True)
class Dataset:
    name: str
    examples: list[Example]
    check: Checker


def demo_examples(split: str, n: int) -> list[Example]:
    return [
        Example(
            p.id,
            p.question,
            str(p.answer),
            tuple(step + task.DELIMITER for step in p.steps()),
            tuple(p.hard_steps()),
        )
        for p in task.make_split(split, n)
    ]


def check_demo(response: str, answer: str) -> bool:
    return task.verify(response, answer)


def check_math(response: str, answer: str) -> bool:
    """math-verify when installed (handles \\boxed{}, fractions, LaTeX), else last number."""
    try:
        from math_verify import parse, verify
    except ImportError:
        got = task.extract_answer(response)
        expected = task.extract_answer(answer)
        return got is not None and got == expected
    return bool(verify(parse(f"${answer}$"), parse(response)))


def load_jsonl(path: str | Path, limit: int | None = None) -> list[Example]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"dataset not found: {path}")
    examples = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not valid JSON: {exc}") from None
        if not isinstance(row, dict) or "problem" not in row or "answer" not in row:
            raise ValueError(f"{path}:{number}: each row needs 'problem' and 'answer'")
        examples.append(Example(str(row.get("id", number)), str(row["problem"]), str(row["answer"])))
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise ValueError(f"{path}: no examples")
    return examples


def load_dataset(spec: str, split: str = "test", limit: int | None = None, template: str | None = None) -> Dataset:
    """``demo`` (with ``split`` validation|test) or a JSONL path; ``template``: a prompt template
    (:func:`glimp_ray.prompts.resolve_template`), the bare problem by default."""
    text = resolve_template(template)
    if spec == "demo":
        examples = demo_examples(split, limit or 300)
        name, check = f"demo-{split}", check_demo
    else:
        examples, name, check = load_jsonl(spec, limit), Path(spec).stem, check_math
    return Dataset(name, [dataclasses.replace(e, template=text) for e in examples], check)
