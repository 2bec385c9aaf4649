"""The relearning attack (Fan et al., ICML 2025): fine-tune an unlearned model on a few forget items, then
evaluate it, to see whether the knowledge comes back.

    relearn(RelearnConfig(model="runs/npo/model", data="data/bench", forget="forget10", samples=20, steps=10,
                          out="runs/npo/relearn"))

N forget items are drawn with the seed (numpy's default_rng), the model is fine-tuned on them with plain NLL
and AdamW (`finetune.train`: the fine-tuning loop itself, no warm-up) for S steps, then scored with the TOFU
evaluation (`evaluation.runner.evaluate`). OUT holds model/ (safetensors), TOFU_EVAL.json, TOFU_SUMMARY.json and
relearn.json (the settings, the items drawn, the losses); it replaces an existing OUT only once complete.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geffect.data.collate import encode_qa, pad_token_id
from geffect.data.templates import get_template, template_for_model
from geffect.data.tofu import FORGET_SPLITS, load_split
from geffect.errors import UsageError
from geffect.evaluation.config import EvalConfig
from geffect.io import atomic_write_json, staged_output_dir
from geffect.options import BY_STUDY, at_least, check, option, positive
from geffect.training.finetune import train

RELEARN_FILE = "relearn.json"


@dataclass
class RelearnConfig:
    """Every option of `geffect relearn` (a study's `relearn:` sets samples, steps, lr, batch_size)."""

    model: str = option(help="save_pretrained folder of the (unlearned) model to attack", study=BY_STUDY)
    data: str = option(help="TOFU folder (JSON Lines) or hub id", study=BY_STUDY)
    out: str = option(help="output folder: model/, TOFU_EVAL.json, TOFU_SUMMARY.json, relearn.json", study=BY_STUDY)
    forget: str = option("forget10", "forget split the items are drawn from", choices=FORGET_SPLITS, study=BY_STUDY)
    samples: int = option(20, "N, forget items fine-tuned on", check=at_least(1))
    steps: int = option(10, "S, optimizer steps of the attack", check=at_least(1))
    lr: float = option(1e-5, "learning rate (no warm-up, linear decay to 0)", check=positive)
    batch_size: int = option(4, "items per step", check=at_least(1))
    seed: int = option(0, "seed of the items drawn and of the batch order", study=BY_STUDY)
    template: str | None = option(None, "prompt template; default from the model name", study=BY_STUDY)
    retain_logs: str | None = option(None, "the retain model's TOFU_EVAL.json, for forget quality", study=BY_STUDY)
    overwrite: bool = option(False, "replace an existing --out", study=BY_STUDY)
    progress: bool = option(True, "no progress bar", flag="--no-progress", study=BY_STUDY)

    def validate(self) -> None:
        check(self)


def drawn_items(n_items: int, samples: int, seed: int) -> list[int]:
    """The forget items of the attack: `samples` distinct indices, drawn with `seed`, in drawn order."""
    if samples > n_items:
        raise UsageError(f"--samples {samples} exceeds the {n_items} items of the forget split; use at most {n_items}")
    return [int(i) for i in np.random.default_rng(seed).choice(n_items, size=samples, replace=False)]


def relearn(config: RelearnConfig, scoring: EvalConfig | None = None) -> dict[str, Any]:
    """Attack `config.model`; returns relearn.json's content (with the evaluation summary under `summary`)."""
    from geffect.evaluation.runner import plan_evaluation
    from geffect.models.loading import check_model_source, load_model_and_tokenizer

    config.validate()
    scoring = scoring or EvalConfig()
    scoring.validate()
    check_model_source(config.model)
    template = get_template(config.template) if config.template else template_for_model(config.model)
    records = load_split(config.data, config.forget)
    chosen = drawn_items(len(records), config.samples, config.seed)
    retain = plan_evaluation(
        config.data,
        config.forget,
        template,
        config.retain_logs,
        scoring.ds_size,
        scoring.max_new_tokens,
        scoring.convention,
    ).retain
    with staged_output_dir(config.out, overwrite=config.overwrite, inputs=(config.model, config.data)) as out:
        torch.manual_seed(config.seed)
        model, tokenizer = load_model_and_tokenizer(config.model)
        model.to("cuda" if torch.cuda.is_available() else "cpu")
        items = [encode_qa(tokenizer, template, records[i]["question"], records[i]["answer"], index=i) for i in chosen]
        epochs = math.ceil(config.steps / math.ceil(len(items) / config.batch_size))
        losses = train(
            model, items, pad_token_id(tokenizer), epochs, config.lr, config.batch_size, config.seed,
            max_steps=config.steps, warmup_ratio=0.0, progress=config.progress,
        )  # fmt: skip
        model.save_pretrained(out / "model", safe_serialization=True)
        tokenizer.save_pretrained(out / "model")
        summary = _evaluate(model, tokenizer, config, template, retain, scoring, out)
        document = {
            "settings": asdict(config),
            "eval": asdict(scoring),
            "items": chosen,
            "losses": losses,
            "summary": summary,
        }
        atomic_write_json(out / RELEARN_FILE, document)
    return document


def _evaluate(model, tokenizer, config: RelearnConfig, template, retain, scoring: EvalConfig, out: Path) -> dict:
    from geffect.evaluation.logs import EVAL_FILE, SUMMARY_FILE
    from geffect.evaluation.runner import evaluate
    from geffect.evaluation.summary import summarize

    result = evaluate(
        model,
        tokenizer,
        config.data,
        config.forget,
        template,
        retain_logs=retain,
        ds_size=scoring.ds_size,
        batch_size=scoring.batch_size,
        max_new_tokens=scoring.max_new_tokens,
        convention=scoring.convention,
    )
    summary = summarize(result, retain)
    atomic_write_json(out / EVAL_FILE, result)
    atomic_write_json(out / SUMMARY_FILE, summary)
    return json.loads(json.dumps(summary))
