"""Each finding of issue 23, put back into a shipped config or manifest in memory, fails the check
with a line naming the field and the fix."""

from __future__ import annotations

from pathlib import Path

from glimp_ray.preflight import Report, check_path
from tests.preflight.conftest import LAUNCHER, QWEN, R1, RAYSERVICE, WriteSetup, args_of, group, load


def check(config: Path, manifest: Path | None = None) -> Report:
    (report,) = check_path(config, manifest)
    return report


def lines(report: Report, level: str = "error") -> list[str]:
    return [p.line() for p in report.problems if p.level == level]


def test_baseline_of_these_tests_passes(write_setup: WriteSetup) -> None:
    report = check(*write_setup(load(QWEN), load(RAYSERVICE)))
    assert report.problems == [], report.format()


def test_finding_1_accelerator_name_ray_does_not_detect(write_setup: WriteSetup) -> None:
    config = load(QWEN)
    args_of(config)["serving"]["large"]["accelerator_type"] = "A100-80G"
    config_path, manifest = write_setup(config, load(RAYSERVICE))
    for report in (check(config_path, manifest), check(config_path)):
        (line,) = lines(report)
        assert line.startswith("error: serving.large.accelerator_type: A100-80G is not a name Ray detects")
        assert "use A100" in line
    rows = {row.deployment: row for row in check(config_path, manifest).rows}
    assert rows["LargePool"].fit == 0 and rows["SmallPool"].fit == 8


def test_finding_1_a_node_that_declares_the_name_places_it(write_setup: WriteSetup) -> None:
    config, service = load(QWEN), load(RAYSERVICE)
    args_of(config)["serving"]["large"]["accelerator_type"] = "A100-80G"
    group(service, "large-gpu")["rayStartParams"]["resources"] = '"{\\"accelerator_type:A100-80G\\": 1}"'
    report = check(*write_setup(config, service))
    assert report.errors == [], report.format()


def test_finding_1_h100_on_a100_nodes(write_setup: WriteSetup) -> None:
    config = load(R1)
    args_of(config)["serving"]["large"]["accelerator_type"] = "H100"
    report = check(*write_setup(config, load(RAYSERVICE)))
    (line,) = lines(report)
    assert line.startswith("error: serving.large: no node type can hold a LargePool replica")
    assert "large-gpu lacks accelerator_type:H100" in line


def test_finding_2_image_without_vllm(write_setup: WriteSetup) -> None:
    old = (
        "FROM rayproject/ray:2.60.0-py311-gpu\nCOPY --chown=ray:users . /home/ray/glimp-ray\n"
        'RUN pip install --no-cache-dir -e "/home/ray/glimp-ray[serve,otlp]"\n'
    )
    report = check(*write_setup(load(QWEN), load(RAYSERVICE), dockerfile=old))
    (line,) = lines(report)
    assert "Dockerfile: installs glimp-ray with extras [otlp,serve] and no vllm" in line
    assert "pip install '.[serve,otlp,vllm]'" in line


def test_finding_3_group_not_advertising_its_accelerator(write_setup: WriteSetup) -> None:
    service = load(RAYSERVICE)
    group(service, "small-gpu")["rayStartParams"] = {}
    report = check(*write_setup(load(QWEN), service))
    (line,) = lines(report)
    assert line.startswith("error: workerGroupSpecs[small-gpu]: the autoscaler does not see accelerator_type:L4")
    assert "beyond the 1 that fit" in line and "max 8" in line
    assert """resources: '"{\\"accelerator_type:L4\\": 1}"'""" in line  # the fix, in KubeRay's format
    assert {row.deployment: row.fit for row in report.rows}["SmallPool"] == 1


def test_finding_3_labels_only_in_ray_start_params(write_setup: WriteSetup) -> None:
    """The autoscaler reads a group's `labels` field, not rayStartParams labels: nodes it could add
    do not match the pool's label_selector."""
    service = load(RAYSERVICE)
    large = group(service, "large-gpu")
    del large["labels"]
    large["rayStartParams"]["labels"] = "glimp/pool=large"
    report = check(*write_setup(load(QWEN), service))
    (line,) = lines(report)
    assert line.startswith("error: workerGroupSpecs[large-gpu]: the autoscaler does not see labels glimp/pool=large")
    assert "`labels` field" in line


def test_finding_3_launcher_leaving_resources_to_ec2(write_setup: WriteSetup) -> None:
    launcher = load(LAUNCHER)
    launcher["available_node_types"]["small_gpu"]["resources"] = {}
    report = check(*write_setup(load(QWEN), launcher, manifest_name="cluster.yaml"))
    assert report.errors == []
    (line,) = lines(report, "warning")
    assert line.startswith("warning: available_node_types.small_gpu.resources: does not declare")
    assert "CPU" in line and "GPU" in line and "accelerator_type:L4" in line


def test_finding_5_kv_holds_fewer_contexts_than_max_num_seqs(write_setup: WriteSetup) -> None:
    config = load(QWEN)
    args_of(config)["small"]["max_num_seqs"] = 32  # as shipped before: 6.4 contexts fit
    for report in (check(*write_setup(config, load(RAYSERVICE))), check(write_setup(config, load(LAUNCHER))[0])):
        (line,) = lines(report)
        assert line.startswith("error: small.max_num_seqs: the KV cache on a L4 22.49 GiB")
        assert "6.4 full 12288-token contexts, fewer than max_num_seqs 32" in line
        assert "set max_num_seqs to at most 6, or max_model_len to at most 2445" in line


