"""The unlearning loop, on `accelerate`: one file, read top to bottom.

    result = unlearn(UnlearnConfig(model="runs/target/model", data="data/bench", out="runs/npo", method="NPO"))

Per optimizer step: `grad_accum` micro-batches (forget items paired with random retain items, see
`batches.py`) go through the objective and backward; the callbacks see the accumulated gradients; then
clipping (optional), AdamW, the warm-up/decay schedule, one line of `log.jsonl`, and every `save_every` steps a
checkpoint. A non-finite loss or gradient norm stops the run before the optimizer step, and non-finite
weights (an update that overflowed them) stop it before any checkpoint or final save, so nothing saved ever
holds a diverged model.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from geffect import __version__
from geffect.data.collate import collate, pad_token_id
from geffect.data.templates import get_template, template_for_model
from geffect.data.tofu import RETAIN_FOR_FORGET, load_split, slice_record
from geffect.errors import TrainingDiverged, UsageError
from geffect.faults import fault_point
from geffect.io import check_output_place, check_writable, occupied, staging_path
from geffect.models.loading import check_model_source, load_model, load_tokenizer
from geffect.models.lora import with_lora
from geffect.objectives import ObjectiveConfig, build_objective
from geffect.objectives import objective_config as make_objective_config
from geffect.runfolder import RunFolder, recorded_options
from geffect.training.batches import BatchBuilder, StepSampler, encode_records
from geffect.training.callbacks import RunContext, StepCallback, StepContext
from geffect.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from geffect.training.config import RESUME_FREE_FIELDS, UnlearnConfig, UnlearnResult
from geffect.training.guards import check_lora, method_label, non_finite_parameters, range_warnings, weights_problem
from geffect.training.schedule import build_scheduler, warmup_steps_for


@dataclass
class _Setup:
    """Everything the loop needs, built by `set_up` in an order that keeps runs reproducible."""

    config: UnlearnConfig
    accelerator: Any
    folder: RunFolder
    objective: Any
    template: Any
    tokenizer: Any
    model: Any
    ref_model: Any
    optimizer: Any
    scheduler: Any
    sampler: StepSampler
    builder: BatchBuilder
    total_steps: int
    start_step: int
    update: Any = None  # the UpdateRule (geffect.updates)


def unlearn(config: UnlearnConfig, callbacks: Sequence[StepCallback] = ()) -> UnlearnResult:
    """Run (or `config.resume`) one unlearning run; see UnlearnConfig for the options."""
    s = set_up(config, callbacks)
    accelerator, model, objective, sampler, folder = s.accelerator, s.model, s.objective, s.sampler, s.folder
    if config.progress and accelerator.is_main_process:
        _say_plan(s)
    run = RunContext(
        folder=folder,
        model=accelerator.unwrap_model(model),
        accelerator=accelerator,
        objective=objective,
        ref_model=s.ref_model,
        tokenizer=s.tokenizer,
        options=config,
        template=s.template,
        total_steps=s.total_steps,
        start_step=s.start_step,
    )
    keep_graph = s.update.keeps_graph and any(getattr(callback, "retain_graph", False) for callback in callbacks)
    for callback in callbacks:
        callback.on_train_begin(run)
    from tqdm.auto import tqdm

    bar = tqdm(
        total=s.total_steps,
        initial=s.start_step,
        desc=f"unlearn {_method_label(objective)}",  # NPO+KL, as the user asked for it
        unit="step",
        disable=not (config.progress and accelerator.is_main_process),
    )
    last_record = None
    started = time.perf_counter()
    try:
        for step in range(s.start_step, s.total_steps):
            # The update rule turns the step's micro-batches into the gradient in p.grad (geffect.updates).
            result = s.update.compute(_step_inputs(s, step, keep_graph))
            batch, out = result.batch, result.output
            record = {**result.stats.reduce(accelerator), **({"update": result.info} if result.info else {})}
            lr = s.scheduler.get_last_lr()[0]
            if not math.isfinite(record["loss"]):
                raise TrainingDiverged(_diverged("loss", record["loss"], step + 1, folder))

            if callbacks:
                context = StepContext(step=step + 1, lr=lr, batch=batch, loss_output=out, extra=_extra(result, model))
                for callback in callbacks:
                    callback.after_backward(run, context)
                del context
            del out, result  # frees the kept graph

            grad_norm = _clip_and_norm(accelerator, model, config.max_grad_norm)
            if grad_norm is not None and not math.isfinite(grad_norm):
                raise TrainingDiverged(_diverged("gradient norm", grad_norm, step + 1, folder))
            _optimizer_step(accelerator, s.optimizer)
            _after_step(s, callbacks, run, StepContext(step=step + 1, lr=lr, batch=batch, loss_output=None))
            s.scheduler.step()
            s.optimizer.zero_grad(set_to_none=True)

            epoch = round((step + 1) / sampler.steps_per_epoch, 6)
            last_record = {"step": step + 1, "epoch": epoch, **record, "lr": lr, "grad_norm": grad_norm}
            if accelerator.is_main_process:
                folder.append_log(last_record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4g}", forget_risk=f"{record['forget_risk']:.4g}", refresh=False)
            if config.save_every and (step + 1) % config.save_every == 0:
                _save_checkpoint(s, step)
    except BaseException:
        s.folder.close(failed=True)
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    for callback in callbacks:
        callback.on_train_end(run)
    return _finish(s, seconds, last_record)


def set_up(config: UnlearnConfig, callbacks: Sequence[StepCallback] = ()) -> _Setup:
    """Check the input, open (and lock) the run folder, then build the model, data, optimizer and schedule
    and load the checkpoint of a resumed run; writes config.yaml. Everything that can be wrong with the input
    fails before anything is written; a failure after the folder was opened releases it again."""
    opened: list[RunFolder] = []
    try:
        return _set_up(config, callbacks, opened)
    except BaseException:
        for folder in opened:
            folder.close(failed=True)
        raise


def _set_up(config: UnlearnConfig, callbacks: Sequence[StepCallback], opened: list[RunFolder]) -> _Setup:
    from accelerate.utils import set_seed

    config.validate()
    check_lora(config.lora_r, config.lora_alpha)
    objective = build_objective(objective_config(config))
    check_model_source(config.model)
    forget_records = load_split(config.data, config.forget)
    retain_records = load_split(config.data, RETAIN_FOR_FORGET[config.forget])
    template = get_template(config.template) if config.template else template_for_model(config.model)
    accelerator = _accelerator(config)
    update = _update_rule(config, accelerator)
    folder = _open_run_dir(accelerator, config, callbacks)
    opened.append(folder)

    set_seed(config.seed)
    tokenizer = load_tokenizer(config.model)
    model = with_lora(load_model(config.model, dtype=config.dtype), config.lora_r, config.lora_alpha).train()
    encode = dict(tokenizer=tokenizer, template=template, max_length=config.max_length)
    forget_items = encode_records(records=forget_records, **encode)
    retain_items = encode_records(records=retain_records, **encode)
    idk_items = _refusal_items(config, forget_records, encode) if objective.needs_idk else None

    sampler, total_steps, warmup = _step_plan(config, len(forget_items), len(retain_items), accelerator.num_processes)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = build_scheduler(optimizer, warmup, total_steps)
    model, optimizer, scheduler = _prepare(accelerator, model, optimizer, scheduler, config)
    ref_model = _reference_model(accelerator, config) if objective.needs_reference else None
    objective.setup(accelerator.unwrap_model(model), torch.Generator().manual_seed(config.seed))
    builder = BatchBuilder(forget_items, retain_items, pad_token_id(tokenizer), accelerator.device, idk_items)
    checks = [callback for callback in callbacks if hasattr(callback, "check_model")]
    if checks:  # a callback may refuse the model before anything is written (instances the ghost path can't split)
        sample = {k: v.to(accelerator.device) for k, v in collate(forget_items[:2], pad_token_id(tokenizer)).items()}
        for callback in checks:
            callback.check_model(accelerator.unwrap_model(model), sample)

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
    if slice_record(config.data) is not None:  # a TOFU slice (geffect data slice): say which
        resolved["data_slice"] = slice_record(config.data)
    start_step = _resume(accelerator, folder, objective, config.resume)
    if accelerator.is_main_process:
        folder.keep_log_until(start_step)
        folder.write_config(_document(config, resolved, callbacks))
    accelerator.wait_for_everyone()
    parts = (objective, template, tokenizer, model, ref_model, optimizer, scheduler, sampler, builder)
    update.setup(accelerator.unwrap_model(model), total_steps, config.seed)
    return _Setup(config, accelerator, folder, *parts, total_steps, start_step, update)


def _say_plan(s: _Setup) -> None:
    """The lr schedule and the checkpoints' size, on stderr before the first step (training/start_notes.py)."""
    from geffect.training.start_notes import describe_checkpoints, describe_schedule

    warmup = warmup_steps_for(s.config.warmup_epochs, s.sampler.steps_per_epoch, s.total_steps)
    lines = [describe_schedule(s.config.lr, warmup, s.total_steps, s.sampler.steps_per_epoch)]
    model = s.accelerator.unwrap_model(s.model)
    lines.append(describe_checkpoints(model, s.config.save_every, s.config.keep_checkpoints, s.total_steps))
    for line in filter(None, lines):
        print(line, file=sys.stderr)


