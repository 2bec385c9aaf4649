"""In-run G-effect tracking: a StepCallback that appends one JSON line per measured step to RUN/geffect.jsonl.

After the step's backward, `p.grad` holds G = grad L_u (the full loss). For each side (u: the forget batch,
r: the retain batch, or a fixed retain probe when the step has none) the tracker computes e = grad R . G:

- it reuses the step's graph when the objective left the risk attached (`LossOutput.forget_risk`,
  `retain_risk`), and runs a new forward only when a risk is missing (GA: no retain batch);
- risk gradients come from `torch.autograd.grad`, so `p.grad` is untouched, one at a time, dotted and freed
  (extra peak memory: one gradient); with `instances` the ghost backward gives per-tensor and per-item
  numbers without materialising any gradient;
- when the loss is structurally linear in the risks (the graph shows forget_loss = -forget_risk and
  retain_loss = retain_risk, and loss = gamma * forget_loss + alpha * retain_loss, as for GA and GradDiff),
  and G is exactly this micro-batch's gradient (one micro-batch per step, one process), a risk gradient
  follows from G and the other risk gradient by algebra: GA's e_u = -G.G / gamma costs nothing.
  This is read from the autograd graph, not from method names. With `instances`, the same structure means
  the step's own backward already delivered c times each risk's output gradients to the hooked modules of
  that risk's forward; the recorder keeps them and turns them into per-item terms (`GhostRecorder.replay`),
  so no second backward runs over the step's graph.

Estimators: `batch` (the step's last micro-batch), `ema` (the paper's smoothed gradients; three fp32 device
copies), `full` (the whole forget set and a fixed retain probe of `probe_size` items, new forwards).
Format: docs/geffect-format.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from geffect.effects.blocks import ParameterLayout, discover_layout
from geffect.effects.dots import Breakdown, all_reduce_max, detect_reduce_mode, param_grads, reduce_partials, streamed_dots, tensor_dots
from geffect.effects.budget import ActivationBudget
from geffect.effects.engine import SetEffect, split_tokens, ghost_effect, gradient_effect, item_effects, total_tokens
from geffect.effects.estimators import ESTIMATORS, GradientEma
from geffect.effects.ghost import GhostRecorder
from geffect.effects.tokens import count_tokens, risk_terms, token_effects
from geffect.errors import UsageError
from geffect.io import append_jsonl, atomic_write_json, read_jsonl, atomic_write_text

Batch = dict
FILENAME = "geffect.jsonl"
LAYOUT_FILENAME = "geffect_layout.json"


@dataclass(frozen=True)
class TrackerConfig:
    every: int = 1  # measure every K-th optimizer step
    estimator: str = "batch"  # batch | ema | full
    instances: bool = False  # per-item contributions (ghost dot products)
    scatter: bool = False  # the paper's instance scatter: the objective split per forget item (implies instances)
    tokens: bool = False  # per-token contributions (one extra forward-mode pass per side)
    tensors: bool = False  # per-tensor breakdown in every line
    probe_size: int = 32  # retain probe items (full estimator; batch estimator when the step has no retain batch)
    probe_batch_size: int = 8
    # The activations the tracker's own forwards keep for their backward (GA's retain probe, the `full`
    # estimator's sets) stay under this many gradient copies: such batches run in micro-batches. 0: no limit.
    # With the one streamed tensor gradient beside them, the tracker's extra memory stays near one copy.
    activation_budget: float = 0.75
    filename: str = FILENAME

    def validate(self) -> None:
        if self.every < 1:
            raise UsageError(f"--geffect-every must be >= 1, got {self.every}")
        if self.estimator not in ESTIMATORS:
            raise UsageError(f"unknown --geffect-estimator {self.estimator!r}; choose one of {', '.join(ESTIMATORS)}")
        if self.scatter and not self.instances:
            raise UsageError("the instance scatter needs per-item contributions: set instances too")
        if self.probe_size < 1 or self.probe_batch_size < 1:
            raise UsageError("--geffect-probe-size must be >= 1")
        if not self.activation_budget >= 0:
            raise UsageError(f"--geffect-activation-budget must be >= 0 (gradient copies; 0 = no limit), got {self.activation_budget}")


# -- structural linearity ------------------------------------------------------------------------------------

def risk_coefficient(loss: torch.Tensor | None, risk: torch.Tensor | None) -> float | None:
    """c when the autograd graph shows loss == c * risk (loss is risk: 1; loss = -risk: -1); else None."""
    if loss is None or risk is None or risk.grad_fn is None:
        return None
    if loss is risk:
        return 1.0
    fn = loss.grad_fn
    if fn is not None and type(fn).__name__ == "NegBackward0" and fn.next_functions[0][0] is risk.grad_fn:
        return -1.0
    return None


def linear_coefficients(out, gamma: float | None, alpha: float | None) -> tuple[float, float] | None:
    """(a_f, a_r) with loss = a_f * R_f + a_r * R_r exactly (a_r = 0 without a retain term), else None."""
    if gamma is None or out.forget_risk is None:
        return None
    c_f = risk_coefficient(out.forget_loss, out.forget_risk)
    if c_f is None or gamma == 0:
        return None
    a_f, a_r = gamma * c_f, 0.0
    value = gamma * float(out.forget_loss.detach())
    if out.retain_loss is not None:
        c_r = risk_coefficient(out.retain_loss, out.retain_risk)
        if c_r is None or alpha is None:
            return None
        a_r = alpha * c_r
        value += alpha * float(out.retain_loss.detach())
    if not math.isclose(float(out.loss.detach()), value, rel_tol=1e-5, abs_tol=1e-7):
        return None
    return a_f, a_r


# -- helpers -------------------------------------------------------------------------------------------------

def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def json_safe(obj: Any) -> Any:
    """`obj` with every non-finite float replaced by None (JSON has no NaN or infinity)."""
    if isinstance(obj, float):
        return _finite(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj


def _checkpointing(model) -> bool:
    """Whether activation (gradient) checkpointing is on; transformers renamed the attribute."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        try:
            return bool(getattr(model, name))
        except AttributeError:
            continue
    return False


