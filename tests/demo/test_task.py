from __future__ import annotations

import random

import pytest

from glimp_ray.demo.task import Problem, apply, extract_answer, make_problem, make_split, verify


def test_answer_follows_the_operations() -> None:
    problem = Problem("p", 37, (("add", 5), ("mul", 3), ("sub", 8)))
    assert problem.values() == [42, 26, 18]
    assert problem.answer == 18
    assert problem.steps() == ["37 is the start", "42 = 37 + 5", "26 = 42 * 3", "18 = 26 - 8"]
    assert problem.hard_steps() == [False, False, True, False]
    assert problem.thinking() == "37 is the start\n\n42 = 37 + 5\n\n26 = 42 * 3\n\n18 = 26 - 8\n\n"
    assert problem.question.startswith("Start with 37, then add 5, then multiply by 3, then subtract 8.")
    assert problem.final_answer() == "The answer is 18."


def test_each_step_opens_with_its_result() -> None:
    rng = random.Random(0)
    for i in range(200):
        problem = make_problem(rng, i, "x")
        firsts = [int(step.split()[0]) for step in problem.steps()]
        assert firsts == [problem.start, *problem.values()]


def test_splits_are_deterministic_and_disjoint() -> None:
    assert make_split("test", 50) == make_split("test", 50)
    keys = {s: {(p.start, p.ops) for p in make_split(s, 300)} for s in ("train", "validation", "test")}
    assert len(keys["test"]) == 300
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["validation"]
    with pytest.raises(ValueError, match="unknown split"):
        make_split("dev", 3)


def test_verifier_reads_the_last_integer() -> None:
    assert verify("The answer is 18.", 18) and verify("so 3 then 18", "18")
    assert not verify("The answer is 81.", 18) and not verify("no number", 18)
    assert extract_answer("x = -4") == -4
    with pytest.raises(ValueError):
        apply("div", 1, 2)