def _step_plan(config: UnlearnConfig, n_forget: int, n_retain: int, world_size: int) -> tuple[StepSampler, int, int]:
    """The sampler of each step's items, the number of optimizer steps and the warm-up steps."""
    sampler = StepSampler(n_forget, n_retain, config.batch_size, config.grad_accum, world_size, config.seed)
    total_steps = config.epochs * sampler.steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    return sampler, total_steps, warmup_steps_for(config.warmup_epochs, sampler.steps_per_epoch, total_steps)


def _document(config: UnlearnConfig, resolved: dict, callbacks: Sequence[StepCallback]) -> dict:
    """config.yaml: the options, the values they resolved to, and each callback's recorded settings."""
    document = {"geffect_version": __version__, "options": recorded_options(config.to_dict()), "resolved": resolved}
    recorded = _callback_settings(callbacks)
    if recorded:
        document["callbacks"] = sorted(recorded)
        document.update(recorded)
    return document


def _callback_settings(callbacks: Sequence[StepCallback]) -> dict[str, dict]:
    return {c.settings_name: c.settings() for c in callbacks if getattr(c, "settings_name", None)}


def _resume(accelerator, folder: RunFolder, objective, resume: bool) -> int:
    """The step the run continues from: that of its latest checkpoint (objective state restored), else 0."""
    checkpoint = latest_checkpoint(folder.path) if resume else None
    if checkpoint is None:
        return 0
    trainer_state, objective_state = load_checkpoint(accelerator, checkpoint)
    objective.load_state_dict(objective_state)
    return int(trainer_state["step"])


