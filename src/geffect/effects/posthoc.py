"""Post-hoc G-effects over saved checkpoints (the paper's offline scheme, exactly and on the device).

    checkpoints = expand_checkpoints(["runs/npo"])            # a run folder -> its checkpoints, in step order
    for record in posthoc_effects(checkpoints, objective, EffectOptions(data="data/bench")):
        ...                                                   # one geffect.jsonl-shaped dict per checkpoint

For each checkpoint the model is loaded (eval mode: no dropout), G = grad L_u is accumulated in `p.grad` over the
objective batches (see `EffectSets`), and e_u, e_r come from the engine (plain risk gradients, or ghost dot
products with `instances`). Format and choices: docs/geffect-posthoc.md.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from geffect.effects.blocks import discover_layout
from geffect.effects.dots import param_grads
from geffect.effects.engine import Batch, SetEffect, ghost_effect, gradient_effect
from geffect.effects.records import effect_record, forget_item_weights
from geffect.effects.validate import FirstOrderResult, first_order_check
from geffect.errors import UsageError
from geffect.objectives import Objective, UnlearnBatch
from geffect.runfolder import RunFolder, json_safe

ESTIMATORS = ("full", "batch")


# -- which folders ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int | None  # optimizer updates the weights have taken; None when unknown
    run_dir: Path | None = None  # the unlearning run it belongs to (holds config.yaml), if any
    state: bool = False  # True: a run's checkpoints/step-N folder (accelerate state, no config.json)


def run_document(run_dir: Path | None) -> dict:
    """The run's config.yaml ({"options", "resolved", ...}), or {} outside a run."""
    if run_dir is None:
        return {}
    document = RunFolder(run_dir).read_config()
    return document if isinstance(document, dict) and "options" in document else {}


def _final_step(run_dir: Path) -> int | None:
    return RunFolder(run_dir).read_summary().get("steps")


def _run_checkpoints(run_dir: Path) -> list[Checkpoint]:
    from geffect.training.checkpoint import list_checkpoints

    found = [Checkpoint(path, step, run_dir, state=True) for step, path in list_checkpoints(run_dir)]
    final = RunFolder(run_dir).model_dir
    if (final / "config.json").exists():
        step = _final_step(run_dir)
        if step is None or step not in {c.step for c in found}:
            found.append(Checkpoint(final, step, run_dir))
    if not found:
        raise UsageError(
            f"run folder {run_dir} has no checkpoints and no final model; unlearn with --save-every N --keep-checkpoints 0"
        )
    return found


def _is_run(path: Path) -> bool:
    folder = RunFolder(path)
    return bool(run_document(path)) and (folder.checkpoints_dir.is_dir() or folder.model_dir.is_dir())


def expand_checkpoints(paths: Sequence[str | Path]) -> list[Checkpoint]:
    """Each path is a save_pretrained folder, a run's checkpoints/step-N folder, or a run folder (its
    checkpoints in step order, then RUN/model when no checkpoint has its step)."""
    from geffect.training.checkpoint import TRAINER_STATE

    result: list[Checkpoint] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.is_dir():
            raise UsageError(
                f"checkpoint folder {path} does not exist; pass save_pretrained folders, run checkpoints (RUN/checkpoints/step-N) or run folders"
            )
        if _is_run(path):
            result.extend(_run_checkpoints(path))
        elif (path / TRAINER_STATE).exists():
            run_dir = path.parent.parent
            if not run_document(run_dir):
                raise UsageError(
                    f"checkpoint {path} is not inside its run folder (no {RunFolder(run_dir).config_path}); its model architecture is unknown"
                )
            step = json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))["step"]
            result.append(Checkpoint(path, int(step), run_dir, state=True))
        elif (path / "config.json").exists():
            run_dir = path.parent if path == RunFolder(path.parent).model_dir and run_document(path.parent) else None
            digits = re.search(r"(\d+)$", path.name)
            step = _final_step(run_dir) if run_dir is not None else (int(digits.group(1)) if digits else None)
            result.append(Checkpoint(path, step, run_dir))
        else:
            raise UsageError(
                f"{path} is not a model folder (config.json), a run checkpoint (trainer_state.json) or a run folder (config.yaml)"
            )
    return result


def _shared_with(model: nn.Module, loaded: set[str]) -> set[str]:
    """Names in the model's state dict whose storage is that of a loaded name (tied weights saved once)."""
    state = model.state_dict()
    pointers = {state[name].data_ptr() for name in loaded if name in state}
    return {name for name, tensor in state.items() if tensor.data_ptr() in pointers}


