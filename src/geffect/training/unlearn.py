"""The unlearning loop, on `accelerate`: one file, read top to bottom.

    result = unlearn(UnlearnConfig(model="runs/target/model", data="data/bench", out="runs/npo", method="NPO"))

Per optimizer step: `grad_accum` micro-batches (forget items paired with random retain items, see
`batches.py`) go through the objective and backward; the callbacks see the accumulated gradients; then
clipping (optional), AdamW, the warm-up/decay schedule, one line of `log.jsonl`, and every `save_every` steps a
checkpoint. A non-finite loss or gradient norm stops the run before the optimizer step, so no checkpoint
ever holds a diverged model.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path
from typing import Sequence

import torch
import yaml

from geffect import __version__
from geffect.data.collate import pad_token_id
from geffect.data.templates import get_template, template_for_model
from geffect.data.tofu import RETAIN_FOR_FORGET, load_split
from geffect.errors import UsageError
from geffect.io import append_jsonl, atomic_write_json, atomic_write_text, prepare_output_dir, read_jsonl
from geffect.models.loading import check_model_source, load_model, load_tokenizer
from geffect.objectives import ObjectiveConfig, build_objective, parse_method_spec
from geffect.objectives.tokens import score
from geffect.training.batches import BatchBuilder, StepSampler, encode_records
from geffect.training.callbacks import RunContext, StepCallback, StepContext
from geffect.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from geffect.training.config import RESUME_FREE_FIELDS, UnlearnConfig, UnlearnResult
from geffect.training.schedule import build_scheduler, warmup_steps_for
from geffect.training.step_stats import StepStats

CONFIG_FILE, LOG_FILE, SUMMARY_FILE, MODEL_DIR = "config.yaml", "log.jsonl", "summary.json", "model"


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN/inf; the message is one line for the user."""


