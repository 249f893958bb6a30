from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from glimp_ray.config import ConfigError, ModelConfig, load_config, parse_config
from glimp_ray.demo import DEMO_MODELS

VALID = """
small: {model: /models/small}
large: {model: /models/large, device: cuda, dtype: bfloat16}
routing: {policy: entropy, threshold: 0.8, entropy: topk, top_k: 20}
sampling: {temperature: 0.6, top_p: 0.95, seed: 3}
limits: {step_max_tokens: 256, thinking_budget: 4096}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_models_default_to_the_shipped_demo_pair() -> None:
    from glimp_ray.demo import DEMO_MODELS

    config = parse_config({"routing": {"threshold": 0.5}})
    assert config.small.model == str(DEMO_MODELS / "small")
    assert config.large.model == str(DEMO_MODELS / "large")


def test_valid_config_maps_to_loop_parameters(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID))
    params = config.collab_params()
    assert (params.threshold, params.entropy, params.seed) == (0.8, "topk", 3)
    assert (params.step_max_tokens, params.thinking_budget, params.answer_max_tokens) == (256, 4096, 2048)
    assert params.delimiter == "\n\n" and params.mode == "fused"
    assert config.large.engine_kwargs()["dtype"] == "bfloat16"
    assert "name" not in config.small.engine_kwargs()


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("small: {model: a}\nlarge: 3\n", "large"),
        ("small: {model: a}\nlarge: {model: b, colour: red}\n", "large.colour"),
        ("small: {model: a}\nlarge: {model: b}\nrouting: {policy: smart}\n", "routing.policy"),
        ("small: {model: a}\nlarge: {model: b}\nsampling: {temperature: -0.1}\n", "sampling.temperature"),
        ("small: {model: a}\nlarge: {model: b}\nsampling: {top_p: 0}\n", "sampling.top_p"),
        ("small: {model: a}\nlarge: {model: b}\nlimits: {step_max_tokens: 0}\n", "limits.step_max_tokens"),
        ("small: {model: a}\nlarge: {model: b}\nlimits: {delimiter: ''}\n", "limits.delimiter"),
        ("small: {model: a, max_sessions: 0}\nlarge: {model: b}\n", "small.max_sessions"),
    ],
)
def test_invalid_config_names_the_field(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"(?m)^  {field}:"):
        load_config(write(tmp_path, text))


def test_unreadable_configs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "small: [unclosed"))
    with pytest.raises(ConfigError, match="mapping"):
        parse_config(["a list"])


def test_a_vllm_pool_gets_only_vllm_options() -> None:
    config = parse_config(
        {"small": {"model": "m", "engine": "vllm", "max_running": 12}, "routing": {"entropy": "topk"}}
    )
    kwargs = config.small.engine_kwargs()
    assert kwargs["max_num_seqs"] == 12 and kwargs["gpu_memory_utilization"] == 0.9
    assert not {"device", "max_running", "max_batch_tokens", "batching", "engine"} & set(kwargs)
    hf = config.large.engine_kwargs()
    assert "device" in hf and not {"gpu_memory_utilization", "max_model_len", "enforce_eager"} & set(hf)


def test_a_small_pool_on_vllm_cannot_glimpse_full_entropy() -> None:
    with pytest.raises(ConfigError, match="routing.entropy: topk"):
        parse_config({"small": {"model": "m", "engine": "vllm"}})
    # The large pool never glimpses: it may run on vLLM under either entropy.
    assert parse_config({"large": {"model": "m", "engine": "vllm"}}).large.engine == "vllm"


def test_demo_models_are_named_by_demo_prefix() -> None:
    config = ModelConfig(model="demo:small-h32", tokenizer="demo:small-h32")
    assert Path(config.model) == DEMO_MODELS / "small-h32" and config.tokenizer == config.model
    assert ModelConfig(model="demo:large").model == str(DEMO_MODELS / "large")
    with pytest.raises(
        ValidationError, match="no demo model 'demo:huge'; shipped: demo:large, demo:small, demo:small-h32"
    ):
        ModelConfig(model="demo:huge")


def test_online_tau_settings_are_checked_and_stay_out_of_the_loop() -> None:
    config = parse_config(
        {"routing": {"target_large_fraction": 0.3, "overload": {"max_token_s": 0.05, "tau_max": 2.0}}}
    )
    control = config.routing.tau_control()
    assert control.target_large_fraction == 0.3 and control.overload is not None
    assert control.overload.tau_max == 2.0 and control.active
    assert not hasattr(config.collab_params(), "overload")  # served only: the loop never sees them
    for bad, field in [
        ({"target_large_fraction": 1.5}, "routing.target_large_fraction"),
        ({"overload": {"max_token_s": 0, "tau_max": 1.0}}, "routing.overload.max_token_s"),
        ({"tau_min": 2.0, "overload": {"max_token_s": 0.1, "tau_max": 1.0}}, "below tau_min"),
        ({"overload": {"tau_max": 1.0}}, "routing.overload.max_token_s"),
    ]:
        with pytest.raises(ConfigError, match=field):
            parse_config({"routing": bad})
