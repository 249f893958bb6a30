"""Offline batch jobs with Ray Data: both modes, resume after a kill, bad rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray.data")

from glimp_ray.batch_job import merge_traces, read_done_ids, run_batch  # noqa: E402
from glimp_ray.planner import calibrate, requests_from_spans  # noqa: E402
from glimp_ray.tracing import read_spans  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402


def write_rows(path: Path, n: int, bad: bool = True) -> list[str]:
    rows: list[dict[str, Any]] = [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(n)]
    rows.append({"id": "chat", "messages": [{"role": "user", "content": "a chat question"}]})
    if bad:
        rows += [{"id": "no-prompt"}, {"id": "not-text", "prompt": 7}, {"id": "too-long", "prompt": "x" * 500}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [str(r["id"]) for r in rows]


def written(out: Path, kind: str) -> list[dict[str, Any]]:
    return [json.loads(line) for p in sorted(out.glob(f"{kind}-*.jsonl")) for line in p.read_text().splitlines()]


def test_actor_mode_writes_results_errors_and_traces(
    ray_cluster: str, tiny_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    write_rows(source, 6)
    out = tmp_path / "out"
    summary = run_batch(tiny_config(tiny_pair), str(source), str(out), batch_size=3, num_cpus=0.2, max_prompt_chars=200)
    results, errors = written(out, "results"), written(out, "errors")
    assert summary["rows"] == len(results) == 7 and summary["errors"] == len(errors) == 3
    assert {r["id"] for r in results} == {f"r{i}" for i in range(6)} | {"chat"}
    reasons = {e["id"]: e["error"] for e in errors}
    assert "missing prompt" in reasons["no-prompt"] and "got int" in reasons["not-text"]
    assert "longer than 200" in reasons["too-long"]
    first = results[0]
    assert {"answer", "reasoning", "trace", "prompt_tokens", "completion_tokens", "latency_s"} <= set(first)
    assert first["completion_tokens"] == sum(s["tokens"] for s in first["trace"]) + first["answer_tokens"]
    steps = [s for r in results for s in r["trace"]]
    assert summary["steps"] == len(steps) and summary["tokens_per_s"] > 0
    assert summary["large_step_fraction"] == sum(s["model"] == "large" for s in steps) / len(steps)
    # The traces feed the planner.
    merged = tmp_path / "spans.jsonl"
    assert merge_traces(str(out), str(merged)) > 0
    requests = requests_from_spans(read_spans(merged))
    assert len(requests) == 7 and calibrate(requests, 0.3)["steps"] > 0
    # A rerun skips everything already written.
    again = run_batch(tiny_config(tiny_pair), str(source), str(out), batch_size=3, num_cpus=0.2, max_prompt_chars=200)
    assert again["rows"] == 0 and again["skipped_already_done"] == 10


def test_a_killed_job_resumes_and_writes_every_id_once(
    ray_cluster: str, tiny_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    ids = write_rows(source, 40)
    out = tmp_path / "out"
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps(tiny_config(tiny_pair)))  # JSON is YAML
    command = [
        sys.executable,
        "-m",
        "glimp_ray.cli",
        "batch",
        "--config",
        str(config),
        "--input",
        str(source),
        "--output",
        str(out),
        "--batch-size",
        "2",
        "--num-cpus",
        "0.2",
        "--max-prompt-chars",
        "200",
    ]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster}
    log = tmp_path / "job.log"
    with log.open("w") as sink:
        job = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and len(list(out.glob("results-*.jsonl"))) < 2:
        assert job.poll() is None, f"the job ended before it was killed:\n{log.read_text()[-3000:]}"
        time.sleep(0.1)
    job.send_signal(signal.SIGKILL)
    job.wait()
    first_pass = read_done_ids(out)
    assert 0 < len(first_pass) < len(ids), "the job should have been killed midway"
    run_batch(tiny_config(tiny_pair), str(source), str(out), batch_size=4, num_cpus=0.2, max_prompt_chars=200)
    all_ids = [r["id"] for r in written(out, "results")] + [e["id"] for e in written(out, "errors")]
    assert sorted(all_ids) == sorted(ids)  # every id exactly once


def test_rows_travel_as_json_whatever_their_column_types() -> None:
    import numpy as np
    import pandas as pd

    from glimp_ray.batch_job import _rows_as_json

    batch = pd.DataFrame(
        {
            "id": ["a", "b", "c", "d"],
            "prompt": ["hi", 7, float("nan"), None],
            "messages": [None, None, np.array([{"role": "user", "content": "x"}]), None],
        }
    )
    out = _rows_as_json(batch, "id", {"d"})
    assert list(out["id"]) == ["a", "b", "c"]  # done ids are left out
    rows = [json.loads(r) for r in out["row"]]
    assert rows == [
        {"id": "a", "prompt": "hi"},
        {"id": "b", "prompt": 7},  # still a number: the worker reports it as a bad row
        {"id": "c", "messages": [{"role": "user", "content": "x"}]},
    ]