def unlearn(config: UnlearnConfig, callbacks: Sequence[StepCallback] = ()) -> UnlearnResult:
    """Run (or `config.resume`) one unlearning run; see UnlearnConfig for the options."""
    from accelerate.utils import set_seed

    # --- everything that can be wrong with the input fails here, before anything is written -------------
    config.validate()
    objective = build_objective(_objective_config(config))
    check_model_source(config.model)
    forget_records = load_split(config.data, config.forget)
    retain_records = load_split(config.data, RETAIN_FOR_FORGET[config.forget])
    template = get_template(config.template) if config.template else template_for_model(config.model)
    accelerator = _accelerator(config)
    run_dir = _open_run_dir(accelerator, config)

    # --- model, data, optimizer -----------------------------------------------------------------------
    set_seed(config.seed)
    tokenizer = load_tokenizer(config.model)
    model = with_lora(load_model(config.model, dtype=config.dtype), config).train()
    encode = dict(tokenizer=tokenizer, template=template, max_length=config.max_length)
    forget_items = encode_records(records=forget_records, **encode)
    retain_items = encode_records(records=retain_records, **encode)
    idk_items = encode_records(records=forget_records, answer_for=_refusal(config.seed), **encode) if objective.needs_idk else None

    sampler = StepSampler(
        len(forget_items), len(retain_items), config.batch_size, config.grad_accum, accelerator.num_processes, config.seed
    )
    total_steps = config.epochs * sampler.steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    warmup = warmup_steps_for(config.warmup_epochs, sampler.steps_per_epoch, total_steps)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = build_scheduler(optimizer, warmup, total_steps)
    model, optimizer, scheduler = _prepare(accelerator, model, optimizer, scheduler, config)
    ref_model = _reference_model(accelerator, config) if objective.needs_reference else None
    objective.setup(accelerator.unwrap_model(model), torch.Generator().manual_seed(config.seed))
    builder = BatchBuilder(forget_items, retain_items, pad_token_id(tokenizer), accelerator.device, idk_items)

    resolved = {
        "objective": _plain(objective.config),
        "template": template.name,
        "retain_split": RETAIN_FOR_FORGET[config.forget],
        "n_forget": len(forget_items),
        "n_retain": len(retain_items),
        "world_size": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "mixed_precision": accelerator.mixed_precision,
        "global_batch": sampler.global_batch,
        "steps_per_epoch": sampler.steps_per_epoch,
        "total_steps": total_steps,
        "warmup_steps": warmup,
    }
    document = {"geffect_version": __version__, "options": config.to_dict(), "resolved": resolved}

    # --- resume -----------------------------------------------------------------------------------------
    start_step = 0
    checkpoint = latest_checkpoint(run_dir) if config.resume else None
    if checkpoint is not None:
        trainer_state, objective_state = load_checkpoint(accelerator, checkpoint)
        objective.load_state_dict(objective_state)
        start_step = int(trainer_state["step"])
    log_path = run_dir / LOG_FILE
    if accelerator.is_main_process:
        _keep_log_until(log_path, start_step)
        atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(document, sort_keys=False))
    accelerator.wait_for_everyone()

    # --- the loop -----------------------------------------------------------------------------------------
    run = RunContext(
        run_dir=run_dir,
        model=accelerator.unwrap_model(model),
        accelerator=accelerator,
        objective=objective,
        ref_model=ref_model,
        tokenizer=tokenizer,
        config=document,
        total_steps=total_steps,
        start_step=start_step,
    )
    keep_graph = any(getattr(callback, "retain_graph", False) for callback in callbacks)
    for callback in callbacks:
        callback.on_train_begin(run)
    from tqdm.auto import tqdm

    bar = tqdm(
        total=total_steps,
        initial=start_step,
        desc=f"unlearn {objective.name}",
        unit="step",
        disable=not (config.progress and accelerator.is_main_process),
    )
    last_record = None
    started = time.perf_counter()
    try:
        for step in range(start_step, total_steps):
            stats = StepStats()
            micro_batches = sampler.micro_batches(step, accelerator.process_index)
            for position, micro in enumerate(micro_batches):
                batch = builder.build(micro)
                with accelerator.accumulate(model):
                    with accelerator.autocast():
                        out = objective(model, batch, ref_model)
                        forget_risk = out.forget_risk
                        if forget_risk is None:  # the objective did not score the original answers
                            with torch.no_grad():
                                forget_risk = score(model, batch.forget).risk()
                    last = position == len(micro_batches) - 1
                    _backward(accelerator, out.loss, retain_graph=keep_graph and last)
                stats.add(out, batch, forget_risk)
            record = stats.reduce(accelerator)
            lr = scheduler.get_last_lr()[0]
            if not math.isfinite(record["loss"]):
                raise TrainingDiverged(_diverged("loss", record["loss"], step + 1, run_dir))

            if callbacks:
                context = StepContext(step=step + 1, lr=lr, batch=batch, loss_output=out)
                for callback in callbacks:
                    callback.after_backward(run, context)
                del context
            del out, forget_risk  # frees the kept graph

            grad_norm = _clip_and_norm(accelerator, model, config.max_grad_norm)
            if grad_norm is not None and not math.isfinite(grad_norm):
                raise TrainingDiverged(_diverged("gradient norm", grad_norm, step + 1, run_dir))
            _optimizer_step(accelerator, optimizer)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            last_record = {
                "step": step + 1,
                "epoch": round((step + 1) / sampler.steps_per_epoch, 6),
                **record,
                "lr": lr,
                "grad_norm": grad_norm,
            }
            if accelerator.is_main_process:
                append_jsonl(log_path, last_record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4g}", forget_risk=f"{record['forget_risk']:.4g}", refresh=False)
            if config.save_every and (step + 1) % config.save_every == 0:
                save_checkpoint(
                    accelerator,
                    run_dir,
                    step + 1,
                    {"step": step + 1, "epoch": sampler.epoch_of(step), "data_position": (step + 1) * sampler.global_batch},
                    objective.state_dict(),
                    keep=config.keep_checkpoints,
                )
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    for callback in callbacks:
        callback.on_train_end(run)

    # --- final model and summary ----------------------------------------------------------------------------
    final_model = _save_final_model(accelerator, model, tokenizer, run_dir, lora=config.lora_r > 0)
    summary = _summary(log_path, objective, total_steps, start_step, seconds, accelerator) if accelerator.is_main_process else {}
    if accelerator.is_main_process:
        atomic_write_json(run_dir / SUMMARY_FILE, summary)
    accelerator.wait_for_everyone()
    return UnlearnResult(
        run_dir=run_dir,
        model_dir=run_dir / MODEL_DIR,
        steps=total_steps,
        summary=summary,
        last_log=last_record,
        model=final_model,
    )


# --- helpers, in the order the loop uses them -------------------------------------------------------------


