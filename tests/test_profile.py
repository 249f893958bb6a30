"""The profile format: JSON round trip, version, what it tells (curve, latency between points, KV)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glimp_ray.profile import PROFILE_VERSION, EngineProfile


def profile(**overrides: object) -> EngineProfile:
    fields: dict[str, object] = {
        "model": "demo-large",
        "engine": "hf",
        "dtype": "float32",
        "accelerator": "cpu:test",
        "decode_s": {1: 0.010, 2: 0.012, 4: 0.016, 8: 0.024},
        "prefill_s_per_token": 0.0002,
        "glimpse_s": 0.003,
        "kv_bytes_per_token": 9216,
        "kv_budget_bytes": 9216 * 4000,
        "max_concurrency": 8,
    }
    fields.update(overrides)
    return EngineProfile(**fields)  # type: ignore[arg-type]


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    original = profile(notes={"method": "test"})
    path = tmp_path / "p.json"
    original.save(path)
    data = json.loads(path.read_text())
    assert data["version"] == PROFILE_VERSION and data["decode_s"] == {"1": 0.01, "2": 0.012, "4": 0.016, "8": 0.024}
    assert EngineProfile.load(path) == original
    assert original.key == ("demo-large", "hf", "float32", "cpu:test", 1)


def test_curve_latency_and_kv_concurrency() -> None:
    p = profile()
    curve = p.curve()  # the measured points lie on 10 ms + 2 ms per extra call
    assert curve.base_s == pytest.approx(0.010, rel=1e-9) and curve.slope_s == pytest.approx(0.002, rel=1e-9)
    assert p.latency(3) == pytest.approx(0.014)  # between measured points
    assert p.latency(10) == pytest.approx(0.028)  # past the last: the curve's slope
    assert p.latency(0.5) == pytest.approx(0.010)
    # 4,000 tokens of KV: 1,000-token calls fit four at once, short ones up to max_concurrency.
    assert p.kv_concurrency(1000) == 4
    assert p.kv_concurrency(10) == 8
    assert p.kv_concurrency(100_000) == 1


def test_bad_profiles_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="profile not found"):
        EngineProfile.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    with pytest.raises(ValueError, match="not a glimp-ray profile"):
        EngineProfile.load(bad)
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({**profile().to_dict(), "colour": "red"}))
    with pytest.raises(ValueError, match="unknown profile fields: colour"):
        EngineProfile.load(unknown)
    with pytest.raises(ValueError, match="version 2"):
        profile(version=2)
    with pytest.raises(ValueError, match="decode_s"):
        profile(decode_s={1: 0.0})


@pytest.mark.parametrize("name", ["demo-small-hf-cpu.json", "demo-large-hf-cpu.json"])
def test_the_committed_demo_profiles_load(name: str) -> None:
    p = EngineProfile.load(Path(__file__).parent.parent / "configs" / "profiles" / name)
    assert p.engine == "hf" and p.accelerator.startswith("cpu:") and 1 in p.decode_s
    assert p.max_concurrency in p.decode_s and "method" in p.notes
    assert p.curve().slope_s > 0  # the measured curve: batching is not free