def _check_weights(s: _Setup, step: int) -> None:
    """Before any save: the weights after optimizer step `step` are finite on every process (a float16 AdamW
    step, say, can overflow them without a non-finite loss or gradient), else the run stops, saving nothing."""
    bad = non_finite_parameters(s.model)
    count = torch.tensor(float(len(bad)), device=s.accelerator.device)
    if s.accelerator.num_processes > 1:
        count = s.accelerator.reduce(count, reduction="sum")
    if float(count) > 0:
        problem = weights_problem(bad, f"after optimizer step {step}") or "weights are not finite on another process"
        raise TrainingDiverged(
            f"{problem}; run stopped before saving them ({_kept(s.folder)}); lower --lr, add --max-grad-norm, or load the "
            "weights in float32 (--dtype float32, with --mixed-precision bf16 for speed)"
        )


def _save_checkpoint(s: _Setup, step: int) -> None:
    _check_weights(s, step + 1)
    state = {"step": step + 1, "epoch": s.sampler.epoch_of(step), "data_position": (step + 1) * s.sampler.global_batch}
    save_checkpoint(
        s.accelerator, s.folder.path, step + 1, state, s.objective.state_dict(), keep=s.config.keep_checkpoints
    )


def _finish(s: _Setup, seconds: float, last_record: dict | None) -> UnlearnResult:
    """RUN/model, then RUN/summary.json (last: it marks the run finished); a staged (--overwrite) folder then
    replaces the old one, and the run folder's lock is released."""
    try:
        result = _save_results(s, seconds, last_record)
    except BaseException:
        s.folder.close(failed=True)
        raise
    s.folder.close(failed=False)
    return result


def _save_results(s: _Setup, seconds: float, last_record: dict | None) -> UnlearnResult:
    accelerator, folder = s.accelerator, s.folder
    s.update.before_save(accelerator.unwrap_model(s.model))  # weight averaging puts its average in
    _check_weights(s, s.total_steps)
    final_model = _save_final_model(accelerator, s.model, s.tokenizer, folder, lora=s.config.lora_r > 0)
    summary = {}
    if accelerator.is_main_process:
        summary = _summary(folder, s.objective, s.total_steps, s.start_step, seconds, accelerator)
        summary["warnings"] = range_warnings(summary, accelerator.unwrap_model(s.model).config.vocab_size)
        summary["update"] = s.update.summary()
        folder.write_summary(summary)
        folder.swap_in()
    accelerator.wait_for_everyone()
    return UnlearnResult(
        run_dir=folder.final,
        model_dir=RunFolder(folder.final).model_dir,
        steps=s.total_steps,
        summary=summary,
        last_log=last_record,
        model=final_model,
    )