def _objective_config(config: UnlearnConfig) -> ObjectiveConfig:
    method, spec_retain = parse_method_spec(config.method)
    if spec_retain is not None and config.retain_loss is not None and spec_retain.lower() != config.retain_loss.lower():
        raise UsageError(
            f"--method {config.method} names retain loss {spec_retain} but --retain-loss is {config.retain_loss}; give one"
        )
    return ObjectiveConfig(
        method=method,
        retain_loss=config.retain_loss if config.retain_loss is not None else spec_retain,
        gamma=config.gamma,
        alpha=config.alpha,
        hparams=dict(config.hparams),
        kl_mask=config.kl_mask,
    )


def _accelerator(config: UnlearnConfig):
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin

    mixed_precision = config.mixed_precision
    if mixed_precision == "auto":
        if "ACCELERATE_MIXED_PRECISION" in os.environ:  # set by `accelerate launch` / its config file
            mixed_precision = None
        else:
            bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            mixed_precision = "bf16" if bf16 else "no"
    # A torchrun-style launch (`accelerate launch --multi_gpu`, or the MULTI_GPU config type) on a machine
    # without GPUs: run the processes on the CPU with gloo (accelerate's MULTI_CPU type itself needs MPI).
    cpu_world = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    # The schedule counts global optimizer steps, so it steps once per step whatever the number of processes.
    return Accelerator(
        cpu=cpu_world,
        mixed_precision=mixed_precision,
        # Explicit, so an ACCELERATE_GRADIENT_ACCUMULATION_STEPS from a launch config cannot disagree with the loop.
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=config.grad_accum, sync_with_dataloader=False),
        step_scheduler_with_optimizer=False,
    )


def _open_run_dir(accelerator, config: UnlearnConfig) -> Path:
    """Check RUN on every process before any of them writes; the main process then creates or wipes it."""
    run_dir = Path(config.out)
    nonempty = run_dir.is_dir() and any(run_dir.iterdir())
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"output path {run_dir} exists and is not a folder; choose another --out")
    if nonempty and not (config.overwrite or config.resume):
        raise UsageError(f"run folder {run_dir} already exists; pass --resume to continue it, --overwrite to replace it, or another --out")
    if nonempty and config.resume:
        _check_resumable(run_dir, config, accelerator.num_processes)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        prepare_output_dir(run_dir, overwrite=config.overwrite, resume=config.resume)
    accelerator.wait_for_everyone()
    return run_dir


def _check_resumable(run_dir: Path, config: UnlearnConfig, world_size: int) -> None:
    if (run_dir / SUMMARY_FILE).exists():
        raise UsageError(f"run {run_dir} already finished; pass --overwrite to run it again")
    config_path = run_dir / CONFIG_FILE
    if not config_path.exists():
        return  # killed before writing its config: nothing to continue, start afresh
    saved = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    old, new = saved["options"], config.to_dict()
    changed = sorted(k for k in set(old) | set(new) if k not in RESUME_FREE_FIELDS and old.get(k) != new.get(k))
    if changed:
        details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise UsageError(f"--resume needs the options of the interrupted run; changed: {details}")
    if saved["resolved"]["world_size"] != world_size:
        raise UsageError(f"run {run_dir} ran on {saved['resolved']['world_size']} processes; resume it on as many (now {world_size})")


def with_lora(model, config: UnlearnConfig):
    """`model` wrapped with LoRA adapters (peft) when `config.lora_r` > 0, else unchanged."""
    if config.lora_r == 0:
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha if config.lora_alpha is not None else 2 * config.lora_r,
        lora_dropout=0.0,
        target_modules="all-linear",
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def _refusal(seed: int):
    from geffect.data.refusals import refusal_for

    return lambda index, record: refusal_for(index, seed)


def _prepare(accelerator, model, optimizer, scheduler, config: UnlearnConfig):
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        # No dataloader goes through accelerate, so DeepSpeed cannot infer its "auto" micro-batch size.
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.batch_size
    return accelerator.prepare(model, optimizer, scheduler)


