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


def test_hf_runs_on_the_gpu_it_is_given() -> None:
    from glimp_ray.engine.model_files import resolve_device

    assert ModelConfig(model="m").device == "auto"
    assert ModelConfig(model="m").engine_kwargs()["device"] == "auto"
    import torch

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cuda:1") == "cuda:1"


def test_top_k_above_vllm_max_logprobs_is_refused_for_a_vllm_small_model() -> None:
    from glimp_ray.config import RoutingConfig

    small = {"model": "m", "engine": "vllm"}
    with pytest.raises(ConfigError, match="routing.top_k 21 is above vLLM's max_logprobs"):
        parse_config({"small": small, "routing": {"entropy": "topk", "top_k": 21}})
    assert parse_config({"small": small, "routing": {"entropy": "topk", "top_k": 20}}).routing.top_k == 20
    assert parse_config({"routing": {"entropy": "topk", "top_k": 50}}).routing.top_k == 50  # HF: any k
    assert "max_logprobs" in (RoutingConfig.entropy_refused("topk", "vllm", 21) or "")
    assert RoutingConfig.entropy_refused("topk", "vllm", 20) is None
    assert RoutingConfig.entropy_refused("topk", "hf", 64) is None


def test_a_stand_in_is_loaded_on_the_hf_engine_in_place_of_the_model() -> None:
    configured = ModelConfig(
        model="deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
        engine="vllm",
        tensor_parallel_size=2,
        max_num_seqs=16,
        stand_in="demo:large",
    )
    served = configured.served()
    assert served.engine == "hf" and served.device == "cpu" and served.stand_in is None
    assert served.model == str(DEMO_MODELS / "large")
    assert served.name == "DeepSeek-R1-Distill-Qwen-32B"  # traces read as the configured model's
    assert "stand_in" not in configured.engine_kwargs()
    assert ModelConfig(model="m").served() == ModelConfig(model="m")
    with pytest.raises(ValidationError, match="no demo model 'demo:nope'"):
        ModelConfig(model="m", stand_in="demo:nope")
