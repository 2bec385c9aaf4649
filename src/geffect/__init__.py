"""geffect: LLM unlearning objectives, TOFU evaluation and in-run G-effects."""

__version__ = "0.1.0"
