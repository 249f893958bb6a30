"""Prompt templates for eval and batch jobs: how a bare problem becomes the user's message.

- ``plain`` (default): the problem as it is;
- ``reference``: the paper's reference code's math instruction (reason in steps separated by two
  newlines, the final answer in ``\\boxed``, then the problem), character for character as its
  ``get_first_user_msg`` renders it for AIME and MATH: the "(\\n\\n)" holds two real newlines and
  the braces after ``\\boxed`` stay doubled (that line of its code is not an f-string);
- any other text holding ``{problem}`` once: a custom template (the only placeholder; other braces,
  such as ``\\boxed{}``, stay as written).
"""

from __future__ import annotations

from pathlib import Path

PLACEHOLDER = "{problem}"
REFERENCE_MATH = (
    "Solve the following math problem and return ONLY the final answer.\n"
    "Please reason step by step, separate logical reasoning steps with two newline characters (\n\n), "
    "and put your final answer within \\boxed{{}}.\n\n"
    "Problem: {problem}\n\n"
)
TEMPLATES = {"plain": PLACEHOLDER, "reference": REFERENCE_MATH}


def resolve_template(spec: str | None) -> str:
    """A template from a name (``plain``, ``reference``), a file holding one, or the template's
    text; it must hold ``{problem}`` exactly once."""
    if spec is None:
        return PLACEHOLDER
    if spec in TEMPLATES:
        return TEMPLATES[spec]
    text = spec
    if PLACEHOLDER not in spec and len(spec) < 4096 and Path(spec).is_file():
        text = Path(spec).read_text()
    if text.count(PLACEHOLDER) != 1:
        names = ", ".join(TEMPLATES)
        raise ValueError(f"prompt template must be {names}, a file, or text holding {PLACEHOLDER} once; got {spec!r}")
    return text


def apply_template(template: str, problem: str) -> str:
    """``template`` with the problem in place of ``{problem}`` (no other substitution)."""
    return template.replace(PLACEHOLDER, problem, 1)
