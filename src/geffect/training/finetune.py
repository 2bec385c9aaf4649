"""Fine-tuning of the target model (split `full`) or a retain model (`retain90`, ...) on QA data.

The loop is deliberately plain (nanoGPT-style): length-grouped shuffled batches, AdamW, linear warm-up then
linear decay (`geffect.training.schedule`, as unlearning), mean answer-token NLL (`outputs.loss`), a NaN check
every step. With `--model tiny` the tokenizer and the model are built from scratch (`geffect.models.tiny`);
any other model is a hub id or a local folder. The general-knowledge corpus `general.json` of the built-in
benchmark is added to the training data when the data folder has one (it stands in for pre-training).

The run ends with the exact-match accuracy: the fraction of the split's QA records whose answer the model
reproduces exactly under greedy decoding (`geffect.evaluation.generation`, as the evaluation's ROUGE).
The options are `FinetuneConfig` (geffect.training.finetune_config).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from geffect import __version__
from geffect.data import tofu
from geffect.data.collate import EncodedItem, collate, encode_qa, pad_token_id
from geffect.data.templates import Template, get_template, template_for_model
from geffect.errors import TrainingDiverged
from geffect.evaluation.generation import generate_answers
from geffect.io import absolute_if_local, atomic_write_json, check_output_dir
from geffect.models import tiny as tiny_preset
from geffect.models.answer_logits import accepts_logits_to_keep, answer_logits
from geffect.tokens import IGNORE_INDEX
from geffect.training.finetune_config import (
    PRETRAINED_DEFAULTS,
    TINY_MODEL,
    FinetuneConfig,
    FinetuneResult,
    check_precision,
)
from geffect.training.guards import loss_warnings, non_finite_parameters, weights_problem
from geffect.training.schedule import build_scheduler, warmup_steps_of_ratio

HYPER_PARAMETERS = ("epochs", "lr", "batch_size", "warmup_ratio", "weight_decay", "max_length", "precision")


def training_records(data: str, split: str, include_general: bool = True) -> tuple[list[dict], list[dict]]:
    """(records of `split`, records of the general corpus or [] when absent or not wanted)."""
    records = tofu.load_split(data, split)
    general: list[dict] = []
    if include_general and split != tofu.GENERAL_SPLIT and tofu.is_local(data):
        if tofu.GENERAL_SPLIT in tofu.available_splits(data):
            general = tofu.load_split(data, tofu.GENERAL_SPLIT)
    return records, general


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator, group: int = 16
) -> list[list[int]]:
    """Shuffled batches of indices whose items have similar lengths, to waste little compute on padding.

    Shuffle everything, sort each window of `group` batches by length, cut it into batches, shuffle the
    batches (the same trick as transformers' `group_by_length`).
    """
    order = torch.randperm(len(lengths), generator=generator).tolist()
    window = batch_size * group
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i], reverse=True)
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    permutation = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in permutation]


def native_bf16(device: torch.device) -> bool:
    """Whether the device multiplies bf16 matrices in hardware (CUDA with bf16; CPUs with AMX or AVX512-BF16),
    where bf16 autocast is several times faster than fp32; elsewhere bf16 is emulated and slower."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        return any(
            bool(getattr(cpu, name, lambda: False)())
            for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        )
    return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 for `bf16`, and for `auto` where the hardware has it; None (fp32) otherwise."""
    check_precision(precision)
    if precision == "bf16" or (precision == "auto" and native_bf16(device)):
        return torch.bfloat16
    return None


def answer_loss(model: torch.nn.Module, batch: dict, answers_only: bool) -> torch.Tensor:
    """Mean NLL over the answer tokens (labels != -100) of a right-padded batch, as `model(labels=...).loss`.

    With `answers_only` the output projection runs only from the first answer position of the batch on
    (`logits_to_keep`): for a small model the vocabulary projection of the prompt tokens is a large share of
    the step, and their logits are never used.
    """
    input_ids, attention_mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    if not answers_only:
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    logits, start = answer_logits(model, {"input_ids": input_ids, "attention_mask": attention_mask}, labels)
    return torch.nn.functional.cross_entropy(
        logits.float().flatten(0, 1), labels[:, start + 1 :].flatten(), ignore_index=IGNORE_INDEX
    )


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW; the fused kernel where torch has one for the device (same maths, a sizeable share of a tiny
    model's step time saved on CPU)."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95), fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))


def train(
    model: torch.nn.Module,
    items: Sequence[EncodedItem],
    pad_id: int,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    max_steps: int | None = None,
    warmup_ratio: float = 0.05,
    weight_decay: float = 0.0,
    progress: bool = True,
    precision: str = "fp32",
) -> list[float]:
    """Train `model` in place on `items`; returns the loss of every optimiser step.

    `precision`: fp32, or bf16 autocast (fp32 weights and optimiser state), or auto = bf16 where the
    hardware multiplies bf16 natively. Under bf16 on a CPU attention runs as plain matrix products (eager),
    which oneDNN does in bf16; the model's own attention setting is restored afterwards.
    """
    device = next(model.parameters()).device
    dtype = autocast_dtype(precision, device)
    answers_only = accepts_logits_to_keep(model)
    restore_attention = None
    if dtype is not None and device.type == "cpu" and hasattr(model, "set_attn_implementation"):
        restore_attention = model.config._attn_implementation
        model.set_attn_implementation("eager")
    steps_per_epoch = math.ceil(len(items) / batch_size)
    total_steps = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
    optimizer = make_optimizer(model, lr, weight_decay)
    scheduler = build_scheduler(optimizer, warmup_steps_of_ratio(warmup_ratio, total_steps), total_steps)
    generator = torch.Generator().manual_seed(seed)
    lengths = [len(item.input_ids) for item in items]
    losses: list[float] = []
    model.train()
    bar = tqdm(total=total_steps, desc="finetune", unit="step", disable=not progress, dynamic_ncols=True)
    try:
        for epoch in range(epochs):
            for batch_indices in length_grouped_batches(lengths, batch_size, generator):
                if len(losses) == total_steps:
                    return losses
                batch = collate([items[i] for i in batch_indices], pad_id, padding_side="right")
                batch = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "labels")}
                with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    loss = answer_loss(model, batch, answers_only)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"training loss became {loss.item()} at step {len(losses) + 1} (epoch {epoch + 1}); lower --lr and retry"
                    )
                loss.backward()
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
    finally:
        bar.close()
        model.eval()
        if restore_attention is not None:
            model.set_attn_implementation(restore_attention)
    return losses


def answer_token_budget(tokenizer, records: Sequence[dict], template: Template, slack: int = 2) -> int:
    """Enough new tokens for the longest answer (plus EOS) of `records`, so every exact match is reachable."""
    return (
        max(len(tokenizer(template.answer(r["answer"]), add_special_tokens=False)["input_ids"]) for r in records)
        + slack
    )


def exact_match_accuracy(
    model,
    tokenizer,
    records: Sequence[dict],
    template: Template,
    batch_size: int = 64,
    max_new_tokens: int | None = None,
) -> float:
    """Fraction of `records` whose answer (as the template writes it) greedy decoding reproduces exactly
    (surrounding whitespace ignored). `max_new_tokens` None: just enough for the longest answer."""
    if not records:
        raise ValueError("exact_match_accuracy needs at least one record")
    if max_new_tokens is None:
        max_new_tokens = answer_token_budget(tokenizer, records, template)
    questions = [r["question"] for r in records]
    generated = generate_answers(model, tokenizer, template, questions, batch_size, max_new_tokens, progress=False)
    hits = sum(g.strip() == template.answer(r["answer"]).strip() for g, r in zip(generated, records))
    return hits / len(records)


def fixed_sample(records: Sequence[dict], limit: int | None) -> list[dict]:
    """At most `limit` records, evenly spaced over the split (the same ones every time)."""
    if limit is None or limit >= len(records):
        return list(records)
    if limit <= 0:
        return []
    step = len(records) / limit
    return [records[int(i * step)] for i in range(limit)]


def _save_atomically(out: Path, model, tokenizer, summary: dict) -> None:
    """Write everything into a hidden sibling folder, then rename it into place (the old one goes last)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / "finetune.json", summary)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / "model")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def hyper_parameters(config: FinetuneConfig) -> dict:
    """The run's hyper-parameters (HYPER_PARAMETERS): the config's, where None the model kind's defaults."""
    if config.model == TINY_MODEL:
        settings = {name: getattr(tiny_preset.TINY, name) for name in HYPER_PARAMETERS}
    else:
        settings = dict(PRETRAINED_DEFAULTS)
    settings.update({name: getattr(config, name) for name in HYPER_PARAMETERS if getattr(config, name) is not None})
    return settings


