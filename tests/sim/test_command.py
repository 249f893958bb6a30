"""``glimp-ray simulate`` end to end on a small made-up trace: prints, writes JSON and PNG, and
refuses malformed per-pool flags with one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glimp_ray.cli import main
from glimp_ray.tracing import SPAN_ANSWER, SPAN_REQUEST, SPAN_STEP
from tests.sim.helpers import profile


def write_inputs(tmp_path: Path) -> list[str]:
    spans = []
    for i in range(5):
        root = f"r{i}"
        spans.append({"name": SPAN_REQUEST, "span_id": root, "trace_id": root, "attributes": {"glimp.latency_s": 1.0}})
        for j, (route, entropy) in enumerate((("small", 0.1), ("large", 0.9), ("small", 0.2))):
            attributes = {"glimp.route": route, "glimp.entropy": entropy, "glimp.tokens.generated": 20}
            attributes["glimp.step.index"] = j
            step = {"name": SPAN_STEP, "span_id": f"{root}s{j}", "parent_span_id": root, "attributes": attributes}
            spans.append(step)
        answer = {"glimp.route": "large", "glimp.tokens.generated": 10}
        spans.append({"name": SPAN_ANSWER, "span_id": f"{root}a", "parent_span_id": root, "attributes": answer})
    (tmp_path / "spans.jsonl").write_text("".join(json.dumps(s) + "\n" for s in spans))
    profile({1: 0.001, 8: 0.002}).save(tmp_path / "small.json")
    profile({1: 0.004, 8: 0.008}).save(tmp_path / "large.json")
    return [
        "simulate",
        "--traces", str(tmp_path / "spans.jsonl"),
        "--small-profile", str(tmp_path / "small.json"),
        "--large-profile", str(tmp_path / "large.json"),
        "--rps", "2", "--duration", "60", "--quiet",
    ]  # fmt: skip


def test_simulate_writes_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = write_inputs(tmp_path)
    out = tmp_path / "out"
    flags = ["--threshold", "0.5", "--gpus", "small=1,large=2", "--price", "large=3", "--out", str(out)]
    assert main([*args, *flags]) == 0
    data = json.loads((out / "sim.json").read_text())
    assert data["cost"]["large"] == pytest.approx(60 / 3600 * 2 * 3)
    assert data["p50_s"] > 0 and (out / "sim.png").stat().st_size > 0
    assert "p95" in capsys.readouterr().out


def test_bad_per_pool_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*write_inputs(tmp_path), "--replicas", "medium=2"]) == 2
    assert "--replicas takes pool=value pairs" in capsys.readouterr().err
