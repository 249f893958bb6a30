"""Run the collaboration in this process: both engines loaded from one config."""

from __future__ import annotations

from glimp_ray.collab import Collaborator
from glimp_ray.config import GlimpConfig


def load_collaborator(config: GlimpConfig) -> Collaborator:
    """Load the small and the large engine in-process and wire them into a loop.

    Call :func:`close_collaborator` (or let the process exit) to stop the engines.
    """
    small = config.small.load_engine()
    large = config.large.load_engine()
    return Collaborator(small, large, config.collab_params())


def close_collaborator(collaborator: Collaborator) -> None:
    for client in collaborator.clients.values():
        close = getattr(client, "close", None)
        if close is not None:
            close()
