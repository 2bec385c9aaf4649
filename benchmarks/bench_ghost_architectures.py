"""Exactness of the per-item and per-token G-effects per architecture, float64, against per-item autograd.

    .venv/bin/python benchmarks/bench_ghost_architectures.py [arch ...]

Prints, per tiny random model (the configs of tests/test_effects_architectures.py) and padding side, the
largest relative error (to the largest item) of the items, the per-tensor values and the tokens, and the
error of the plain path's total. Direction: the GA gradient of a forget batch. Then, through the tracker
(one GradDiff step, float64), e_u and e_r logged with and without --geffect-instances, and the sum of the
logged items.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from geffect.effects.blocks import discover_layout  # noqa: E402
from geffect.effects.config import TrackerConfig  # noqa: E402
from geffect.effects.engine import ghost_effect, gradient_effect  # noqa: E402
from test_effects_architectures import EAGER, arch_model, objective_direction  # noqa: E402
from test_effects_exactness import one_run  # noqa: E402
from test_effects_ghost import reference_items_and_tokens  # noqa: E402
from test_effects_models import tiny_batch  # noqa: E402

ARCHS = ("gemma", "gemma2", "gemma3", "opt", "bloom", "falcon", "qwen2", "mistral", "mixtral", "qwen2moe", "jamba")


def measure(arch: str, padding: str) -> str:
    started = time.perf_counter()
    model = arch_model(arch)
    layout = discover_layout(model)
    G = objective_direction(model, layout, "GA", padding)
    batch = tiny_batch(2, 8, seed=1, padding=padding)
    ref_items, ref_tokens = reference_items_and_tokens(model, layout, batch, G)
    plain = gradient_effect(model, layout, [batch], G)
    effect = ghost_effect(model, layout, [batch], G, tokens=True)
    scale = float(ref_items.abs().max())
    items = torch.tensor([effect.items[i] for i in range(2)], dtype=torch.float64)
    token_error = 0.0
    for row in range(2):
        valid = (batch["labels"][row] != -100).clone()
        valid[0] = False
        got = torch.tensor(effect.tokens[row], dtype=torch.float64)
        token_error = max(token_error, float((got - ref_tokens[row][valid]).abs().max()))
    return (
        f"{arch:9s} {padding:5s} items {float((items - ref_items).abs().max()) / scale:.1e}  "
        f"tensors {float((effect.per_tensor - plain.per_tensor).abs().max()) / scale:.1e}  "
        f"tokens {token_error / scale:.1e}  plain total {abs(plain.total - float(ref_items.sum())) / scale:.1e}  "
        f"({time.perf_counter() - started:.1f} s)"
    )


def tracker_line(arch: str) -> str:
    values = {}
    for instances in (False, True):
        with tempfile.TemporaryDirectory() as folder:
            records, _, _ = one_run(
                Path(folder), arch_model(arch).train(), "GradDiff", TrackerConfig(instances=instances)
            )
        values[instances] = records[0]
    plain, ghost = values[False], values[True]
    return (
        f"{arch:9s} GradDiff e_u {plain['e_u']['total']:.10f} (instances {ghost['e_u']['total']:.10f}, items sum "
        f"{sum(ghost['items_u'].values()):.10f})  e_r {plain['e_r']['total']:.10f} (instances "
        f"{ghost['e_r']['total']:.10f})"
    )


def main(archs: list[str]) -> None:
    for arch in archs or ARCHS:
        for padding in ("right",) if arch in EAGER else ("right", "left"):
            print(measure(arch, padding), flush=True)
    for arch in archs or ARCHS:
        print(tracker_line(arch), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