@dataclass
class _Run:
    """A run set up: the model on its device, its tokenizer and template, the records, the encoded items."""

    model: torch.nn.Module
    tokenizer: object
    template: Template
    device: torch.device
    records: list[dict]
    general: list[dict]
    items: list[EncodedItem]


def _set_up(config: FinetuneConfig, settings: dict) -> _Run:
    records, general = training_records(config.data, config.split, config.include_general)
    if config.model == TINY_MODEL:
        net, tokenizer = tiny_preset.build_tiny(config.data, seed=config.seed, **(config.model_overrides or {}))
        template = get_template(config.template or "plain")
    else:
        from geffect.models.loading import load_model_and_tokenizer

        net, tokenizer = load_model_and_tokenizer(config.model)
        template = get_template(config.template) if config.template else template_for_model(config.model)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net.to(device)
    items = [
        encode_qa(tokenizer, template, r["question"], r["answer"], index=i, max_length=settings["max_length"])
        for i, r in enumerate(records + general)
    ]
    return _Run(net, tokenizer, template, device, records, general, items)


def _train(run: _Run, config: FinetuneConfig, settings: dict) -> list[float]:
    return train(
        run.model,
        run.items,
        pad_token_id(run.tokenizer),
        settings["epochs"],
        settings["lr"],
        settings["batch_size"],
        config.seed,
        max_steps=config.max_steps,
        warmup_ratio=settings["warmup_ratio"],
        weight_decay=settings["weight_decay"],
        progress=config.progress,
        precision=settings["precision"],
    )


