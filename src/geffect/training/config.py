"""The options of an unlearning run, each declared once (default, help, check), and what `unlearn` returns.

`geffect unlearn`'s arguments and a study's `training:` section are derived from these declarations
(geffect.options); fields whose `study` names another key are set by the study from that key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geffect.data.tofu import FORGET_SPLITS
from geffect.errors import UsageError
from geffect.options import BY_STUDY, at_least, check, non_negative, option, positive

MIXED_PRECISION = ("auto", "no", "bf16")
# Fields that may differ between an interrupted run and its `--resume` without changing the result.
RESUME_FREE_FIELDS = frozenset({"out", "resume", "overwrite", "progress"})


@dataclass
class UnlearnConfig:
    """Every option of an unlearning run. `batch_size` is per process and micro-step; one optimizer step
    sees `batch_size * grad_accum * world_size` forget items (the paper: 16)."""

    # inputs and outputs
    model: str = option(help="save_pretrained folder or hub id of the model to unlearn from", study="model.target")
    data: str = option(
        help="TOFU folder (JSON Lines named like the hub) or hub id, e.g. locuslab/TOFU", study="benchmark"
    )
    out: str = option(help="run folder: config.yaml, log.jsonl, checkpoints/, model/", study=BY_STUDY)
    forget: str = option(
        "forget10", "forget split; its retain split is paired", choices=FORGET_SPLITS, study="forget_splits"
    )
    # the objective
    method: str = option(
        "GA",
        "GA, GradDiff, NPO, SimNPO, IdkPO, DPO, RMU, WGA, TNPO, WTNPO, SatImp, UNDIAL; or METHOD+RETAIN, e.g. NPO+KL",
        study="methods[].method",
        required=True,
    )
    retain_loss: str | None = option(
        None, "none, NLL (GD), KL or MSE; default: the method's", study="methods[].retain_loss"
    )
    gamma: float = option(1.0, "weight of the forget loss", study="methods[].params.gamma")
    alpha: float = option(1.0, "weight of the retain loss", study="methods[].params.alpha")
    hparams: dict[str, float] = option(
        help="any method hyper-parameter (beta, ...); repeatable",
        flag="--hparam",
        study="methods[].params",
        default_factory=dict,
    )
    kl_mask: str = option("answer", "KL over answer tokens ('answer') or every position ('all')")
    # optimisation
    lr: float = option(1e-5, "peak learning rate", check=positive)
    epochs: int = option(5, "epochs over the forget split", check=at_least(1))
    batch_size: int = option(4, "forget items per process and micro-step", check=at_least(1))
    grad_accum: int = option(4, "micro-steps per optimizer step", check=at_least(1))
    max_grad_norm: float | None = option(
        None, "clip the gradient norm (default: no clipping, as the paper)", check=positive
    )
    warmup_epochs: float = option(1.0, "linear warm-up length in epochs", check=non_negative)
    weight_decay: float = option(0.0, "AdamW weight decay", check=non_negative)
    save_every: int = option(0, "checkpoint every N optimizer steps (0: never)", check=at_least(0))
    keep_checkpoints: int = option(1, "newest checkpoints kept (0: all)", check=at_least(0))
    max_steps: int | None = option(
        None, "cap on optimizer steps (the schedule spans the capped run)", check=at_least(1)
    )
    seed: int = option(0, "seed of data order, pairing and initialisations", study="seeds")
    template: str | None = option(
        None, "prompt template (phi, llama2, plain, chat); default from the model name", study="template"
    )
    max_length: int = option(512, "max tokens per item", check=at_least(1))
    lora_r: int = option(0, "LoRA rank (0: full fine-tuning)", check=at_least(0))
    lora_alpha: float | None = option(None, "LoRA alpha (default 2 * rank)")
    mixed_precision: str = option(
        "auto", "auto (bf16 on a GPU that supports it, else fp32), no or bf16", choices=MIXED_PRECISION
    )
    dtype: str | None = option(
        None, "dtype the weights are loaded in (float32, bfloat16, ...; default float32)", study="model.dtype"
    )
    resume: bool = option(False, "continue the run in --out from its latest checkpoint", study=BY_STUDY)
    overwrite: bool = option(False, "replace an existing --out", study=BY_STUDY)
    progress: bool = option(True, "no progress bar", flag="--no-progress", study=BY_STUDY)

    def validate(self) -> None:
        """One-line UsageError for values no run can use."""
        check(self)
        if self.resume and self.overwrite:
            raise UsageError("--resume and --overwrite exclude each other; pass one of them")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class UnlearnResult:
    run_dir: Path
    model_dir: Path  # RUN/model: the final save_pretrained folder
    steps: int  # optimizer steps taken in total (including before a resume)
    summary: dict[str, Any]
    last_log: dict[str, Any] | None
    model: Any = None  # the trained, unwrapped model (LoRA merged), for in-process callers
