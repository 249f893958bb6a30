"""Shipped configs and manifests as data, to be edited in memory and checked from a temp folder."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("ray.serve")

ROOT = Path(__file__).parent.parent.parent
QWEN = "configs/qwen3-4b-r1-32b.yaml"
R1 = "configs/r1-1.5b-r1-32b.yaml"
RAYSERVICE = "cluster/rayservice.yaml"
LAUNCHER = "cluster/cluster.yaml"
# Every GPU config with the manifests it fits.
SHIPPED_PAIRS = [(QWEN, RAYSERVICE), (QWEN, LAUNCHER), (R1, RAYSERVICE), (R1, LAUNCHER)]


def load(relative: str) -> Any:
    return copy.deepcopy(yaml.safe_load((ROOT / relative).read_text()))


def args_of(config: dict[str, Any]) -> dict[str, Any]:
    """The glimp application's args in a Serve config."""
    return config["applications"][0]["args"]


def group(service: dict[str, Any], name: str) -> dict[str, Any]:
    """A RayService's worker group by name."""
    (found,) = [g for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"] if g["groupName"] == name]
    return found


WriteSetup = Callable[..., tuple[Path, Path]]


@pytest.fixture
def write_setup(tmp_path: Path) -> WriteSetup:
    """``write_setup(config, manifest, manifest_name=..., dockerfile=...)``: the files in a temp
    folder, the shipped Dockerfile beside the manifest unless another text is given."""

    def write(
        config: dict[str, Any],
        manifest: dict[str, Any],
        manifest_name: str = "rayservice.yaml",
        dockerfile: str | None = None,
    ) -> tuple[Path, Path]:
        config_path = tmp_path / "config.yaml"
        manifest_path = tmp_path / manifest_name
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        manifest_path.write_text(yaml.safe_dump(manifest, sort_keys=False))
        text = dockerfile if dockerfile is not None else (ROOT / "cluster" / "Dockerfile").read_text()
        (tmp_path / "Dockerfile").write_text(text)
        return config_path, manifest_path

    return write
