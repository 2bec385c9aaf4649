"""Checkpoints of an unlearning run: everything needed to continue it bit for bit.

Layout of `RUN/checkpoints/step-00000010/`:
- accelerate's `save_state` files: `model.safetensors` (sharded formats under FSDP/DeepSpeed), `optimizer.bin`,
  `scheduler.bin` (loaded back by accelerate with `torch.load(weights_only=True)`). `model.safetensors` holds
  the trainable weights only: frozen ones (a LoRA run's whole base model) never change, and resuming rebuilds
  them from the run's --model, so a LoRA checkpoint is the adapters and their optimizer state (megabytes, where
  the full model of a 135M run is 1.6 GB). `weights.json` lists the names left out;
- `rng_<rank>.json` + `rng_<rank>.safetensors`: python, numpy and torch (CPU and CUDA) generator states of each
  process, stored without pickle (accelerate's own pickle of them is ignored: it fails silently);
- `objective.safetensors` + `objective.json`: the objective's state (tensors / plain values);
- `trainer_state.json`: step counter, epoch, data position; written last, so its presence marks a complete
  checkpoint.

A checkpoint is written into a hidden temporary folder and renamed into place, so a run killed while saving
keeps its previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from geffect.errors import UsageError
from geffect.faults import fault_point
from geffect.io import atomic_write_json
from geffect.runfolder import RunFolder

TRAINER_STATE = "trainer_state.json"
WEIGHTS_RECORD = "weights.json"  # {"frozen_left_out": [names]}: what model.safetensors does not hold
# What reading a damaged checkpoint file raises (torch.load, safetensors, json, a missing key or file).
UNREADABLE = (OSError, ValueError, RuntimeError, KeyError, TypeError, EOFError, pickle.UnpicklingError, SafetensorError)
_NAME = re.compile(r"^step-(\d+)$")


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return RunFolder(run_dir).checkpoints_dir / f"step-{step:08d}"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as (step, folder), oldest first."""
    folder = RunFolder(run_dir).checkpoints_dir
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match and (path / TRAINER_STATE).exists():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1][1] if checkpoints else None


# --- RNG states, without pickle -------------------------------------------------------------------------


def _save_rng(folder: Path, rank: int) -> None:
    version, state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    plain = {
        "python": [version, list(state), gauss],
        "numpy": [np_name, np_pos, np_has_gauss, np_gauss],
        "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }
    tensors = {"torch_cpu": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_keys.astype(np.int64))}
    for device in range(plain["cuda_devices"]):
        tensors[f"torch_cuda_{device}"] = torch.cuda.get_rng_state(device)
    save_file(tensors, str(folder / f"rng_{rank}.safetensors"))
    atomic_write_json(folder / f"rng_{rank}.json", plain)