def _attached(t: torch.Tensor | None) -> bool:
    return t is not None and t.requires_grad and t.grad_fn is not None


def forget_item_weights(out, batch: Batch) -> dict:
    """The objective's weights per forget item: item weight and/or mean token weight over answer tokens."""
    ids = [int(i) for i in batch["index"]]
    result: dict[str, dict] = {}
    if out.item_weights is not None:
        result["item"] = {str(i): float(w) for i, w in zip(ids, out.item_weights.detach().float().reshape(-1).tolist())}
    if out.token_weights is not None:
        weights = out.token_weights.detach().float()
        labels = batch["labels"]
        # token weights may be aligned with the labels [B, T] or with the shifted labels [B, T-1]
        mask = (labels[:, 1:] if weights.shape[1] == labels.shape[1] - 1 else labels) != -100
        if weights.shape[1] == labels.shape[1]:
            mask = mask.clone()
            mask[:, 0] = False
        mask = mask.to(weights.device)
        sums = (weights * mask).sum(1)
        counts = mask.sum(1).clamp(min=1)
        result["token_mean"] = {str(i): float(v) for i, v in zip(ids, (sums / counts).tolist())}
    return result


class GEffectTracker:
    """StepCallback measuring the unlearning and retaining G-effects in-run (see module docstring)."""

    retain_graph = True

    def __init__(self, config: TrackerConfig = TrackerConfig(), forget_batches: Sequence[Batch] | None = None, probe_batches: Sequence[Batch] | None = None):
        config.validate()
        self.config = config
        self.forget_batches = list(forget_batches) if forget_batches is not None else None
        self.probe_batches = list(probe_batches) if probe_batches is not None else None
        self.layout: ParameterLayout | None = None
        self.recorder: GhostRecorder | None = None
        self.budget: ActivationBudget | None = None
        self.path: Path | None = None
        self._probe_cursor = 0
        self._predicted = {"u": 0.0, "r": 0.0}
        self._ema: dict[str, GradientEma] = {}
        self._handles: list = []
        self._main = True
        self._reduce = "none"
        self._streamable = False
        self._linear_ok = True
        self._gamma: float | None = None
        self._busy = False  # inside after_backward: the tracker's own forwards must not drop the step's captures
        self._alpha: float | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------
    def on_train_begin(self, run) -> None:
        model = run.model
        self.layout = discover_layout(model)
        self._reduce = detect_reduce_mode(model)
        gradient_bytes = sum(p.numel() * p.element_size() for p in self.layout.params)
        agree = None if self._reduce == "none" else functools.partial(all_reduce_max, device=self._device())
        self.budget = ActivationBudget(self.config.activation_budget * gradient_bytes, self.layout.params, agree)
        # Per-tensor dots streamed out of the backward need a plain model: one process, parameters not sharded.
        self._streamable = self._reduce == "none" and getattr(run.accelerator, "num_processes", 1) == 1
        accelerator = run.accelerator
        self._main = getattr(accelerator, "is_main_process", True)
        options = (run.config or {}).get("options", {})
        world = getattr(accelerator, "num_processes", 1)
        self._linear_ok = int(options.get("grad_accum", 1)) == 1 and world == 1
        objective_config = getattr(getattr(run, "objective", None), "config", None)
        self._gamma = getattr(objective_config, "gamma", None)
        self._alpha = getattr(objective_config, "alpha", None)
        self.path = Path(run.run_dir) / self.config.filename
        if self._main:
            self._keep_until(run.start_step)
            atomic_write_json(Path(run.run_dir) / LAYOUT_FILENAME, self._layout_json())
        if self.probe_batches is None or (self.config.estimator == "full" and self.forget_batches is None):
            self._build_default_sets(run)
        if self.config.instances and _checkpointing(model):
            # recomputed forwards inside the backward would be captured twice
            raise UsageError("--geffect-instances does not work with gradient checkpointing; turn one of them off")
        if self.config.instances and self.config.estimator == "batch":
            self.recorder = GhostRecorder(model, self.layout)
            # When the loss is linear in the risks, the step's own backward already brings each forward the
            # output gradients a ghost backward would compute (times the coefficient): keep them (memory of
            # the order of the activations, on measured steps only).
            self.recorder.keep_deltas = self._linear_ok
            # A new forward means the previous micro-batch is finished: drop its captures (memory).
            self._handles.append(model.register_forward_pre_hook(self._before_forward))
            self._arm(run.start_step + 1)
        if self.config.estimator == "ema":
            self._ema = {"G": GradientEma(), "u": GradientEma(), "r": GradientEma()}

    def on_train_end(self, run) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self.recorder is not None:
            self.recorder.remove()
            self.recorder = None

    def _before_forward(self, *_) -> None:
        if self.recorder is not None and not self._busy and torch.is_grad_enabled():
            self.recorder.drop_stale()

    def _arm(self, step: int) -> None:
        if self.recorder is not None:
            if step % self.config.every == 0:
                self.recorder.start()
            else:
                self.recorder.stop()

    def _keep_until(self, step: int) -> None:
        """On resume keep the lines of steps already taken; on a fresh run start an empty file."""
        if self.path.exists():
            if step == 0:
                self.path.unlink()
            else:
                kept = [r for r in read_jsonl(self.path) if int(r.get("step", 0)) <= step]
                atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
                for r in kept:
                    if "predicted_change" in r:
                        self._predicted = {"u": r["predicted_change"]["e_u"], "r": r["predicted_change"]["e_r"]}

    def _layout_json(self) -> dict:
        layout = self.layout
        return {
            **layout.describe(),
            "tensors": [{"name": t.name, "shape": list(t.shape), "layer": t.layer, "group": t.group} for t in layout.tensors],
            "tracker": dataclasses.asdict(self.config),
        }

    def _build_default_sets(self, run) -> None:
        """Retain probe (and the forget set for `full`) from the run's data, encoded like the training items."""
        from geffect.data.collate import collate, pad_token_id
        from geffect.data.templates import get_template
        from geffect.data.tofu import RETAIN_FOR_FORGET, load_split
        from geffect.training.batches import encode_records

        options = (run.config or {}).get("options", {})
        resolved = (run.config or {}).get("resolved", {})
        if "data" not in options:
            raise UsageError("G-effect tracking needs a retain probe: pass probe_batches or run through `geffect unlearn`")
        template = get_template(resolved.get("template") or options.get("template"))
        encode = dict(tokenizer=run.tokenizer, template=template, max_length=int(options.get("max_length", 512)))
        pad = pad_token_id(run.tokenizer)
        size = self.config.probe_batch_size
        device = next(run.model.parameters()).device

        def batches(items):
            return [
                {k: v.to(device) for k, v in collate(items[i : i + size], pad).items()} for i in range(0, len(items), size)
            ]

        if self.probe_batches is None:
            records = load_split(options["data"], RETAIN_FOR_FORGET[options.get("forget", "forget10")])
            generator = torch.Generator().manual_seed(int(options.get("seed", 0)))
            chosen = torch.randperm(len(records), generator=generator)[: self.config.probe_size].sort().values.tolist()
            items = encode_records(records=records, **encode)
            self.probe_batches = batches([items[i] for i in chosen])
        if self.config.estimator == "full" and self.forget_batches is None:
            records = load_split(options["data"], options.get("forget", "forget10"))
            self.forget_batches = batches(encode_records(records=records, **encode))

    # -- the measurement ---------------------------------------------------------------------------------------
    def after_backward(self, run, step) -> None:
        if step.step % self.config.every != 0:
            self._arm(step.step + 1)
            return
        started = time.perf_counter()
        G = param_grads(self.layout)
        self._busy = True
        try:
            if self.config.estimator == "full":
                effects = {"u": self._measure_set(run, self.forget_batches, G), "r": self._measure_set(run, self.probe_batches, G)}
                extra = {}
            else:
                effects, extra = self._measure_step(run, step, G)
        finally:
            self._busy = False
            if self.recorder is not None:
                self.recorder.clear()
        self._arm(step.step + 1)
        record = self._record(step, effects, extra, time.perf_counter() - started)
        if self._main:
            append_jsonl(self.path, json_safe(record))

    def _measure_set(self, run, batches: Sequence[Batch], G) -> SetEffect:
        """e on a set that needs forwards of its own, in micro-batches within the activation budget."""
        model, n = run.model, total_tokens(batches)
        with self.budget.counting():
            if self.config.instances:
                return ghost_effect(model, self.layout, self.budget.split(batches), G, n_total=n, tokens=self.config.tokens, recorder=self.recorder)
            return gradient_effect(model, self.layout, self.budget.split(batches), G, n_total=n, stream=self._streamable)

    def _side_inputs(self, step) -> dict[str, tuple[Batch, torch.Tensor | None]]:
        out = step.loss_output
        forget = step.batch.forget
        retain = step.batch.retain
        sides = {"u": (forget, out.forget_risk if _attached(out.forget_risk) else None)}
        if retain is not None and _attached(out.retain_risk):
            sides["r"] = (retain, out.retain_risk)
        elif retain is not None:
            sides["r"] = (retain, None)
        else:
            probe = self.probe_batches[self._probe_cursor % len(self.probe_batches)]
            self._probe_cursor += 1
            sides["r"] = (probe, None)
        return sides

    def _measure_step(self, run, step, G) -> tuple[dict[str, SetEffect], dict]:
        out = step.loss_output
        sides = self._side_inputs(step)
        linear = None
        if self._linear_ok and self.config.estimator == "batch":
            linear = linear_coefficients(out, self._gamma, self._alpha)
        effects: dict[str, SetEffect] = {}
        ema_grads: dict[str, list] = {}
        extra: dict = {}
        if self.config.instances and self.config.estimator == "batch":
            effects, objective_items = self._measure_instances(run, sides, G, linear)
            if objective_items is not None:
                extra["objective_items"] = objective_items
        elif linear is not None:
            a_f, a_r = linear
            gg = tensor_dots(G, G)
            if a_r == 0.0:
                effects["u"] = self._from_dots(gg / a_f, sides["u"][0], out.forget_risk)
                effects["r"] = self._side_effect(run, *sides["r"], G)
            else:
                effects["r"] = self._side_effect(run, *sides["r"], G)
                dots_r = effects["r"].per_tensor.to(gg.device)
                effects["u"] = self._from_dots((gg - a_r * dots_r) / a_f, sides["u"][0], out.forget_risk)
        else:
            for side, (batch, risk) in sides.items():
                keep = ema_grads.setdefault(side, []) if self.config.estimator == "ema" else None
                effects[side] = self._side_effect(run, batch, risk, G, keep)
        if self.config.estimator == "ema":
            self._ema["G"].update(G)
            extra["ema"] = {}
            for side in ("u", "r"):
                self._ema[side].update(ema_grads[side])
                extra["ema"][f"e_{side}"] = Breakdown(self._ema[side].dots(self._ema["G"]).cpu(), self.layout)
            ema_grads.clear()
        if out.item_weights is not None or out.token_weights is not None:
            extra["weights"] = forget_item_weights(out, step.batch.forget)
        return effects, extra

    def _from_dots(self, dots: torch.Tensor, batch: Batch, risk: torch.Tensor | None) -> SetEffect:
        return SetEffect(dots.cpu(), self.layout, float(risk.detach()) if risk is not None else float("nan"), count_tokens(batch["labels"]))

    def _side_effect(self, run, batch: Batch, risk: torch.Tensor | None, G, keep: list | None = None, want_gradient: bool = False) -> SetEffect:
        """e on one batch: reuse `risk`'s graph when given, else a new forward; ghost when instances are on
        (`want_gradient`: keep grad R as `SetEffect.gradient`, from the same backward)."""
        model, layout = run.model, self.layout
        n = count_tokens(batch["labels"])
        if self.config.instances and keep is None:
            if risk is None or self.recorder is None or not self.recorder.has_captures:
                # A forward of its own (recorded beside the step's, whose captures it keeps).
                with self.budget.counting():
                    return ghost_effect(
                        model, layout, self.budget.micro_batches(batch), G, n_total=n, tokens=self.config.tokens,
                        recorder=self.recorder, keep_gradient=want_gradient,
                    )
            result = self.recorder.backward(
                risk.float() if risk.dtype != torch.float64 else risk, G, batch_size=batch["labels"].shape[0],
                retain_graph=True, with_grads=want_gradient,
            )
            effect = self._ghost_side(run, batch, risk, G, result)
            effect.gradient = result.grads
            return effect
        if risk is None and keep is None:
            effect = self._measure_set(run, [batch], G)
        else:
            with torch.enable_grad():
                if risk is None:
                    risk, _, _ = risk_terms(model, batch)
                if keep is None and self._streamable:
                    dots = streamed_dots(risk, layout.params, G)  # never more than one tensor's gradient
                else:
                    grads = torch.autograd.grad(risk, layout.params, allow_unused=True, retain_graph=True)
                    dots = tensor_dots(grads, G)
                    if keep is not None:
                        keep.extend(grads)
                    del grads
            effect = SetEffect(dots.cpu(), layout, float(risk.detach()), n)
        if self.config.tokens:
            ids = [int(i) for i in batch["index"]]
            tokens = token_effects(model, layout, batch, G, n)
            effect.tokens = split_tokens(tokens, batch["labels"], ids)
            effect.items = {i: sum(v) for i, v in effect.tokens.items()}
        return effect

    def _measure_instances(self, run, sides: dict, G, linear: tuple[float, float] | None) -> tuple[dict[str, SetEffect], dict | None]:
        """Both sides with per-item contributions and, where the step's backward left the forget forward's
        output gradients, the objective-side split per forget item (the paper's instance scatter):
        e_{u,i} = grad R_u . G_i and e_{r,i} = grad R_r . G_i, G_i the part of G that reaches the model through
        forget item i. The split needs grad R_u and grad R_r as directions, so those sides then run a ghost
        backward that also returns the risk gradient, instead of a replay."""
        forget_batch, retain_batch = sides["u"][0], sides["r"][0]
        forward = self._forget_forward(forget_batch, retain_batch) if self.config.scatter else None
        split = forward is not None
        a_f, a_r = linear if linear is not None else (None, None)
        effects: dict[str, SetEffect] = {}
        for side, coefficient in (("r", a_r), ("u", a_f)):  # r first: its gradient may be needed for u's algebra
            batch, risk = sides[side]
            replayed = None
            if linear is not None and risk is not None and not (split and side == "r"):
                replayed = self._replayed_effect(run, batch, risk, coefficient, G)
            effects[side] = replayed if replayed is not None else self._side_effect(run, batch, risk, G, want_gradient=split)
        if not split:
            return effects, None
        directions = {"r": [(effects["r"].gradient, 1.0)]}
        if effects["u"].gradient is not None:
            directions["u"] = [(effects["u"].gradient, 1.0)]
        else:  # replayed under loss = a_f R_u + a_r R_r: grad R_u = (G - a_r grad R_r) / a_f
            directions["u"] = [(G, 1.0 / a_f)] + ([(effects["r"].gradient, -a_r / a_f)] if a_r else [])
        objective_items = self._objective_items(forward, forget_batch, directions)
        for effect in effects.values():
            effect.gradient = None
        return effects, objective_items

    def _forget_forward(self, forget_batch: Batch, retain_batch: Batch) -> int | None:
        """The recorded forward of the forget batch when the step's graph holds just it (and the retain
        batch's): only then are its kept output gradients the whole of each forget item's part of G (a
        refusal forward, as in IdkPO/DPO, or identical batches make the split ambiguous)."""
        if self.recorder is None or not self.recorder.keep_deltas:
            return None
        forget = self.recorder.forwards_of(forget_batch["input_ids"])
        retain = self.recorder.forwards_of(retain_batch["input_ids"])
        if len(forget) != 1 or forget[0] in retain:
            return None
        if any(k != forget[0] and k not in retain for k in self.recorder.forward_ids):
            return None
        return forget[0]

    def _objective_items(self, forward: int, batch: Batch, directions: dict) -> dict | None:
        """{item id: {"e_u": grad R_u . G_i, "e_r": grad R_r . G_i}} from replays of the kept output gradients."""
        size = batch["labels"].shape[0]
        values = {}
        for side, terms in directions.items():
            total = None
            for vector, scale in terms:
                if vector is None:
                    return None
                result = self.recorder.replay(forward, vector, size, scale)
                if result is None or result.unitemised_tensors:
                    return None
                total = result.items if total is None else total + result.items
            values[side] = total.tolist()
        ids = [int(i) for i in batch["index"]]
        return {str(i): {"e_u": u, "e_r": r} for i, u, r in zip(ids, values["u"], values["r"])}

    def _replayed_effect(self, run, batch: Batch, risk: torch.Tensor, coefficient: float, G) -> SetEffect | None:
        """Instances from the output gradients the step's backward left (loss = coefficient * risk + ...);
        None when they cannot stand in for a ghost backward (the caller runs one)."""
        if self.recorder is None or coefficient == 0.0:
            return None
        forwards = self.recorder.forwards_of(batch["input_ids"])
        if len(forwards) != 1:  # not recorded, or two forwards of identical inputs: ambiguous
            return None
        result = self.recorder.replay(forwards[0], G, batch["labels"].shape[0], scale=1.0 / coefficient)
        return None if result is None else self._ghost_side(run, batch, risk, G, result)

    def _ghost_side(self, run, batch: Batch, risk: torch.Tensor, G, result) -> SetEffect:
        """A side's SetEffect from a ghost pass over its batch: per tensor, per item (and per token)."""
        n = count_tokens(batch["labels"])
        items, counts, tokens = item_effects(run.model, self.layout, batch, G, n, result, self.config.tokens)
        return SetEffect(result.per_tensor.cpu(), self.layout, float(risk.detach()), n, items, tokens, counts)

    # -- the JSON line --------------------------------------------------------------------------------------------
    def _reduced(self, effect: SetEffect) -> SetEffect:
        if self._reduce == "none":
            return effect
        mode = self._reduce
        vector = reduce_partials(effect.per_tensor.to(self._device()), mode, weight=float(effect.n_tokens)).cpu()
        items, tokens, n_total = effect.items, effect.tokens, effect.n_tokens
        if mode == "data_parallel":
            # Each rank measured its own items against its own token count: rescale to the union's count.
            gathered: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, (effect.n_tokens, effect.risk, items, tokens))
            n_total = sum(g[0] for g in gathered)
            risk = sum(g[0] * g[1] for g in gathered) / max(n_total, 1)
            items = None if items is None else {k: v * g[0] / n_total for g in gathered for k, v in g[2].items()}
            tokens = None if tokens is None else {k: [x * g[0] / n_total for x in v] for g in gathered for k, v in g[3].items()}
            return SetEffect(vector, effect.layout, risk, n_total, items, tokens, effect.item_tokens)
        return SetEffect(vector, effect.layout, effect.risk, n_total, items, tokens, effect.item_tokens)

    def _device(self) -> torch.device:
        return self.layout.params[0].device

    def _record(self, step, effects: dict[str, SetEffect], extra: dict, seconds: float) -> dict:
        tensors = self.config.tensors
        record: dict[str, Any] = {"step": step.step, "lr": step.lr, "estimator": self.config.estimator}
        for side in ("u", "r"):
            effect = self._reduced(effects[side])
            record[f"e_{side}"] = effect.breakdown.to_json(tensors=tensors)
            record[f"risk_{side}"] = effect.risk
            record[f"n_tokens_{side}"] = effect.n_tokens
            if effect.items is not None:
                record[f"items_{side}"] = {str(k): v for k, v in effect.items.items()}
            if effect.tokens is not None:
                record[f"tokens_{side}"] = {str(k): v for k, v in effect.tokens.items()}
            total = effect.total
            if math.isfinite(total):
                self._predicted[side] += -step.lr * total * self.config.every
        record["predicted_change"] = {"e_u": self._predicted["u"], "e_r": self._predicted["r"]}
        if "ema" in extra:
            record["ema"] = {k: self._reduced_breakdown(v).to_json(tensors=tensors) for k, v in extra["ema"].items()}
        if "weights" in extra:
            record["weights"] = extra["weights"]
        if "objective_items" in extra:
            record["objective_items"] = extra["objective_items"]
        record["seconds"] = seconds
        return record

    def _reduced_breakdown(self, breakdown: Breakdown) -> Breakdown:
        if self._reduce == "sharded":
            return Breakdown(reduce_partials(breakdown.per_tensor.to(self._device()), "sharded").cpu(), breakdown.layout)
        return breakdown  # EMA of replicated-G dots: each rank's value is its own smoothed estimate