def load_checkpoint_model(checkpoint: Checkpoint, dtype: str | None = None) -> nn.Module:
    """The checkpoint's model in eval mode; run checkpoints are rebuilt from the run's model and their weights."""
    from safetensors.torch import load_file

    from geffect.models.loading import load_model

    if not checkpoint.state:
        return load_model(str(checkpoint.path), dtype=dtype)
    options = run_document(checkpoint.run_dir)["options"]
    weights = checkpoint.path / "model.safetensors"
    if not weights.exists():
        raise UsageError(
            f"{checkpoint.path} holds no model.safetensors (a sharded FSDP/DeepSpeed state?); save it as a save_pretrained folder first"
        )
    model = load_model(options["model"], dtype=dtype or options.get("dtype"))
    from geffect.models.lora import with_lora

    rank = int(options.get("lora_r") or 0)
    model = with_lora(model, rank, options.get("lora_alpha"))
    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    from geffect.training.checkpoint import left_out_weights

    # a LoRA checkpoint holds the adapters only: its frozen base is the run's --model, loaded above
    missing = sorted(set(missing) - _shared_with(model, set(state)) - set(left_out_weights(checkpoint.path)))
    if missing or unexpected:
        raise UsageError(
            f"checkpoint {checkpoint.path} does not fit the run's model {options['model']}: "
            f"missing {missing[:3]}, unexpected {list(unexpected)[:3]}"
        )
    if rank > 0:
        model = model.merge_and_unload()
    return model.eval()


def tokenizer_source(checkpoint: Checkpoint) -> str:
    return str(run_document(checkpoint.run_dir)["options"]["model"]) if checkpoint.state else str(checkpoint.path)


# -- which data --------------------------------------------------------------------------------------------------


@dataclass
class EffectOptions:
    data: str
    forget: str = "forget10"
    estimator: str = "full"  # full | batch
    batch_size: int = 8
    probe_size: int = 32
    instances: bool = False
    tokens: bool = False
    tensors: bool = False
    template: str | None = None  # None: the run's, else from the model name
    max_length: int | None = None  # None: the run's, else 512
    seed: int | None = None  # None: the run's, else 0
    dtype: str | None = None

    def validate(self) -> None:
        from geffect.data.tofu import FORGET_SPLITS

        if self.forget not in FORGET_SPLITS:
            raise UsageError(f"unknown forget split {self.forget!r}; choose one of {', '.join(FORGET_SPLITS)}")
        if self.estimator not in ESTIMATORS:
            raise UsageError(f"unknown estimator {self.estimator!r}; choose one of {', '.join(ESTIMATORS)}")
        for name in ("batch_size", "probe_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")


@dataclass
class EffectSets:
    """What one measurement uses.

    full:  G = sum_b (n_b / n) grad L_u(b) over the whole forget split in order, cut into batches of
           `batch_size`, each paired with random retain items (the exact grad L_u(D_u) when one batch holds the
           split, or for objectives that average over items); e_u over the whole forget split, e_r over a
           fixed retain probe of `probe_size` items (drawn with the seed, as the in-run tracker does).
    batch: G on the first mini-batch the run would take (`StepSampler` order with the seed); e_u on its
           forget items, e_r on its paired retain items (the in-run `batch` estimator).
    """

    objective_batches: list[tuple[UnlearnBatch, float]]
    forget: list[Batch]
    retain: list[Batch]
    estimator: str


