from __future__ import annotations

import json
from pathlib import Path

import pytest

from glimp_ray.cli import main


@pytest.fixture
def config_file(tiny_pair: tuple[Path, Path], tmp_path: Path) -> Path:
    small, large = tiny_pair
    path = tmp_path / "tiny.yaml"
    path.write_text(
        f"small: {{model: '{small}'}}\nlarge: {{model: '{large}'}}\n"
        "routing: {threshold: 3.2}\nsampling: {temperature: 0}\n"
        "limits: {delimiter: ' ', step_max_tokens: 16, thinking_budget: 64, answer_max_tokens: 8}\n"
    )
    return path


def test_generate_prints_answer_and_step_table(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--config", str(config_file), "What is 6 times 7?"]) == 0
    out = capsys.readouterr().out
    assert "step  model  entropy  tokens  seconds  finish" in out
    assert " ans  large" in out
    assert "steps," in out and "stopped by" in out


def test_generate_json_with_messages_file(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    messages = tmp_path / "messages.json"
    messages.write_text(json.dumps([{"role": "user", "content": "Add 3 and 4."}]))
    code = main(["generate", "--config", str(config_file), "--messages", str(messages), "--json", "--policy", "large"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["steps"] and all(s["model"] == "large" for s in data["steps"])
    assert data["thinking_tokens"] == sum(s["tokens"] for s in data["steps"])
    assert data["large_step_fraction"] == 1.0
    assert {"index", "model", "entropy", "tokens", "latency_s"} <= set(data["steps"][0])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "give a prompt"),
        (["hi", "--threshold", "x"], None),
        (["hi", "--temperature", "-1"], "temperature"),
    ],
)
def test_generate_bad_input(
    config_file: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str | None
) -> None:
    if message is None:
        with pytest.raises(SystemExit):  # argparse rejects a non-number
            main(["generate", "--config", str(config_file), *extra])
        return
    assert main(["generate", "--config", str(config_file), *extra]) == 2
    assert message in capsys.readouterr().err


def test_generate_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("small: {model: a}\nlarge: {model: b}\nrouting: {threshold: high}\n")
    assert main(["generate", "--config", str(path), "hi"]) == 2
    assert "routing.threshold" in capsys.readouterr().err


def test_generate_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "missing.yaml"
    path.write_text(f"small: {{model: '{tmp_path}/nope'}}\nlarge: {{model: '{tmp_path}/nope'}}\n")
    assert main(["generate", "--config", str(path), "hi"]) == 2
    assert "cannot load model" in capsys.readouterr().err


def test_profile_writes_a_profile(config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from glimp_ray.profile import EngineProfile

    out = tmp_path / "small.json"
    args = ["profile", "--config", str(config_file), "--pool", "small", "--max-concurrency", "2", "--tokens", "6"]
    assert main([*args, "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    profile = EngineProfile.load(out)
    assert sorted(profile.decode_s) == [1, 2] and profile.max_concurrency == 2
    assert main([*args[:-2], "--tokens", "1"]) == 2
    assert "--tokens must be >= 2" in capsys.readouterr().err