def _evaluate(run: _Run, config: FinetuneConfig) -> tuple[list[dict], float]:
    """(the records scored, their exact-match accuracy; NaN when none are)."""
    eval_records = fixed_sample(run.records, config.eval_limit)
    if not eval_records:
        return eval_records, float("nan")
    return eval_records, exact_match_accuracy(
        run.model, run.tokenizer, eval_records, run.template, batch_size=config.eval_batch_size
    )


def finetune(config: FinetuneConfig) -> FinetuneResult:
    """Fine-tune `config.model` on `config.split` (+ the general corpus) of `config.data` and save it to
    `config.out` (atomically: a diverged or failed run leaves no folder behind; with `overwrite` the old
    folder stays until the new one is complete). Every check runs before anything is loaded."""
    config.validate()
    settings = hyper_parameters(config)
    out = Path(config.out)
    check_output_dir(out, config.overwrite, inputs=(config.model, config.data))
    run = _set_up(config, settings)

    started = time.perf_counter()
    losses = _train(run, config, settings)
    train_seconds = time.perf_counter() - started
    problem = weights_problem(non_finite_parameters(run.model), f"after {len(losses)} optimiser step(s)")
    if problem:
        raise TrainingDiverged(f"{problem}; nothing was saved; lower --lr and retry")
    started = time.perf_counter()
    eval_records, accuracy = _evaluate(run, config)
    eval_seconds = time.perf_counter() - started

    run_config = _run_config(config, run.template, settings)
    summary = _summary(run, run_config, losses, eval_records, accuracy, train_seconds, eval_seconds, settings)
    ends = (losses[0], losses[-1]) if losses else (None, None)
    summary["warnings"] = loss_warnings(*ends, run.model.config.vocab_size)  # a collapse is not a success
    for warning in summary["warnings"]:
        logging.getLogger(__name__).warning(warning)
    _save_atomically(out, run.model, run.tokenizer, summary)
    return FinetuneResult(
        out=out,
        accuracy=accuracy,
        eval_items=len(eval_records),
        split_items=len(run.records),
        steps=len(losses),
        train_seconds=train_seconds,
        eval_seconds=eval_seconds,
        first_loss=losses[0] if losses else math.nan,
        last_loss=losses[-1] if losses else math.nan,
        config=run_config,
    )


def _run_config(config: FinetuneConfig, template: Template, settings: dict) -> dict:
    """The options the run used, as finetune.json records them."""
    run_config = {
        "data": absolute_if_local(str(config.data)),  # recorded absolute: readable from any folder
        "split": config.split,
        "model": config.model if config.model == TINY_MODEL else absolute_if_local(config.model),
        "template": template.name,
        "seed": config.seed,
        "max_steps": config.max_steps,
        "include_general": config.include_general,
        **settings,
        "model_overrides": config.model_overrides or {},
    }
    if config.model == TINY_MODEL:
        run_config["tiny_preset"] = asdict(tiny_preset.TINY)
    return run_config


def _summary(
    run: _Run,
    run_config: dict,
    losses: list[float],
    eval_records: list[dict],
    accuracy: float,
    train_seconds: float,
    eval_seconds: float,
    settings: dict,
) -> dict:
    """finetune.json."""
    records = run.records
    return {
        "config": run_config,
        "train_items": len(records),
        "general_items": len(run.general),
        "steps": len(losses),
        "train_seconds": round(train_seconds, 3),
        "eval_seconds": round(eval_seconds, 3),
        "exact_match": {
            "accuracy": accuracy if eval_records else None,
            "items": len(eval_records),
            "of": len(records),
            "selection": "all records of the split"
            if len(eval_records) == len(records)
            else "evenly spaced fixed sample",
            "decoding": "greedy, up to EOS, whitespace-stripped string equality with the templated answer",
        },
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "losses": [round(x, 5) for x in losses],
        "versions": {"geffect": __version__, "torch": torch.__version__, "transformers": _transformers_version()},
        "threads": torch.get_num_threads(),
        "autocast": str(autocast_dtype(settings["precision"], run.device)),
    }


def _transformers_version() -> str:
    import transformers

    return transformers.__version__
