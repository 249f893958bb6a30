"""A synthetic reasoning task whose steps have easy and hard first tokens.

A problem is a start number and a chain of operations modulo 100. The solution writes one
step per operation, and each step *opens with its result*: ``"42 = 37 + 5"``. The first
token of a step is therefore its key decision, as "Wait" or a number is in real reasoning,
so first-token entropy can tell hard steps (multiplications) from easy ones (additions,
subtractions, restating the start).
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass

MODULUS = 100
DELIMITER = "\n\n"
_OPS = {"add": ("+", "add {d}"), "sub": ("-", "subtract {d}"), "mul": ("*", "multiply by {d}")}


@dataclass(frozen=True)
class Problem:
    """Invariant: ``answer`` is ``start`` with ``ops`` applied in order, modulo 100."""

    id: str
    start: int
    ops: tuple[tuple[str, int], ...]

    @property
    def question(self) -> str:
        ops = ", then ".join(_OPS[op][1].format(d=d) for op, d in self.ops)
        return f"Start with {self.start}, then {ops}. Work modulo {MODULUS}. What is the result?"

    def values(self) -> list[int]:
        """The running value after each operation."""
        value, out = self.start, []
        for op, d in self.ops:
            value = apply(op, value, d)
            out.append(value)
        return out

    @property
    def answer(self) -> int:
        return self.values()[-1] if self.ops else self.start

    def steps(self) -> list[str]:
        """Reasoning steps, each opening with its result (no delimiters)."""
        lines = [f"{self.start} is the start"]
        previous = self.start
        for (op, d), value in zip(self.ops, self.values(), strict=True):
            lines.append(f"{value} = {previous} {_OPS[op][0]} {d}")
            previous = value
        return lines

    def hard_steps(self) -> list[bool]:
        """Per step: is it a multiplication (the steps the small model should route)?"""
        return [False] + [op == "mul" for op, _ in self.ops]

    def thinking(self) -> str:
        """The thinking text as the engine's transcript holds it: steps plus delimiters."""
        return "".join(step + DELIMITER for step in self.steps())

    def final_answer(self) -> str:
        return f"The answer is {self.answer}."

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.question}]

    def to_dict(self) -> dict[str, object]:
        return {"id": self.id, "problem": self.question, "answer": str(self.answer)}


def apply(op: str, value: int, operand: int) -> int:
    if op == "add":
        return (value + operand) % MODULUS
    if op == "sub":
        return (value - operand) % MODULUS
    if op == "mul":
        return (value * operand) % MODULUS
    raise ValueError(f"unknown operation {op!r}")


def make_problem(rng: random.Random, index: int, split: str, mul_fraction: float = 0.35) -> Problem:
    n_ops = rng.randint(3, 7)
    ops = []
    for _ in range(n_ops):
        if rng.random() < mul_fraction:
            ops.append(("mul", rng.randint(2, 9)))
        else:
            ops.append((rng.choice(["add", "sub"]), rng.randint(1, 9)))
    return Problem(f"{split}-{index}", rng.randint(0, MODULUS - 1), tuple(ops))


SPLIT_SEEDS = {"train": 1, "validation": 2, "test": 3}
MAX_HELD_OUT = 1000  # validation and test hold at most this many problems each


def make_split(split: str, n: int) -> list[Problem]:
    """A deterministic split. Training never contains a validation or test problem, and
    test never contains a validation problem."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLIT_SEEDS)}")
    if n < 0 or (split != "train" and n > MAX_HELD_OUT):
        raise ValueError(f"n must be in [0, {MAX_HELD_OUT}] for {split}, got {n}")
    excluded = {"train": ("validation", "test"), "validation": (), "test": ("validation",)}[split]
    seen: set[_Key] = set().union(*(_held_out_keys(s) for s in excluded))
    rng = random.Random(SPLIT_SEEDS[split])
    problems: list[Problem] = []
    while len(problems) < n:
        problem = make_problem(rng, len(problems), split)
        key = (problem.start, problem.ops)
        if key not in seen:
            seen.add(key)
            problems.append(problem)
    return problems


_Key = tuple[int, tuple[tuple[str, int], ...]]


@functools.cache
def _held_out_keys(split: str) -> frozenset[_Key]:
    return frozenset((p.start, p.ops) for p in make_split(split, MAX_HELD_OUT))


_LAST_INT = re.compile(r"-?\d+")


def extract_answer(text: str) -> int | None:
    """The last integer in ``text`` (the answer's convention), or ``None``."""
    found = _LAST_INT.findall(text)
    return int(found[-1]) if found else None


def verify(text: str, expected: int | str) -> bool:
    """Whether ``text`` states the expected answer as its last integer."""
    got = extract_answer(text)
    return got is not None and got == int(expected)