# --- helpers, in the order the loop uses them -------------------------------------------------------------


def objective_config(config: UnlearnConfig) -> ObjectiveConfig:
    return make_objective_config(
        config.method, config.retain_loss, config.gamma, config.alpha, config.hparams, config.kl_mask, config.preset
    )


def _update_rule(config: UnlearnConfig, accelerator):
    """The run's update rule; the rules beyond `plain` and `ge-project`'s kin run on one process, and weight
    averaging cannot continue a run (its running average is not checkpointed)."""
    from geffect.updates import build_update

    rule = build_update(config.update, config.update_params)
    if accelerator.num_processes > 1 and not rule.distributed:
        raise UsageError(
            f"--update {rule.name} runs on one process only; launch without several processes or use plain"
        )
    if config.resume and rule.name == "wa":
        raise UsageError(
            "--update wa cannot --resume: its running weight average is not checkpointed; start the run again"
        )
    return rule


def _step_inputs(s: _Setup, step: int, keep_graph: bool):
    """What the update rule needs for optimizer step `step` (0-based): the step's micro-batches and the passes."""
    from geffect.updates import StepInputs

    micro = s.sampler.micro_batches(step, s.accelerator.process_index)
    return StepInputs(
        model=s.model,
        objective=s.objective,
        ref_model=s.ref_model,
        micro_batches=[s.builder.build(m) for m in micro],
        accelerator=s.accelerator,
        backward=lambda loss, retain_graph: _backward(s.accelerator, loss, retain_graph=retain_graph),
        keep_graph=keep_graph,
        step=step + 1,
        seed=s.config.seed,
    )


def _extra(result, model) -> dict:
    """StepContext.extra: the plain objective gradient where the rule's differs (keyed by parameter id)."""
    if result.plain_grad is None:
        return {}
    params = [p for p in model.parameters() if p.requires_grad]
    return {"plain_grad": dict(zip(map(id, params), result.plain_grad))}


def _after_step(s: _Setup, callbacks: Sequence[StepCallback], run: RunContext, context: StepContext) -> None:
    """After the optimizer step: the rule's hook (weight averaging), then callbacks that look at the update."""
    s.update.after_optimizer_step(s.accelerator.unwrap_model(s.model), context.step)
    for callback in callbacks:
        if hasattr(callback, "after_step"):
            callback.after_step(run, context)


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
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=config.grad_accum, sync_with_dataloader=False
        ),
        step_scheduler_with_optimizer=False,
    )


def _open_run_dir(accelerator, config: UnlearnConfig, callbacks: Sequence[StepCallback]) -> RunFolder:
    """Check RUN on every process before any of them writes; the main process locks it (a second run into it
    exits 2). A new or resumed run writes RUN in place; --overwrite of a folder with results writes a staging
    sibling that `_finish` swaps in, so the old results stay until the new ones exist."""
    check_output_place(config.out, inputs=(config.model, config.data))
    run_dir = Path(config.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"output path {run_dir} exists and is not a folder; choose another --out")
    if config.resume and not run_dir.is_dir():
        raise UsageError(f"--resume: run folder {run_dir} does not exist; check --out, or drop --resume to start anew")
    check_writable(run_dir)
    folder = RunFolder(run_dir)
    if accelerator.is_main_process:
        folder.take_lock()
    try:
        folder = _run_layout(accelerator, folder, config, callbacks)
    except BaseException:
        folder.close(failed=True)
        raise
    return folder


def _run_layout(accelerator, folder: RunFolder, config: UnlearnConfig, callbacks: Sequence[StepCallback]) -> RunFolder:
    """The folder the run writes: RUN itself, or (--overwrite of a folder with results) its staging sibling."""
    run_dir = folder.path
    nonempty = occupied(run_dir)
    if nonempty and not (config.overwrite or config.resume):
        raise UsageError(
            f"run folder {run_dir} already exists; pass --resume to continue it, --overwrite to replace it, or another --out"
        )
    if nonempty and config.resume:
        _check_resumable(folder, config, accelerator.num_processes, callbacks)
    if config.resume and latest_checkpoint(run_dir) is None and accelerator.is_main_process:
        logging.getLogger(__name__).warning("--resume: %s has no checkpoint to continue; starting at step 0", run_dir)
    if nonempty and config.overwrite:
        staged = RunFolder(staging_path(run_dir), final=run_dir)
        staged.lock, folder.lock = folder.lock, None
        folder = staged
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if folder.staged:
            shutil.rmtree(folder.path, ignore_errors=True)  # left by a killed --overwrite run
        folder.path.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    return folder


