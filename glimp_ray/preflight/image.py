"""What a Dockerfile's ``pip install`` lines put in the image: the project's extras and other packages."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRAS = re.compile(r"\[([^\]]*)\]")


@dataclass(frozen=True)
class Image:
    """The Python packages an image installs, as far as its Dockerfile says."""

    source: str
    extras: frozenset[str]  # extras of a local project install: `pip install ".[serve,vllm]"`
    packages: frozenset[str]  # other requirements named on the command line, lower case

    def has(self, package: str) -> bool:
        """Whether ``package`` is installed, as a project extra or by name."""
        return package in self.extras or package in self.packages or f"{package}-cpu" in self.packages


def _run_lines(text: str) -> list[str]:
    joined = re.sub(r"\\\r?\n", " ", text)
    return [line.strip()[4:] for line in joined.splitlines() if line.strip().upper().startswith("RUN ")]


def read_image(path: str | Path) -> Image:
    """Parse ``path``'s ``pip install`` (and ``uv pip install``) commands."""
    path = Path(path)
    extras: set[str] = set()
    packages: set[str] = set()
    for run in _run_lines(path.read_text()):
        for command in re.split(r"&&|;|\|\|", run):
            try:
                words = shlex.split(command)
            except ValueError:
                words = command.split()
            if "pip" not in words or "install" not in words:
                continue
            for word in words[words.index("install") + 1 :]:
                if word.startswith("-"):
                    continue
                project = _EXTRAS.search(word)
                if project and (word.startswith((".", "/")) or "/" in word.split("[")[0]):
                    extras.update(e.strip().lower() for e in project.group(1).split(",") if e.strip())
                    continue
                name = _NAME.match(word)  # a requirement such as vllm==0.32.0 or ray[serve]
                if name and not word.startswith((".", "/")):
                    packages.add(name.group(1).lower())
    return Image(str(path), frozenset(extras), frozenset(packages))