def _chunks(indices: np.ndarray, size: int) -> list[np.ndarray]:
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def build_sets(
    tokenizer,
    template,
    options: EffectOptions,
    objective: Objective,
    seed: int,
    max_length: int,
    device,
    preferred: Mapping[str, Any] | None = None,
) -> EffectSets:
    """`preferred`: the run's `refusals` and `alternates` files (IdkPO/DPO's refusals, AltPO's answers), so
    that the objective measured is the run's; refusals drawn per visit in the run are fixed per item here (a
    measurement needs one objective)."""
    from types import SimpleNamespace

    from geffect.data.collate import collate, encode_qa, pad_token_id
    from geffect.data.refusals import preferred_items
    from geffect.data.tofu import RETAIN_FOR_FORGET, load_split
    from geffect.training.batches import BatchBuilder, MicroBatch, StepSampler, encode_records

    forget_records = load_split(options.data, options.forget)
    retain_records = load_split(options.data, RETAIN_FOR_FORGET[options.forget])
    encode = dict(tokenizer=tokenizer, template=template, max_length=max_length)
    forget = encode_records(records=forget_records, **encode)
    retain = encode_records(records=retain_records, **encode)
    idk = None
    if objective.needs_idk:
        preferred = dict(preferred or {})
        files = SimpleNamespace(
            refusals=preferred.get("refusals"),
            alternates=preferred.get("alternates"),
            refusal_sampling="fixed",
            seed=seed,
        )

        def encode_one(index: int, answer: str):
            return encode_qa(question=forget_records[index]["question"], answer=answer, index=index, **encode)

        idk = list(preferred_items(forget_records, encode_one, files))
    pad = pad_token_id(tokenizer)
    builder = BatchBuilder(forget, retain, pad, device, idk)

    if options.estimator == "batch":
        sampler = StepSampler(len(forget), len(retain), min(options.batch_size, len(forget)), 1, 1, seed)
        batch = builder.build(sampler.micro_batches(0, 0)[0])
        return EffectSets([(batch, 1.0)], [batch.forget], [batch.retain], "batch")

    rng = np.random.default_rng(seed)
    pairs = rng.integers(0, len(retain), size=len(forget))
    order = np.arange(len(forget))
    objective_batches = [
        (builder.build(MicroBatch(chunk, pairs[chunk])), len(chunk) / len(forget))
        for chunk in _chunks(order, options.batch_size)
    ]
    # The retain probe: the tracker's rule (torch.randperm with the seed, first N, in split order).
    chosen = (
        torch.randperm(len(retain), generator=torch.Generator().manual_seed(seed))[: options.probe_size]
        .sort()
        .values.numpy()
    )
    probe = [
        {k: v.to(device) for k, v in collate([retain[i] for i in chunk.tolist()], pad).items()}
        for chunk in _chunks(chosen, options.batch_size)
    ]
    return EffectSets(objective_batches, [b.forget for b, _ in objective_batches], probe, "full")


# -- one measurement -------------------------------------------------------------------------------------------


def objective_loss(objective: Objective, sets: EffectSets, ref_model: nn.Module | None):
    """loss_fn(model) -> sum_b w_b L_u(b): the objective over the sets' batches as one scalar (one graph)."""
    return lambda model: sum(
        weight * objective(model, batch, ref_model).loss for batch, weight in sets.objective_batches
    )


def objective_gradient(
    model: nn.Module, layout, objective: Objective, sets: EffectSets, ref_model
) -> tuple[list, dict]:
    """G = sum_b w_b grad L_u(b), accumulated in p.grad one batch at a time; also the objective's weights."""
    model.zero_grad(set_to_none=True)
    weights: dict[str, dict] = {}
    with torch.enable_grad():
        for batch, weight in sets.objective_batches:
            out = objective(model, batch, ref_model)
            (out.loss * weight).backward()  # a non-finite loss gives non-finite effects, written as null
            if out.item_weights is not None or out.token_weights is not None:
                for kind, values in forget_item_weights(out, batch.forget).items():
                    weights.setdefault(kind, {}).update(values)
            del out
    return param_grads(layout), weights


def measure(
    model: nn.Module, objective: Objective, sets: EffectSets, ref_model, instances: bool = False, tokens: bool = False
) -> tuple[dict[str, SetEffect], dict]:
    """{"u": e on the forget data, "r": e on the retain data} for G = grad L_u (see EffectSets); and weights."""
    layout = discover_layout(model)
    G, weights = objective_gradient(model, layout, objective, sets, ref_model)
    try:
        if instances or tokens:
            effects = {
                side: ghost_effect(model, layout, batches, G, tokens=tokens)
                for side, batches in (("u", sets.forget), ("r", sets.retain))
            }
        else:
            effects = {
                side: gradient_effect(model, layout, batches, G)
                for side, batches in (("u", sets.forget), ("r", sets.retain))
            }
    finally:
        model.zero_grad(set_to_none=True)
    return effects, weights


# -- over checkpoints ------------------------------------------------------------------------------------------


def _next_lr(run_dir: Path | None, step: int | None) -> float | None:
    """The learning rate of the update that follows the checkpoint (step + 1), from the run's log."""
    if run_dir is None or step is None:
        return None
    for record in RunFolder(run_dir).read_log():
        if record.get("step") == step + 1:
            return record.get("lr")
    return None