# -- CLI wiring ------------------------------------------------------------------------------------------------

def add_tracking_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("G-effect tracking (docs/geffect-format.md)")
    group.add_argument("--track-geffect", action="store_true", help="append one line per measured step to RUN/geffect.jsonl")
    group.add_argument("--geffect-every", type=int, default=1, metavar="K", help="measure every K-th optimizer step (default 1)")
    group.add_argument("--geffect-estimator", choices=ESTIMATORS, default="batch", help="batch (step's mini-batch), ema (paper's smoothed gradients), full (whole forget set and retain probe)")
    group.add_argument("--geffect-instances", action="store_true", help="per-item contributions (ghost dot products)")
    group.add_argument("--geffect-scatter", action="store_true",
                       help="the paper's instance scatter: each forget item's part of the objective gradient against both "
                            "risks (implies --geffect-instances; two more passes over the forget batch)")
    group.add_argument("--geffect-tokens", action="store_true", help="per-token contributions (one forward-mode pass per side)")
    group.add_argument("--geffect-tensors", action="store_true", help="per-tensor breakdown in every line")
    group.add_argument("--geffect-probe-size", type=int, default=32, metavar="N", help="retain probe items (default 32)")
    group.add_argument("--geffect-activation-budget", type=float, default=TrackerConfig.activation_budget, metavar="X",
                       help="activations the tracker's own forwards (GA's retain probe, the full estimator) may keep, in "
                            "gradient copies: larger batches run in micro-batches (default 0.75; 0 = no limit)")


def tracker_from_args(args: argparse.Namespace, forget_batches: Sequence[Batch] | None = None, probe_batches: Sequence[Batch] | None = None) -> GEffectTracker | None:
    """The tracker the options ask for, or None without --track-geffect."""
    if not getattr(args, "track_geffect", False):
        return None
    config = TrackerConfig(
        every=args.geffect_every,
        estimator=args.geffect_estimator,
        instances=args.geffect_instances or args.geffect_tokens or args.geffect_scatter,
        scatter=args.geffect_scatter,
        tokens=args.geffect_tokens,
        tensors=args.geffect_tensors,
        probe_size=args.geffect_probe_size,
        activation_budget=args.geffect_activation_budget,
    )
    return GEffectTracker(config, forget_batches=forget_batches, probe_batches=probe_batches)
