"""The batch job against a running Serve application gives what in-process actors give."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("ray.data")

from glimp_ray.batch_job import run_batch  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402
from tests.deployments.conftest import APP_LIMITS  # noqa: E402
from tests.test_batch import write_rows, written  # noqa: E402


def test_serve_mode_matches_actor_mode(serve_app: str, tiny_pair: tuple[Path, Path], tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    write_rows(source, 4, bad=False)
    config = tiny_config(tiny_pair, **APP_LIMITS)  # the serve app's limits: same answers both ways
    local = run_batch(config, str(source), str(tmp_path / "local"), batch_size=5, num_cpus=0.2)
    remote = run_batch(config, str(source), str(tmp_path / "serve"), serve_app="glimp", batch_size=5, num_cpus=0.2)
    assert local["rows"] == remote["rows"] == 5
    by_id = {r["id"]: r["answer"] for r in written(tmp_path / "local", "results")}
    assert {r["id"]: r["answer"] for r in written(tmp_path / "serve", "results")} == by_id  # greedy: same text
