"""The options of a fine-tuning run, each declared once (default, help, check), and what `finetune` returns.

`geffect finetune`'s arguments and a study's `model.finetune:` section are derived from these declarations
(geffect.options); fields whose `study` names another key are set by the study from that key. None
hyper-parameters take the model kind's defaults (`TinyPreset` for tiny, the TOFU recipe otherwise). This
module imports neither torch nor transformers: the command line builds its parser from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geffect.data.templates import TEMPLATES
from geffect.errors import UsageError
from geffect.options import BY_STUDY, at_least, check, non_negative, option
from geffect.training.guards import learning_rate

TINY_MODEL = "tiny"
# Defaults for pretrained models: the TOFU paper's fine-tuning recipe (lr 1e-5, batch 16, 5 epochs).
PRETRAINED_DEFAULTS = {
    "epochs": 5,
    "lr": 1e-5,
    "batch_size": 16,
    "warmup_ratio": 0.2,
    "weight_decay": 0.0,
    "max_length": 512,
    "precision": "auto",
}
PRECISIONS = ("auto", "fp32", "bf16")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class FinetuneConfig:
    """Every option of a fine-tuning run: `model` on `split` (+ the general corpus) of `data`, saved to `out`.

    `eval_limit` caps the closing exact-match check to a fixed evenly spaced sample (None: every record of
    the split, 0: skip it). `model_overrides` change the tiny architecture (tests use it)."""

    data: str = option(help="TOFU-shaped folder of JSON Lines files, or a hub id (locuslab/TOFU)", study="benchmark")
    out: str = option(
        help="output folder (refused if it exists, unless --overwrite)", study="(the study's models/ folder)"
    )
    split: str = option(
        "full",
        "training split: full (target model) or retain90/95/99 (retain models)",
        study="(the study's model plans)",
    )
    model: str = option(
        TINY_MODEL, "'tiny' (built from scratch on the data), a save_pretrained folder or a hub id", study="model.base"
    )
    epochs: int | None = option(None, "default: 12 for tiny (TinyPreset), 5 otherwise", check=at_least(1))
    lr: float | None = option(
        None, "peak learning rate; default: TinyPreset for tiny, 1e-5 otherwise", check=learning_rate
    )
    batch_size: int | None = option(None, "default: TinyPreset for tiny, 16 otherwise", check=at_least(1))
    warmup_ratio: float | None = option(
        None,
        "linear warm-up as a fraction of all optimiser steps; default: TinyPreset for tiny, 0.2 otherwise",
        check=non_negative,
    )
    weight_decay: float | None = option(
        None, "AdamW weight decay; default: TinyPreset for tiny, 0 otherwise", check=non_negative
    )
    max_length: int | None = option(
        None, "max tokens per item; default: TinyPreset for tiny, 512 otherwise", check=at_least(1)
    )
    precision: str | None = option(
        None,
        "bf16 autocast (fp32 weights) or fp32; auto: bf16 where the hardware "
        "multiplies bf16 natively (GPUs with bf16, CPUs with AMX or AVX512-BF16). "
        "Default: fp32 for tiny, auto otherwise",
        choices=PRECISIONS,
    )
    seed: int = option(0, "seed of initialisation (tiny) and data order")
    max_steps: int | None = option(None, "stop after this many optimiser steps (for quick checks)", check=at_least(1))
    include_general: bool = option(True, "do not add the general corpus (general.json)", flag="--no-general")
    template: str | None = option(
        None,
        "prompt template; default: plain for tiny, by model family otherwise",
        choices=sorted(TEMPLATES),
        study="template",
    )
    overwrite: bool = option(False, "replace an existing --out folder", study=BY_STUDY)
    eval_limit: int | None = option(
        None,
        "score exact match on a fixed, evenly spaced sample of at most N records (default: all; 0 skips)",
        check=at_least(0),
        metavar="N",
    )
    eval_batch_size: int = option(64, "questions per generation batch of the exact-match check", check=at_least(1))
    model_overrides: dict[str, Any] = option(
        help="a field of the tiny model's architecture (LlamaConfig), value "
        "as YAML, e.g. hidden_size=64; repeatable; only with --model tiny",
        flag="--model-override",
        metavar="KEY=VALUE",
        default_factory=dict,
    )
    progress: bool = option(True, "no progress bar", flag="--no-progress", study=BY_STUDY)

    def validate(self) -> None:
        """One-line UsageError for values no run can use (before anything is loaded)."""
        check(self)
        check_model_name(self.model)
        if self.model != TINY_MODEL and self.model_overrides:
            raise UsageError("model_overrides only apply to --model tiny")


@dataclass
class FinetuneResult:
    out: Path
    accuracy: float  # exact-match accuracy on `eval_items` records of the split
    eval_items: int
    split_items: int  # records of the split (eval_items < split_items when a sample was scored)
    steps: int
    train_seconds: float
    eval_seconds: float
    first_loss: float
    last_loss: float
    config: dict = field(default_factory=dict)


def check_model_name(model: str) -> None:
    """`tiny`, an existing folder or .gguf file, a named model (`geffect models list`), or something shaped like
    a hub id (`owner/name`); anything else is a typo."""
    from geffect.models.named import NAMED_MODELS

    if model == TINY_MODEL or Path(model).expanduser().exists() or model.startswith((".", "/", "~")):
        return
    if model in NAMED_MODELS:
        return
    if not _HUB_ID.match(model):
        raise UsageError(
            f"unknown model {model!r}: pass 'tiny', an existing save_pretrained folder, a model name "
            "(geffect models list) or a hub id such as microsoft/phi-1_5"
        )


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise UsageError(f"unknown --precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
