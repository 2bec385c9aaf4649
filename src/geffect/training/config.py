"""The options of an unlearning run, validated, and what `unlearn` returns."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from geffect.data.tofu import FORGET_SPLITS
from geffect.errors import UsageError

MIXED_PRECISION = ("auto", "no", "bf16")
# Fields that may differ between an interrupted run and its `--resume` without changing the result.
RESUME_FREE_FIELDS = frozenset({"out", "resume", "overwrite", "progress"})


@dataclass
class UnlearnConfig:
    """Every option of an unlearning run. `batch_size` is per process and micro-step; one optimizer step
    sees `batch_size * grad_accum * world_size` forget items (the paper: 16)."""

    model: str
    data: str
    out: str
    forget: str = "forget10"
    method: str = "GA"  # registry name or "METHOD+RETAIN" (e.g. "NPO+KL")
    retain_loss: str | None = None  # None: the method's default (or the "+RETAIN" part of `method`)
    gamma: float = 1.0
    alpha: float = 1.0
    hparams: dict[str, float] = field(default_factory=dict)  # method hyper-parameters (beta, ...)
    kl_mask: str = "answer"
    lr: float = 1e-5
    epochs: int = 5
    batch_size: int = 4
    grad_accum: int = 4
    max_grad_norm: float | None = None  # None: no clipping (the paper)
    warmup_epochs: float = 1.0
    weight_decay: float = 0.0
    save_every: int = 0  # checkpoint every N optimizer steps; 0: none
    keep_checkpoints: int = 1  # newest N kept; 0 keeps all
    max_steps: int | None = None  # cap on optimizer steps (the schedule spans the capped run)
    seed: int = 0
    template: str | None = None  # None: chosen from the model name
    max_length: int = 512
    lora_r: int = 0  # 0: full fine-tuning
    lora_alpha: float | None = None  # None: 2 * lora_r
    mixed_precision: str = "auto"  # auto: bf16 on a GPU that supports it, else fp32
    dtype: str | None = None  # dtype the weights are loaded in (None: float32)
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    def validate(self) -> None:
        """One-line UsageError for values no run can use."""
        if self.forget not in FORGET_SPLITS:
            raise UsageError(f"unknown forget split {self.forget!r}; choose one of {', '.join(FORGET_SPLITS)}")
        positive_ints = ("epochs", "batch_size", "grad_accum", "max_length")
        for name in positive_ints:
            if int(getattr(self, name)) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("save_every", "keep_checkpoints", "lora_r"):
            if int(getattr(self, name)) < 0:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"--lr must be a positive number, got {self.lr}")
        if not (math.isfinite(self.warmup_epochs) and self.warmup_epochs >= 0):
            raise UsageError(f"--warmup-epochs must be >= 0, got {self.warmup_epochs}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise UsageError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.max_grad_norm is not None and not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise UsageError(f"--max-grad-norm must be > 0, got {self.max_grad_norm}")
        if self.max_steps is not None and self.max_steps < 1:
            raise UsageError(f"--max-steps must be >= 1, got {self.max_steps}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise UsageError(f"unknown --mixed-precision {self.mixed_precision!r}; choose one of {', '.join(MIXED_PRECISION)}")
        if self.resume and self.overwrite:
            raise UsageError("--resume and --overwrite exclude each other; pass one of them")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "UnlearnConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise UsageError(f"unknown unlearn option(s) {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "UnlearnConfig":
        """The options of a run from its `config.yaml` (the `options` section)."""
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        return cls.from_dict(dict(document["options"]))


@dataclass
class UnlearnResult:
    run_dir: Path
    model_dir: Path  # RUN/model: the final save_pretrained folder
    steps: int  # optimizer steps taken in total (including before a resume)
    summary: dict[str, Any]
    last_log: dict[str, Any] | None
    model: Any = None  # the trained, unwrapped model (LoRA merged), for in-process callers
