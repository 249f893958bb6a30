"""Model engines: the StepClient protocol, the transformers engine and a scripted fake."""

from glimp_ray.engine.base import EngineError, PromptTooLongError, StepClient

__all__ = ["EngineError", "PromptTooLongError", "StepClient"]
