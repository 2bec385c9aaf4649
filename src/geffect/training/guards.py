"""Checks that keep a diverged model from being saved as a success, and flag a run that "succeeded" into a
useless model (a forget or retain risk at log(vocabulary) is the loss of a uniform distribution)."""

from __future__ import annotations

import math

import torch

from geffect.errors import UsageError

# Above this an AdamW step (of size about lr per weight) destroys any model, and from about 3.4e38 the
# learning rate is not even representable in float32: refused up front (`--lr must be ...`).
MAX_LR = 10.0
# A risk within this fraction of log(V) means the model predicts (nearly) uniformly over its vocabulary.
UNIFORM_FRACTION = 0.95


def learning_rate(value: float | None) -> str | None:
    """Option check of a learning rate: finite, positive and at most MAX_LR."""
    if value is None:
        return None
    if not (math.isfinite(value) and value > 0):
        return f"must be a positive number, got {value}"
    if value > MAX_LR:
        return f"must be a positive number at most {MAX_LR:g} (a learning rate, e.g. 1e-5), got {value}"
    return None


def check_lora(lora_r: int, lora_alpha: float | None) -> None:
    """--lora-alpha alone would be silently ignored (no adapters without a rank)."""
    if lora_alpha is not None and not lora_r:
        raise UsageError("--lora-alpha needs --lora-r (the LoRA rank); add it, or drop --lora-alpha")


def non_finite_parameters(model: torch.nn.Module) -> list[str]:
    """Names of the parameters (this process's shards) that hold a NaN or an infinity."""
    return [name for name, p in model.named_parameters() if not bool(torch.isfinite(p.detach()).all())]


def weights_problem(names: list[str], when: str) -> str | None:
    """The one-line reason a model with these non-finite tensors must not be saved, or None when all are finite."""
    if not names:
        return None
    return f"weights are not finite {when} ({len(names)} tensor(s), e.g. {names[0]})"


def range_warnings(summary: dict, vocab_size: int) -> list[str]:
    """What left the sane range during an unlearning run: a last risk that is not finite, a forget risk that
    ended at log(vocab_size) or a retain risk that ended at or above it (the loss of a uniform distribution:
    the model collapsed rather than unlearned). A risk that started there already (an untrained model) is
    not the run's doing and is not flagged."""
    found = []
    for side, at_uniform in (("forget", _near), ("retain", _at_least_uniform)):
        first, last = summary.get(f"{side}_risk_first"), summary.get(f"{side}_risk_last")
        found += _uniform_warnings(f"{side} risk", first, last, vocab_size, at_uniform)
    return found


def loss_warnings(first: float | None, last: float | None, vocab_size: int) -> list[str]:
    """`range_warnings` for a fine-tuning loss: it ended at or above log(vocab_size) without starting there,
    or (a model trained from scratch starts at log V) ended above where it started."""
    if first is not None and last is not None and math.isfinite(last) and last > first:
        first = None  # it went up: flag it wherever it started
    return _uniform_warnings("training loss", first, last, vocab_size, _at_least_uniform)


def _uniform_warnings(name: str, first, last, vocab_size: int, at_uniform) -> list[str]:
    uniform = math.log(vocab_size)
    if last is None:
        return []
    if not math.isfinite(last):
        return [f"the last {name} is {last}"]
    if at_uniform(last, uniform) and not (first is not None and at_uniform(first, uniform)):
        return [
            f"the {name} ended at {last:.4g}, at log(vocabulary) = {uniform:.4g}: the model predicts nearly "
            "uniformly (collapsed; lower --lr or train fewer steps)"
        ]
    return []


def _at_least_uniform(value: float, uniform: float) -> bool:
    return value >= UNIFORM_FRACTION * uniform


def _near(value: float, uniform: float) -> bool:
    return abs(value - uniform) <= (1 - UNIFORM_FRACTION) * uniform


def method_label(name: str, retain_loss: str | None, default_retain: str | None) -> str:
    """The method as the user named it: NPO+KL for NPO given a KL retain loss; NPO, GradDiff (NLL) or RMU (MSE)
    with their own default retain loss."""
    if retain_loss is None or str(retain_loss).lower() in ("none", str(default_retain).lower()):
        return name
    return f"{name}+{retain_loss}"
