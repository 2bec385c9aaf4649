"""Checks that keep a diverged model from being saved as a success."""

from __future__ import annotations

import torch


def non_finite_parameters(model: torch.nn.Module) -> list[str]:
    """Names of the parameters (this process's shards) that hold a NaN or an infinity."""
    return [name for name, p in model.named_parameters() if not bool(torch.isfinite(p.detach()).all())]


def weights_problem(names: list[str], when: str) -> str | None:
    """The one-line reason a model with these non-finite tensors must not be saved, or None when all are finite."""
    if not names:
        return None
    return f"weights are not finite {when} ({len(names)} tensor(s), e.g. {names[0]})"