def _load_rng(folder: Path, rank: int) -> None:
    plain = json.loads((folder / f"rng_{rank}.json").read_text())
    tensors = load_file(str(folder / f"rng_{rank}.safetensors"))
    version, state, gauss = plain["python"]
    random.setstate((version, tuple(state), gauss))
    np_name, np_pos, np_has_gauss, np_gauss = plain["numpy"]
    np.random.set_state((np_name, tensors["numpy_keys"].numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        for device in range(min(plain["cuda_devices"], torch.cuda.device_count())):
            torch.cuda.set_rng_state(tensors[f"torch_cuda_{device}"], device)


# --- objective state --------------------------------------------------------------------------------------


def _save_objective(folder: Path, state: Mapping[str, Any]) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    plain = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
    save_file(tensors, str(folder / "objective.safetensors"))
    atomic_write_json(folder / "objective.json", plain)


def _load_objective(folder: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((folder / "objective.json").read_text())
    state.update(load_file(str(folder / "objective.safetensors")))
    return state


# --- whole checkpoints ---------------------------------------------------------------------------------------


class _DropSharedTensorNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in str(record.getMessage())  # accelerate prefixes "[RANK n] "


@contextlib.contextmanager
def _tied_weights_saved_once():
    """Safetensors cannot hold two names for one storage, so accelerate saves tied weights (a tied lm_head)
    once and warns on every checkpoint. That is the intended format: loading re-ties them (tested in
    tests/test_models_gguf.py), so the notice is dropped while accelerate saves."""
    logger = logging.getLogger("accelerate.utils.other")
    notice = _DropSharedTensorNotice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


def save_checkpoint(
    accelerator,
    run_dir: Path,
    step: int,
    trainer_state: Mapping[str, Any],
    objective_state: Mapping[str, Any],
    keep: int = 1,
) -> Path:
    """Write the checkpoint of optimizer step `step` (all processes must call this); keep the newest `keep`
    checkpoints (0 keeps all)."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.parent / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    with _tied_weights_saved_once(), _frozen_weights_left_out(accelerator, tmp):
        accelerator.save_state(str(tmp), safe_serialization=True)
    _save_rng(tmp, accelerator.process_index)
    if accelerator.is_main_process:
        _save_objective(tmp, objective_state)
    accelerator.wait_for_everyone()
    fault_point("checkpoint-write", step)  # tests only (geffect.faults): a kill before the rename
    if accelerator.is_main_process:
        atomic_write_json(tmp / TRAINER_STATE, dict(trainer_state))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        if keep > 0:
            for _, old in list_checkpoints(run_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _frozen_names(model: torch.nn.Module) -> set[str]:
    # every name of a tied weight (a tied lm_head is its embedding under a second name in the state dict)
    return {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}


@contextlib.contextmanager
def _frozen_weights_left_out(accelerator, folder: Path):
    """While accelerate saves, drop the frozen parameters from the state dicts it writes (plain and DDP runs;
    FSDP and DeepSpeed write their own sharded files, whole) and record their names in `folder`."""
    left_out: list[str] = []

    def hook(models, weights, output_dir) -> None:
        for model, state in zip(models, weights):
            frozen = _frozen_names(model) & set(state)
            for name in sorted(frozen):
                del state[name]
            left_out.extend(sorted(frozen))

    handle = accelerator.register_save_state_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()
    if accelerator.is_main_process:
        atomic_write_json(folder / WEIGHTS_RECORD, {"frozen_left_out": left_out})


def _check_left_out_are_frozen(accelerator, folder: Path, left_out: list[str]) -> None:
    """What a non-strict load would let pass: a left-out weight this run trains, or a trainable one missing."""
    from safetensors import safe_open

    for index, model in enumerate(accelerator._models):
        trainable = sorted(set(left_out) - _frozen_names(model))
        if trainable:
            raise KeyError(f"a weight left out of the checkpoint is trained in this run: {trainable[0]}")
        file = folder / f"model{'_' + str(index) if index else ''}.safetensors"
        if file.exists():
            with safe_open(str(file), framework="pt") as saved:
                missing = sorted(set(model.state_dict()) - set(left_out) - set(saved.keys()))
            if missing:
                raise KeyError(f"the checkpoint lacks weight {missing[0]}")


def left_out_weights(folder: Path) -> list[str]:
    """The frozen weights a checkpoint does not hold (the run's --model holds them; [] for a whole one)."""
    record = folder / WEIGHTS_RECORD
    return json.loads(record.read_text())["frozen_left_out"] if record.exists() else []


def load_checkpoint(accelerator, folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore model, optimizer, scheduler and RNG states in place; return (trainer state, objective state)."""
    folder = Path(folder)
    try:
        left_out = left_out_weights(folder)
        if left_out:
            _check_left_out_are_frozen(accelerator, folder, left_out)
        # Loading is relaxed (strict=False) only for a checkpoint that says which frozen weights it left out,
        # and only once the check above found every other weight in it; FSDP and DeepSpeed checkpoints are
        # whole, and their loaders take no `strict`.
        accelerator.load_state(str(folder), **({"strict": False} if left_out else {}))
        _load_rng(folder, accelerator.process_index)
        trainer_state = json.loads((folder / TRAINER_STATE).read_text())
        int(trainer_state["step"])
        return trainer_state, _load_objective(folder)
    except UNREADABLE as err:
        raise UsageError(
            f"checkpoint {folder} is corrupt ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            "delete that folder to resume from an earlier checkpoint, or pass --overwrite to start again"
        ) from None
