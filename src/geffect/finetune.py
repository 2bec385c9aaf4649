"""Fine-tuning of the target model (split `full`) or a retain model (`retain90`, ...) on QA data.

The loop is deliberately plain (nanoGPT-style): length-grouped shuffled batches, AdamW, linear warm-up then
linear decay, mean answer-token NLL (`outputs.loss`), a NaN check every step. With `--model tiny` the tokenizer
and the model are built from scratch (`geffect.models.tiny`); any other model is a hub id or a local folder.
The general-knowledge corpus `general.json` of the built-in benchmark is added to the training data when the
data folder has one (it stands in for pre-training).

The run ends with the exact-match accuracy: the fraction of the split's QA records whose answer the model
reproduces exactly under greedy decoding.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from geffect import __version__
from geffect.data import tofu
from geffect.data.collate import IGNORE_INDEX, EncodedItem, collate, encode_prompt, encode_qa, pad_token_id
from geffect.data.templates import Template, get_template, template_for_model
from geffect.errors import UsageError
from geffect.io import atomic_write_json
from geffect.models import tiny as tiny_preset
from geffect.models.answer_logits import accepts_logits_to_keep, answer_logits

TINY_MODEL = "tiny"
# Defaults for pretrained models: the TOFU paper's fine-tuning recipe (lr 1e-5, batch 16, 5 epochs).
PRETRAINED_DEFAULTS = {"epochs": 5, "lr": 1e-5, "batch_size": 16, "warmup_ratio": 0.2, "weight_decay": 0.0,
                       "max_length": 512, "precision": "auto"}
PRECISIONS = ("auto", "fp32", "bf16")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class TrainingDiverged(UsageError):
    """The loss became NaN or infinite; the run stops and writes nothing."""


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
    """`tiny`, an existing folder, or something shaped like a hub id (`owner/name`); anything else is a typo."""
    if model == TINY_MODEL or Path(model).expanduser().exists() or model.startswith((".", "/", "~")):
        return
    if not _HUB_ID.match(model):
        raise UsageError(
            f"unknown model {model!r}: pass 'tiny', an existing save_pretrained folder, or a hub id such as microsoft/phi-1_5"
        )


def training_records(data: str, split: str, include_general: bool = True) -> tuple[list[dict], list[dict]]:
    """(records of `split`, records of the general corpus or [] when absent or not wanted)."""
    records = tofu.load_split(data, split)
    general: list[dict] = []
    if include_general and split != tofu.GENERAL_SPLIT and tofu.is_local(data):
        if tofu.GENERAL_SPLIT in tofu.available_splits(data):
            general = tofu.load_split(data, tofu.GENERAL_SPLIT)
    return records, general


def length_grouped_batches(lengths: Sequence[int], batch_size: int, generator: torch.Generator, group: int = 16) -> list[list[int]]:
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
        return any(bool(getattr(cpu, name, lambda: False)()) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return False


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise UsageError(f"unknown --precision {precision!r}; choose one of {', '.join(PRECISIONS)}")


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
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels[:, start + 1 :].flatten(), ignore_index=IGNORE_INDEX)


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW; the fused kernel where torch has one for the device (same maths, a sizeable share of a tiny
    model's step time saved on CPU)."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95), fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))


def linear_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float):
    from transformers import get_linear_schedule_with_warmup

    warmup = int(round(warmup_ratio * total_steps))
    return get_linear_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


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
    scheduler = linear_schedule(optimizer, total_steps, warmup_ratio)
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


@torch.no_grad()
def greedy_answers(
    model, tokenizer, questions: Sequence[str], template: Template, batch_size: int = 64, max_new_tokens: int = 64
) -> list[str]:
    """Greedy continuations of each question's prompt, up to EOS, decoded without special tokens.

    Prompts are left-padded (as generation requires) and batched in length order to keep padding small.
    """
    device = next(model.parameters()).device
    pad_id = pad_token_id(tokenizer)
    prompts = []
    for i, question in enumerate(questions):
        ids = encode_prompt(tokenizer, template, question)
        prompts.append(EncodedItem(ids, [IGNORE_INDEX] * len(ids), i))
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].input_ids))
    outputs: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    for start in range(0, len(order), batch_size):
        chunk = [prompts[i] for i in order[start : start + batch_size]]
        batch = collate(chunk, pad_id, padding_side="left")
        generated = model.generate(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        width = batch["input_ids"].shape[1]
        for item, row in zip(chunk, generated[:, width:].tolist()):
            if tokenizer.eos_token_id in row:
                row = row[: row.index(tokenizer.eos_token_id)]
            outputs[item.index] = tokenizer.decode(row, skip_special_tokens=True)
    model.train(was_training)
    return outputs


def answer_token_budget(tokenizer, records: Sequence[dict], template: Template, slack: int = 2) -> int:
    """Enough new tokens for the longest answer (plus EOS) of `records`, so every exact match is reachable."""
    return max(len(tokenizer(template.answer(r["answer"]), add_special_tokens=False)["input_ids"]) for r in records) + slack


def exact_match_accuracy(
    model, tokenizer, records: Sequence[dict], template: Template, batch_size: int = 64, max_new_tokens: int | None = None
) -> float:
    """Fraction of `records` whose answer (as the template writes it) greedy decoding reproduces exactly
    (surrounding whitespace ignored). `max_new_tokens` None: just enough for the longest answer."""
    if not records:
        raise ValueError("exact_match_accuracy needs at least one record")
    if max_new_tokens is None:
        max_new_tokens = answer_token_budget(tokenizer, records, template)
    generated = greedy_answers(model, tokenizer, [r["question"] for r in records], template, batch_size, max_new_tokens)
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


def _refuse_existing(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"output path {out} exists and is not a folder; choose another --out")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"output folder {out} already exists; pass --overwrite to replace it or choose another --out")


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


def _defaults(model: str) -> dict:
    if model == TINY_MODEL:
        preset = tiny_preset.TINY
        names = ("epochs", "lr", "batch_size", "warmup_ratio", "weight_decay", "max_length", "precision")
        return {name: getattr(preset, name) for name in names}
    return dict(PRETRAINED_DEFAULTS)


def finetune(
    data: str,
    split: str,
    model: str,
    out: str | os.PathLike,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    max_steps: int | None = None,
    include_general: bool = True,
    template: str | None = None,
    overwrite: bool = False,
    eval_limit: int | None = None,
    eval_batch_size: int = 64,
    warmup_ratio: float | None = None,
    weight_decay: float | None = None,
    max_length: int | None = None,
    model_overrides: dict | None = None,
    progress: bool = True,
    precision: str | None = None,
) -> FinetuneResult:
    """Fine-tune `model` on `split` (+ the general corpus) of `data` and save it to `out`.

    `None` hyper-parameters take the defaults of the model kind (`TinyPreset` for tiny, the TOFU recipe
    otherwise). `eval_limit` caps the exact-match evaluation to a fixed evenly spaced sample; None = all
    records of the split, 0 = skip it. `model_overrides` change the tiny architecture (tests use it).
    """
    out = Path(out)
    _refuse_existing(out, overwrite)
    check_model_name(model)
    if model != TINY_MODEL and model_overrides:
        raise UsageError("model_overrides only apply to --model tiny")
    records, general = training_records(data, split, include_general)
    settings = _defaults(model)
    given = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "warmup_ratio": warmup_ratio,
             "weight_decay": weight_decay, "max_length": max_length, "precision": precision}
    settings.update({k: v for k, v in given.items() if v is not None})
    check_precision(settings["precision"])  # before the data and the model are loaded
    for name in ("epochs", "batch_size", "max_length"):
        if settings[name] < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {settings[name]}")
    if settings["lr"] <= 0:
        raise UsageError(f"--lr must be positive, got {settings['lr']}")
    if max_steps is not None and max_steps < 1:
        raise UsageError(f"--max-steps must be at least 1, got {max_steps}")

    if model == TINY_MODEL:
        net, tokenizer = tiny_preset.build_tiny(data, seed=seed, **(model_overrides or {}))
        chosen_template = get_template(template or "plain")
    else:
        from geffect.models.loading import load_model_and_tokenizer

        net, tokenizer = load_model_and_tokenizer(model)
        chosen_template = get_template(template) if template else template_for_model(model)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net.to(device)

    train_data = records + general
    items = [
        encode_qa(tokenizer, chosen_template, r["question"], r["answer"], index=i, max_length=settings["max_length"])
        for i, r in enumerate(train_data)
    ]
    started = time.perf_counter()
    losses = train(
        net, items, pad_token_id(tokenizer), settings["epochs"], settings["lr"], settings["batch_size"], seed,
        max_steps=max_steps, warmup_ratio=settings["warmup_ratio"], weight_decay=settings["weight_decay"], progress=progress,
        precision=settings["precision"],
    )
    train_seconds = time.perf_counter() - started

    started = time.perf_counter()
    eval_records = fixed_sample(records, eval_limit)
    accuracy = (
        exact_match_accuracy(net, tokenizer, eval_records, chosen_template, batch_size=eval_batch_size)
        if eval_records else float("nan")
    )
    eval_seconds = time.perf_counter() - started

    config = {
        "data": str(data), "split": split, "model": model, "template": chosen_template.name, "seed": seed,
        "max_steps": max_steps, "include_general": include_general, **settings,
        "model_overrides": model_overrides or {},
    }
    if model == TINY_MODEL:
        config["tiny_preset"] = asdict(tiny_preset.TINY)
    summary = {
        "config": config,
        "train_items": len(records),
        "general_items": len(general),
        "steps": len(losses),
        "train_seconds": round(train_seconds, 3),
        "eval_seconds": round(eval_seconds, 3),
        "exact_match": {
            "accuracy": accuracy if eval_records else None,
            "items": len(eval_records),
            "of": len(records),
            "selection": "all records of the split" if len(eval_records) == len(records) else "evenly spaced fixed sample",
            "decoding": "greedy, up to EOS, whitespace-stripped string equality with the templated answer",
        },
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "losses": [round(x, 5) for x in losses],
        "versions": {"geffect": __version__, "torch": torch.__version__, "transformers": _transformers_version()},
        "threads": torch.get_num_threads(),
        "autocast": str(autocast_dtype(settings["precision"], device)),
    }
    _save_atomically(out, net, tokenizer, summary)
    return FinetuneResult(
        out=out, accuracy=accuracy, eval_items=len(eval_records), split_items=len(records), steps=len(losses), train_seconds=train_seconds,
        eval_seconds=eval_seconds, first_loss=losses[0] if losses else math.nan,
        last_loss=losses[-1] if losses else math.nan, config=config,
    )


def _transformers_version() -> str:
    import transformers

    return transformers.__version__
