"""The check passes on every shipped config with the manifests it fits, and on the CPU demos."""

from __future__ import annotations

from pathlib import Path

import pytest

from glimp_ray.cli import main
from glimp_ray.preflight import check_path
from tests.preflight.conftest import QWEN, R1, RAYSERVICE, ROOT, SHIPPED_PAIRS

DEMOS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").glob("demo*.yaml"))


@pytest.mark.parametrize(("config", "manifest"), SHIPPED_PAIRS)
def test_shipped_pair_passes_with_every_replica_placed(config: str, manifest: str) -> None:
    (report,) = check_path(ROOT / config, ROOT / manifest)
    assert report.errors == [], report.format()
    rows = {row.deployment: row for row in report.rows}
    assert set(rows) == {"SmallPool", "LargePool", "GlimpRouter"}
    for row in rows.values():
        assert row.fit == row.max_replicas  # up to max_replicas, within the groups' max workers
    assert "small" in rows["SmallPool"].node_type and "large" in rows["LargePool"].node_type
    for pool in ("SmallPool", "LargePool"):
        row = rows[pool]
        assert row.contexts is not None and row.max_num_seqs is not None
        assert row.contexts >= row.max_num_seqs  # the KV cache holds every sequence's full context


def test_shipped_qwen_pair_figures() -> None:
    """The table's numbers for the paper's pair (hardware.py's arithmetic, by hand here)."""
    (report,) = check_path(ROOT / QWEN, ROOT / RAYSERVICE)
    rows = {row.deployment: row for row in report.rows}
    small, large = rows["SmallPool"], rows["LargePool"]
    # Qwen3-4B on an L4: 22.49 x 0.9 - 2 GiB runtime - 7.49 GiB weights, 144 KiB a token.
    assert small.gpu == "L4 22.49 GiB" and small.kv_tokens is not None
    assert small.kv_tokens == pytest.approx((22.49 * 0.9 - 2 - 4_022_468_096 * 2 / 2**30) * 2**30 / 147456, rel=1e-4)
    assert (small.fit, small.max_replicas, small.max_num_seqs) == (8, 8, 6)
    # R1-32B over two 80 GB A100s, 256 KiB a token.
    assert large.gpu == "A100 80 GiB" and large.gpus == 2 and large.kv_tokens is not None
    assert large.kv_tokens == pytest.approx((2 * (80 * 0.9 - 2) - 32_763_876_352 * 2 / 2**30) * 4096, rel=1e-4)
    assert rows["GlimpRouter"].node_type == "head"


@pytest.mark.parametrize("config", [QWEN, R1, RAYSERVICE, *DEMOS])
def test_configs_pass_without_a_cluster(config: str) -> None:
    for report in check_path(ROOT / config):
        assert report.errors == [], report.format()


@pytest.mark.parametrize(("config", "manifest"), SHIPPED_PAIRS)
def test_cli_check_passes_on_shipped_pairs(config: str, manifest: str, capsys: pytest.CaptureFixture[str]) -> None:
    """What CI runs: `glimp-ray check CONFIG --cluster MANIFEST` exits 0 and prints the table."""
    assert main(["check", str(ROOT / config), "--cluster", str(ROOT / manifest)]) == 0
    out = capsys.readouterr().out
    assert "deployment" in out and "contexts / max_num_seqs" in out
    assert "SmallPool" in out and "LargePool" in out and "0 error(s)" in out


def test_cli_check_exits_non_zero_on_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (ROOT / QWEN).read_text().replace("max_num_seqs: 6 ", "max_num_seqs: 32 ")
    assert "max_num_seqs: 32" in text
    (tmp_path / "config.yaml").write_text(text)
    assert main(["check", str(tmp_path / "config.yaml"), "--cluster", str(ROOT / RAYSERVICE)]) == 1
    assert "error: small.max_num_seqs:" in capsys.readouterr().out


def test_cli_check_unreadable_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