def _reference_model(accelerator, config: UnlearnConfig):
    """The frozen model at θ_o, sharded like the trained one under DeepSpeed ZeRO-3 / FSDP (as TRL does)."""
    from accelerate.utils import DistributedType

    ref = load_model(config.model, dtype=config.dtype)
    ref.requires_grad_(False)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        import copy

        import deepspeed

        ds_config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
        if ds_config.get("zero_optimization", {}).get("stage") != 3:
            ds_config["zero_optimization"] = {"stage": 0}  # unsharded copy on every device
        ds_config.pop("optimizer", None)
        ds_config.pop("scheduler", None)
        ref, *_ = deepspeed.initialize(model=ref, config=ds_config)
    elif accelerator.distributed_type == DistributedType.FSDP:
        if getattr(accelerator, "is_fsdp2", False):
            from accelerate.utils.fsdp_utils import fsdp2_prepare_model

            ref = fsdp2_prepare_model(accelerator, ref)
        else:
            ref = accelerator.prepare_model(ref)
    else:
        ref = ref.to(accelerator.device)
    return ref.eval()


def _backward(accelerator, loss: torch.Tensor, retain_graph: bool) -> None:
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        # accelerate's DeepSpeed backward also takes the optimizer step; split them so callbacks run in between.
        accelerator.deepspeed_engine_wrapped.engine.backward(loss, retain_graph=retain_graph)
    else:
        accelerator.backward(loss, retain_graph=retain_graph)  # divides by grad_accum


def _clip_and_norm(accelerator, model, max_norm: float | None) -> float | None:
    """Total gradient norm before clipping (clipping only when `max_norm`); None where DeepSpeed owns it."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return None  # the engine clips (its `gradient_clipping` setting) and knows the norm only after its step
    if max_norm is not None or accelerator.distributed_type == DistributedType.FSDP:  # sharded norms need FSDP's
        norm = accelerator.clip_grad_norm_(model.parameters(), max_norm if max_norm is not None else math.inf)
    else:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
    return float(norm)


def _optimizer_step(accelerator, optimizer) -> None:
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        accelerator.deepspeed_engine_wrapped.engine.step()  # optimizer (and its scheduler) inside the engine
    optimizer.step()  # a no-op wrapper under DeepSpeed


def _diverged(what: str, value: float, step: int, run_dir: Path) -> str:
    checkpoint = latest_checkpoint(run_dir)
    kept = f"last good checkpoint: {checkpoint}" if checkpoint else "no checkpoint was written (see --save-every)"
    return f"{what} is {value} at optimizer step {step}; run stopped before the update ({kept}); lower --lr or add --max-grad-norm"


def _keep_log_until(log_path: Path, step: int) -> None:
    """A resumed run continues the log of its checkpoint: later lines (lost work) are dropped."""
    if not log_path.exists():
        return
    kept = [record for record in read_jsonl(log_path) if record["step"] <= step] if step else []
    atomic_write_text(log_path, "".join(_json_line(record) for record in kept))


def _json_line(record: dict) -> str:
    import json

    return json.dumps(record, ensure_ascii=False) + "\n"


def _save_final_model(accelerator, model, tokenizer, run_dir: Path, lora: bool):
    """RUN/model as a save_pretrained folder (safetensors); LoRA adapters are merged into the weights."""
    accelerator.wait_for_everyone()
    state_dict = None if lora else accelerator.get_state_dict(model)  # gathers shards under ZeRO-3 / FSDP
    unwrapped = accelerator.unwrap_model(model)
    if lora:
        unwrapped = unwrapped.merge_and_unload()
    if accelerator.is_main_process:
        final, tmp = run_dir / MODEL_DIR, run_dir / f".{MODEL_DIR}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        unwrapped.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    accelerator.wait_for_everyone()
    return unwrapped


def _summary(log_path: Path, objective, total_steps: int, start_step: int, seconds: float, accelerator) -> dict:
    records = read_jsonl(log_path) if log_path.exists() else []
    ran = total_steps - start_step
    first, last = (records[0], records[-1]) if records else (None, None)
    return {
        "method": objective.name,
        "objective": _plain(objective.config),
        "steps": total_steps,
        "resumed_from_step": start_step,
        "world_size": accelerator.num_processes,
        "train_seconds": round(seconds, 3),
        "steps_per_second": round(ran / seconds, 4) if seconds > 0 and ran else None,
        "forget_risk_first": first["forget_risk"] if first else None,
        "forget_risk_last": last["forget_risk"] if last else None,
        "retain_risk_first": first["retain_risk"] if first else None,
        "retain_risk_last": last["retain_risk"] if last else None,
        "last": last,
    }


def _plain(obj) -> dict:
    import dataclasses

    values = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(obj)
    values["hparams"] = dict(values.get("hparams") or {})
    return values
