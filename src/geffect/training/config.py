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
from geffect.objectives.presets import DEFAULT_PRESET, PRESETS
from geffect.objectives.retain import KL_MASKS
from geffect.options import BY_STUDY, at_least, check, non_negative, option, positive
from geffect.training.guards import learning_rate
from geffect.updates.registry import UPDATE_NAMES as UPDATE_RULES
from geffect.updates.registry import resolve_params

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
        "GA, GradDiff, NPO, SimNPO, IdkPO, DPO, RMU, WGA, TNPO, WTNPO, SatImp, UNDIAL, CEU, PDU, AltPO; or METHOD+RETAIN, e.g. NPO+KL",
        study="methods[].method",
        required=True,
    )
    retain_loss: str | None = option(
        None, "none, NLL (GD), KL or MSE; default: the preset's", study="methods[].retain_loss"
    )
    preset: str = option(
        DEFAULT_PRESET, "method defaults: geffect, openunlearning or paper (docs/presets.md)", choices=PRESETS
    )
    gamma: float | None = option(
        None, "weight of the forget loss (default: the preset's, geffect 1)", study="methods[].params.gamma"
    )
    alpha: float | None = option(
        None, "weight of the retain loss (default: the preset's, geffect 1)", study="methods[].params.alpha"
    )
    hparams: dict[str, float] = option(
        help="any method hyper-parameter (beta, ...); repeatable",
        flag="--hparam",
        study="methods[].params",
        default_factory=dict,
    )
    kl_mask: str | None = option(
        None, "KL over answer tokens ('answer') or every position ('all'); default: the preset's", choices=KL_MASKS
    )
    # the update rule (geffect.updates): how the step's losses become the gradient the optimizer receives
    update: str = option("plain", "update rule: " + ", ".join(UPDATE_RULES), choices=UPDATE_RULES)
    update_params: dict[str, Any] = option(
        help="a parameter of the update rule (rho=0.05, mode=mean, ...); repeatable",
        flag="--update-param",
        default_factory=dict,
    )
    # optimisation
    lr: float = option(1e-5, "peak learning rate", check=learning_rate)
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
    refusals: str | None = option(
        None,
        "refusal answers of IdkPO/DPO: a text file, one a line, or JSON Lines like TOFU's idontknow.jsonl; "
        "default: geffect's 101",
        metavar="FILE",
    )
    alternates: str | None = option(
        None,
        "AltPO's alternate answers: JSON Lines of {question, answer, alternate} (OpenUnlearning's AltPO generate.py)",
        metavar="FILE",
    )
    refusal_sampling: str = option(
        "fixed",
        "fixed: one refusal per item; per_visit: a new one at every use (OpenUnlearning)",
        choices=("fixed", "per_visit"),
    )
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
        resolve_params(self.update, self.update_params)  # one line naming a bad rule parameter
        if self.resume and self.overwrite:
            raise UsageError("--resume and --overwrite exclude each other; pass one of them")
        self._check_preferred_answers()
        if self.resume and self.refusal_sampling == "per_visit":
            raise UsageError("--refusal-sampling per_visit cannot be resumed exactly (visits restart); rerun the run")

    def _check_preferred_answers(self) -> None:
        """The files of the preferred answers a method uses (refusals for IdkPO/DPO, AltPO's alternates), read now so
        that a bad one fails before anything is written; methods that do not use them ignore them."""
        from geffect.data.refusals import read_refusals
        from geffect.objectives import get_method, parse_method_spec

        method = get_method(parse_method_spec(self.method)[0])
        if method.name == "AltPO" and not self.alternates:
            raise UsageError("--method AltPO needs --alternates FILE (JSON Lines of question, answer, alternate)")
        if method.name == "AltPO":
            from geffect.data.refusals import read_alternates_file

            read_alternates_file(self.alternates)
        elif method.needs_idk and self.refusals is not None:
            read_refusals(self.refusals)  # one line if the file is missing, unreadable or empty

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