@dataclass
class PosthocPlan:
    """Everything the checkpoints share, resolved once from the options and the first checkpoint's run."""

    checkpoints: list[Checkpoint]
    objective: Objective
    options: EffectOptions
    reference: str | None = None  # folder of pi_ref (objectives that need one)
    seed: int = 0
    template: object = None
    max_length: int = 512
    tokenizer_source: str = ""
    preferred: dict = field(default_factory=dict)  # the run's refusals / alternates files (build_sets)
    device: torch.device = field(default_factory=lambda: torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def plan_posthoc(
    checkpoints: list[Checkpoint], objective: Objective, options: EffectOptions, reference: str | None = None
) -> PosthocPlan:
    """Resolve template, seed, length and the reference model: --reference, else the run's starting model
    (the pi_ref its training used), else the first checkpoint."""
    from geffect.data.templates import get_template, template_for_model

    options.validate()
    first = checkpoints[0]
    document = run_document(first.run_dir)
    run_options, resolved = document.get("options", {}), document.get("resolved", {})
    source = tokenizer_source(first)
    template_name = options.template or resolved.get("template") or run_options.get("template")
    template = get_template(template_name) if template_name else template_for_model(source)
    if objective.needs_reference and reference is None:
        reference = str(run_options["model"]) if run_options.get("model") else None
    if reference is not None:
        from geffect.models.loading import check_model_source

        check_model_source(reference, need_tokenizer=False)
    return PosthocPlan(
        checkpoints=checkpoints,
        objective=objective,
        options=options,
        reference=reference,
        seed=options.seed if options.seed is not None else int(run_options.get("seed", 0)),
        template=template,
        max_length=options.max_length or int(run_options.get("max_length", 512)),
        tokenizer_source=source,
        preferred={key: run_options.get(key) for key in ("refusals", "alternates")},
    )


def load_reference(plan: PosthocPlan) -> nn.Module | None:
    if not plan.objective.needs_reference:
        return None
    if plan.reference is not None:
        from geffect.models.loading import load_model

        model = load_model(plan.reference, dtype=plan.options.dtype)
    else:
        model = load_checkpoint_model(plan.checkpoints[0], plan.options.dtype)
    return model.requires_grad_(False).to(plan.device).eval()


def posthoc_effects(plan: PosthocPlan, progress: bool = True) -> Iterator[dict]:
    """One geffect.jsonl-shaped record per checkpoint, in order (with `checkpoint`, `method`, `seconds`)."""
    from tqdm.auto import tqdm

    from geffect.models.loading import load_tokenizer

    options, objective = plan.options, plan.objective
    tokenizer = load_tokenizer(plan.tokenizer_source)
    sets = build_sets(
        tokenizer, plan.template, options, objective, plan.seed, plan.max_length, plan.device, plan.preferred
    )
    ref_model = load_reference(plan)
    bar = tqdm(plan.checkpoints, desc=f"G-effects {objective.name}", unit="ckpt", disable=not progress)
    for position, checkpoint in enumerate(bar, start=1):
        started = time.perf_counter()
        model = load_checkpoint_model(checkpoint, options.dtype).to(plan.device)
        objective.setup(model, torch.Generator().manual_seed(plan.seed))  # RMU's u: the run's, from its seed
        effects, weights = measure(model, objective, sets, ref_model, options.instances, options.tokens)
        step = checkpoint.step if checkpoint.step is not None else position
        record = effect_record(
            step,
            _next_lr(checkpoint.run_dir, checkpoint.step),
            sets.estimator,
            effects,
            options.tensors,
            weights=weights,
        )
        record.update(checkpoint=str(checkpoint.path), method=objective.name, seconds=time.perf_counter() - started)
        bar.set_postfix(e_u=f"{record['e_u']['total']:.3g}", e_r=f"{record['e_r']['total']:.3g}", refresh=False)
        del model
        yield json_safe(record)


# -- the first-order check -----------------------------------------------------------------------------------


def validate_model(
    model: nn.Module, objective: Objective, sets: EffectSets, ref_model: nn.Module | None, eta: float
) -> dict[str, FirstOrderResult]:
    """first_order_check of grad L_u (over the sets' objective batches) on the forget and the retain data."""
    return first_order_check(
        model, objective_loss(objective, sets, ref_model), {"forget": sets.forget, "retain": sets.retain}, eta
    )
