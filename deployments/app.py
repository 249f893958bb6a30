"""The app builder that ``configs/*.yaml`` name in ``import_path``."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from ray.serve import Application

from deployments.config import AppConfig
from deployments.model_server import ModelServer
from deployments.router import GlimpRouter
from glimp_ray.config import ConfigError, format_validation_error


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Small pool + large pool + router ingress, from the application's ``args``."""
    try:
        config = AppConfig.model_validate(args or {})
    except ValidationError as exc:
        raise ConfigError(f"invalid application args\n{format_validation_error(exc)}") from None
    serving = config.serving
    small = ModelServer.options(  # type: ignore[attr-defined]
        **serving.small.deployment_options("SmallPool", config.small)
    ).bind(config.small.model_dump(), serving.metrics_window_s)
    large = ModelServer.options(  # type: ignore[attr-defined]
        **serving.large.deployment_options("LargePool", config.large)
    ).bind(config.large.model_dump(), serving.metrics_window_s)
    router = GlimpRouter.options(**serving.router_options())  # type: ignore[attr-defined]
    return router.bind(small, large, config.model_dump(mode="json"))
