from __future__ import annotations

from typing import Any

import pytest

from glimp_ray import cli


def test_eval_arguments_reach_run_eval(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    async def fake_run_eval(*args: Any, **kwargs: Any) -> dict[str, Any]:
        seen["args"], seen["kwargs"] = args, kwargs
        return {}

    monkeypatch.setattr("glimp_ray.eval.run.run_eval", fake_run_eval)
    monkeypatch.setattr("glimp_ray.local.load_collaborator", lambda config: object())
    monkeypatch.setattr("glimp_ray.local.close_collaborator", lambda collaborator: None)
    argv = ["eval", "--dataset", "demo", "--policies", "entropy,top1,margin,random,large,small", "--seeds", "5"]
    argv += ["--limit", "12", "--candidate-fractions", "0.2,0.4", "--keep-accuracy", "0.9"]
    assert cli.main(argv) == 0
    _, dataset, _, policies, _, limit, validation, _ = seen["args"]
    assert (dataset, limit, validation) == ("demo", 12, "demo")
    assert policies == ["entropy", "top1", "margin", "random", "large", "small"]
    kwargs = seen["kwargs"]
    assert kwargs["seeds"] == 5 and kwargs["fractions"] == (0.2, 0.4) and kwargs["keep"] == 0.9
    assert kwargs["target_large_fraction"] is None


def test_eval_refuses_an_unknown_policy() -> None:
    assert cli.main(["eval", "--dataset", "demo", "--policies", "entropy,h_stepp"]) != 0