def _check_resumable(
    folder: RunFolder, config: UnlearnConfig, world_size: int, callbacks: Sequence[StepCallback]
) -> None:
    if folder.finished:
        raise UsageError(f"run {folder.path} already finished; pass --overwrite to run it again")
    saved = folder.read_config()
    if not saved:
        return  # killed before writing its config: nothing to continue, start afresh
    old, new = recorded_options(saved["options"]), recorded_options(config.to_dict())
    changed = sorted(k for k in set(old) | set(new) if k not in RESUME_FREE_FIELDS and old.get(k) != new.get(k))
    if changed:
        details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise UsageError(f"--resume needs the options of the interrupted run; changed: {details}")
    if saved["resolved"]["world_size"] != world_size:
        raise UsageError(
            f"run {folder.path} ran on {saved['resolved']['world_size']} processes; resume it on as many (now {world_size})"
        )
    _check_callback_settings({name: saved[name] for name in saved.get("callbacks", [])}, _callback_settings(callbacks))


def _check_callback_settings(saved: dict[str, dict], new: dict[str, dict]) -> None:
    """--resume must observe the run as the interrupted one did (RUN/geffect.jsonl would mix two settings)."""
    for name in sorted(set(saved) | set(new)):
        old, now = saved.get(name), new.get(name)
        if old == now:
            continue
        if old is None or now is None:
            change = f"the run had no {name}" if old is None else f"the run had {name}"
        else:
            change = "changed: " + ", ".join(
                f"{k}: {old.get(k)!r} -> {now.get(k)!r}"
                for k in sorted(set(old) | set(now))
                if old.get(k) != now.get(k)
            )
        raise UsageError(f"--resume needs the {name} settings of the interrupted run; {change}")


def _refusal_items(config: UnlearnConfig, records: list[dict], encode: dict):
    """The forget questions with the preferred answers: refusals (--refusals, --refusal-sampling) or AltPO's
    --alternates (geffect.data.refusals)."""
    from geffect.data.collate import encode_qa
    from geffect.data.refusals import preferred_items

    def encode_one(index: int, answer: str):
        return encode_qa(question=records[index]["question"], answer=answer, index=index, **encode)

    return preferred_items(records, encode_one, config)


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


def _kept(folder: RunFolder) -> str:
    """What a stopped run leaves to continue from."""
    if folder.staged:
        return f"{folder.final} keeps its previous results"
    checkpoint = latest_checkpoint(folder.path)
    return f"last good checkpoint: {checkpoint}" if checkpoint else "no checkpoint was written (see --save-every)"


def _diverged(what: str, value: float, step: int, folder: RunFolder) -> str:
    return f"{what} is {value} at optimizer step {step}; run stopped before the update ({_kept(folder)}); lower --lr or add --max-grad-norm"


def _save_final_model(accelerator, model, tokenizer, folder: RunFolder, lora: bool):
    """RUN/model as a save_pretrained folder (safetensors); LoRA adapters are merged into the weights."""
    accelerator.wait_for_everyone()
    state_dict = None if lora else accelerator.get_state_dict(model)  # gathers shards under ZeRO-3 / FSDP
    unwrapped = accelerator.unwrap_model(model)
    if lora:
        unwrapped = unwrapped.merge_and_unload()
    if accelerator.is_main_process:
        final, tmp = folder.model_dir, folder.path / f".{folder.MODEL}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        unwrapped.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        fault_point("final-save")  # tests only (geffect.faults): a kill before the rename
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    accelerator.wait_for_everyone()
    return unwrapped


def _summary(folder: RunFolder, objective, total_steps: int, start_step: int, seconds: float, accelerator) -> dict:
    records = folder.read_log()
    ran = total_steps - start_step
    first, last = (records[0], records[-1]) if records else (None, None)
    return {
        "method": _method_label(objective),
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


def _method_label(objective) -> str:
    """NPO+KL, not NPO, for a method run with a retain loss other than its own default."""
    own = build_objective(make_objective_config(objective.config.method, preset=objective.config.preset))
    return method_label(objective.name, objective.config.retain_loss, own.config.retain_loss)


def _plain(obj) -> dict:
    import dataclasses

    values = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(obj)
    values["hparams"] = dict(values.get("hparams") or {})
    return values