def test_finding_5_r1_32b_on_one_gpu(write_setup: WriteSetup) -> None:
    config = load(R1)
    large = args_of(config)
    large["large"]["tensor_parallel_size"] = 1
    large["serving"]["large"]["num_gpus"] = 1
    large["large"]["max_num_seqs"] = 16
    (line,) = lines(check(*write_setup(config, load(RAYSERVICE))))
    assert line.startswith("error: large.max_num_seqs: the KV cache on a A100 80 GiB")
    assert "3.0 full 12288-token contexts, fewer than max_num_seqs 16" in line


def test_finding_5_less_than_one_context(write_setup: WriteSetup) -> None:
    config = load(QWEN)
    del args_of(config)["small"]["max_model_len"]  # vLLM then takes the model's 262144
    (line,) = lines(check(*write_setup(config, load(RAYSERVICE))))
    assert line.startswith("error: small.max_model_len:") and "less than one 262144-token context" in line


def test_finding_5_two_vllm_engines_on_one_gpu(write_setup: WriteSetup) -> None:
    config = load(R1)
    args_of(config)["serving"]["small"]["num_gpus"] = 0.5
    report = check(*write_setup(config, load(RAYSERVICE)))
    (line,) = lines(report)
    assert line.startswith("error: small.gpu_memory_utilization: serving.small.num_gpus 0.5 puts 2 replicas")
    assert "at most 0.50" in line
    assert any("vLLM engines" in w and "num_gpus: 1" in w for w in lines(report, "warning"))


def test_finding_5_replica_cpus_beyond_the_pod(write_setup: WriteSetup) -> None:
    """Two 4-CPU small replicas do not share a 6-CPU pod: with one small node allowed, one fits."""
    service = load(RAYSERVICE)
    group(service, "small-gpu")["maxReplicas"] = 1
    config = load(R1)
    args_of(config)["serving"]["small"]["num_gpus"] = 0.5
    args_of(config)["small"]["gpu_memory_utilization"] = 0.45
    report = check(*write_setup(config, service))
    assert {row.deployment: row.fit for row in report.rows}["SmallPool"] == 1
    assert any(line.startswith("error: serving.small.num_replicas: only 1 of 2") for line in lines(report))


def test_finding_6_top_k_above_vllms_max_logprobs(write_setup: WriteSetup) -> None:
    config = load(QWEN)
    args_of(config)["routing"]["top_k"] = 21
    for report in (check(*write_setup(config, load(RAYSERVICE))), check(write_setup(config, load(RAYSERVICE))[0])):
        (line,) = lines(report)  # named once; the rest is checked as if top_k were 20
        assert line.startswith("error: routing.top_k: 21 is above vLLM's max_logprobs (20)")
        assert len(report.rows) == 3


def test_finding_6_top_k_in_the_routers_user_config(write_setup: WriteSetup) -> None:
    config = load(QWEN)
    config["applications"][0]["deployments"][0]["user_config"]["routing"]["top_k"] = 25
    (line,) = lines(check(*write_setup(config, load(RAYSERVICE))))
    assert line.startswith("error: deployments[GlimpRouter].user_config.routing.top_k: 25")


def test_finding_8_hf_pool_on_a_gpu_with_device_cpu(write_setup: WriteSetup) -> None:
    config = load(R1)
    small = args_of(config)["small"]
    for key in ("max_num_seqs", "max_model_len", "gpu_memory_utilization"):
        del small[key]
    small.update(engine="hf", device="cpu")
    args_of(config)["routing"]["entropy"] = "topk"
    (line,) = lines(check(*write_setup(config, load(RAYSERVICE))))
    assert line.startswith("error: small.device: cpu while serving.small.num_gpus is 1")
    assert "device: auto" in line
    small["device"] = "auto"  # the default: the replica's GPU
    assert check(*write_setup(config, load(RAYSERVICE))).errors == []


def test_finding_9_small_pod_memory_beyond_the_machine(write_setup: WriteSetup) -> None:
    service = load(RAYSERVICE)
    resources = group(service, "small-gpu")["template"]["spec"]["containers"][0]["resources"]
    resources["requests"]["memory"] = resources["limits"]["memory"] = "28Gi"
    (line,) = lines(check(*write_setup(load(QWEN), service)))
    assert line.startswith("error: workerGroupSpecs[small-gpu].resources.requests.memory: 28Gi requested")
    assert "g2-standard-8" in line and "request at most 25Gi" in line


def test_finding_7_no_model_cache_volume(write_setup: WriteSetup) -> None:
    service = load(RAYSERVICE)
    spec = group(service, "large-gpu")["template"]["spec"]
    del spec["volumes"], spec["containers"][0]["volumeMounts"]
    launcher = load(LAUNCHER)
    launcher["docker"]["run_options"] = ["--ulimit nofile=65536:65536"]
    (line,) = lines(check(*write_setup(load(QWEN), service)), "warning")
    assert line.startswith("warning: workerGroupSpecs[large-gpu].volumeMounts: no volume at HF_HOME")
    (line,) = lines(check(*write_setup(load(QWEN), launcher, manifest_name="cluster.yaml")), "warning")
    assert line.startswith("warning: docker.run_options: no volume for the model cache")


def test_schema_errors_name_the_field(write_setup: WriteSetup) -> None:
    config = load(QWEN)
    args_of(config)["small"]["max_num_seq"] = 6
    (line,) = lines(check(*write_setup(config, load(RAYSERVICE))))
    assert line.startswith("error: args.small.max_num_seq: Extra inputs are not permitted")


def test_too_few_node_type_workers_for_max_replicas(write_setup: WriteSetup) -> None:
    config = load(QWEN)
    args_of(config)["serving"]["small"]["autoscaling_config"]["max_replicas"] = 9
    report = check(*write_setup(config, load(RAYSERVICE)))
    (line,) = lines(report)
    assert line.startswith("error: serving.small.autoscaling_config.max_replicas: only 8 of 9 SmallPool replicas")
