"""The demo: a synthetic step-by-step reasoning task with verifiable answers, and the small
and large models trained on it, shipped with the package (``DEMO_MODELS``)."""

from pathlib import Path

DEMO_MODELS = Path(__file__).parent / "models"
