"""glimp-ray: GlimpRouter's step-wise collaboration between a small and a large reasoning model."""

from glimp_ray.collab import Collaborator, CollabParams, CollabResult, StepRecord
from glimp_ray.engine.base import EngineError, PromptTooLongError, StepClient
from glimp_ray.policies import make_policy
from glimp_ray.types import GenerateSpec, GlimpseSpec, SamplingParams, StepRequest, StepResult

__all__ = [
    "CollabParams",
    "CollabResult",
    "Collaborator",
    "EngineError",
    "GenerateSpec",
    "GlimpseSpec",
    "PromptTooLongError",
    "SamplingParams",
    "StepClient",
    "StepRecord",
    "StepRequest",
    "StepResult",
    "make_policy",
]

__version__ = "0.1.0"
