"""Prompt templates for eval and batch: the reference code's math instruction character for
character, custom templates, and bad ones refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from glimp_ray.batch_job import BatchColumns, row_inputs
from glimp_ray.eval.datasets import load_dataset
from glimp_ray.prompts import apply_template, resolve_template


def test_the_reference_template_is_what_the_reference_code_sends() -> None:
    # github.com/Zengwh02/GlimpRouter src/glimp_router.py, get_first_user_msg for aime/math: the
    # first line is a plain string ("\n\n" are newlines, "{{}}" stays doubled), the second an f-string.
    expected = (
        "Solve the following math problem and return ONLY the final answer.\nPlease reason step by step, "
        "separate logical reasoning steps with two newline characters (\n\n), and put your final answer within "
        "\\boxed{{}}.\n\nProblem: What is 2 + 3?\n\n"
    )
    assert apply_template(resolve_template("reference"), "What is 2 + 3?") == expected


def test_plain_custom_and_file_templates(tmp_path: Path) -> None:
    assert apply_template(resolve_template(None), "p {x}") == "p {x}"
    assert apply_template(resolve_template("plain"), "p") == "p"
    custom = "Q: {problem}\nAnswer in \\boxed{}."
    assert apply_template(resolve_template(custom), "2+2") == "Q: 2+2\nAnswer in \\boxed{}."
    path = tmp_path / "t.txt"
    path.write_text("File: {problem}")
    assert apply_template(resolve_template(str(path)), "x") == "File: x"
    for bad in ("no placeholder", "{problem} twice {problem}", "refrence"):
        with pytest.raises(ValueError, match="prompt template"):
            resolve_template(bad)


def test_eval_and_batch_apply_the_template() -> None:
    examples = load_dataset("demo", "test", 2, "Q: {problem}").examples
    assert all(e.messages()[0]["content"] == "Q: " + e.problem for e in examples)
    assert load_dataset("demo", "test", 1).examples[0].messages()[0]["content"] == examples[0].problem
    columns = BatchColumns(prompt_template=resolve_template("reference"))
    prompt_row = row_inputs({"id": "1", "prompt": "2+2?"}, columns, 1000)
    assert prompt_row["messages"][0]["content"].endswith("Problem: 2+2?\n\n")
    chat_row = row_inputs({"id": "2", "messages": [{"role": "user", "content": "hi"}]}, columns, 1000)
    assert chat_row["messages"] == [{"role": "user", "content": "hi"}]  # chat rows are sent as given
