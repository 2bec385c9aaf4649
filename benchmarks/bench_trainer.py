"""Optimizer steps per second of `geffect.training.unlearn` against a bare PyTorch loop, for every method.

The bare loop does the same forward and backward passes (same model, objective, batches, AdamW, schedule)
and nothing else; the ratio trainer / bare is the loop's overhead (acceptance: >= 0.85 for every method).
The trainer's extra work per step: collation, the logged numbers (one all-reduce and one host sync), the
gradient norm, a log line and the progress bar.

Objectives that do not run the forget answers through the model (IdkPO) make the trainer run one no-grad
forward of the forget batch per micro-batch, because the logged forget risk is required; that pass is
counted as one of "the same forward passes", so the bare loop runs it too. `--strict` leaves it out of the
bare loop (then the ratio also prices that forward).

    python benchmarks/bench_trainer.py                      # tiny preset model, built-in benchmark
    python benchmarks/bench_trainer.py --methods NPO WGA --steps 30
    python benchmarks/bench_trainer.py --rules              # each update rule's step time against plain

`--rules` times the trainer's steps with each update rule (geffect.updates) against `plain` with the same
objective (NPO+NLL for the smoothing rules, GA for orthograd, NPO+KL for ge-project), batch 4, one
micro-batch (target: orthograd <= 3x plain), and the two ways of per-item gradients orthograd can take.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from geffect.data.collate import pad_token_id
from geffect.data.synth import write_benchmark
from geffect.data.templates import get_template
from geffect.data.tofu import load_split
from geffect.models.loading import load_model, load_tokenizer
from geffect.models.tiny import build_tiny
from geffect.objectives import ObjectiveConfig, build_objective, method_names
from geffect.objectives.tokens import score
from geffect.training.batches import BatchBuilder, StepSampler, encode_records
from geffect.training.config import UnlearnConfig
from geffect.training.schedule import build_scheduler
from geffect.training.unlearn import _refusal_items, unlearn


class StepClock:
    """Times the steps after the first `skip` (warm-up) from inside the trainer, via the callback hook."""

    retain_graph = False

    def __init__(self, skip: int):
        self.skip, self.stamps = skip, {}

    def on_train_begin(self, run):
        pass

    def after_backward(self, run, step):
        self.stamps[step.step] = time.perf_counter()

    def on_train_end(self, run):
        pass

    def durations(self) -> list[float]:
        return _durations(self.stamps, self.skip)


def _durations(stamps: dict[int, float], skip: int) -> list[float]:
    """Seconds of each whole step after the warm-up: from one step's clock reading to the next."""
    steps = sorted(stamps)[skip:]
    return [stamps[b] - stamps[a] for a, b in zip(steps, steps[1:])]


def bare_loop(cfg: UnlearnConfig, steps: int, skip: int, risk_forward: bool = True) -> list[float]:
    """The same passes as the trainer, in plain PyTorch; returns the durations of the timed steps."""
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model)
    model = load_model(cfg.model).train()
    objective = build_objective(ObjectiveConfig(method=cfg.method))
    ref_model = load_model(cfg.model).requires_grad_(False) if objective.needs_reference else None
    objective.setup(model, torch.Generator().manual_seed(cfg.seed))
    template = get_template(cfg.template)
    forget = load_split(cfg.data, cfg.forget)
    encode = dict(tokenizer=tokenizer, template=template, max_length=cfg.max_length)
    builder = BatchBuilder(
        encode_records(records=forget, **encode),
        encode_records(records=load_split(cfg.data, "retain90"), **encode),
        pad_token_id(tokenizer),
        torch.device("cpu"),
        _refusal_items(cfg, forget, encode) if objective.needs_idk else None,
    )
    sampler = StepSampler(len(builder.forget), len(builder.retain), cfg.batch_size, cfg.grad_accum, 1, cfg.seed)
    plan = [[builder.build(m) for m in sampler.micro_batches(step, 0)] for step in range(steps)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = build_scheduler(optimizer, sampler.steps_per_epoch, steps)
    stamps = {}
    for step, micro_batches in enumerate(plan, start=1):
        for batch in micro_batches:
            out = objective(model, batch, ref_model)
            if out.forget_risk is None and risk_forward:
                with torch.no_grad():
                    score(model, batch.forget).risk()
            (out.loss / len(micro_batches)).backward()
        stamps[step] = time.perf_counter()  # where the trainer's clock reads: after the backward passes
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return _durations(stamps, skip)


# the objective each update rule is timed with (the robustness study's pairing)
RULE_METHOD = {"orthograd": "GA", "ge-project": "NPO+KL"}


def trainer_step_time(cfg: UnlearnConfig, rounds: int, skip: int) -> float:
    durations = []
    for _ in range(rounds):
        clock = StepClock(skip)
        unlearn(cfg, callbacks=[clock])
        durations += clock.durations()
    return statistics.median(durations)


def bench_rules(base: dict, rounds: int, skip: int, model_dir: Path, names: list[str]) -> None:
    from geffect.updates import update_names

    plain: dict[str, float] = {}
    print(f"update rules: batch {base['batch_size']}, one micro-batch per step (grad_accum 1)")
    print(f"{'rule':<12}{'method':<10}{'ms/step':>9}{'x plain':>9}")
    for rule in [r for r in update_names() if r == "plain" or not names or r in names]:
        method = RULE_METHOD.get(rule, "NPO+NLL")
        if method not in plain:
            plain[method] = trainer_step_time(
                UnlearnConfig(**{**base, "out": base["out"] + "-plain"}, method=method), rounds, skip
            )
        seconds = (
            plain[method]
            if rule == "plain"
            else trainer_step_time(UnlearnConfig(**base, method=method, update=rule), rounds, skip)
        )
        print(f"{rule:<12}{method:<10}{seconds * 1000:>9.1f}{seconds / plain[method]:>9.2f}")
    bench_per_item(model_dir, base["batch_size"])


def bench_per_item(model_dir: Path, size: int, repeats: int = 5) -> None:
    """orthograd's per-item retain gradients: torch.func vmap against one backward per item."""
    from geffect.updates.persample import per_item_loop, per_item_vmap

    model = load_model(str(model_dir)).train()
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, model.config.vocab_size, (size, 64), generator=gen)
    labels = ids.clone()
    labels[:, :20] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    times = {}
    for way in (per_item_loop, per_item_vmap):
        way(model, params, batch)  # warm-up
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            way(model, params, batch)
            runs.append(time.perf_counter() - started)
        times[way.__name__] = statistics.median(runs)
    loop, vmap = times["per_item_loop"], times["per_item_vmap"]
    print(
        f"per-item gradients of {size} items x 64 tokens: loop {loop * 1000:.1f} ms, vmap {vmap * 1000:.1f} ms ({vmap / loop:.2f}x loop)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", default=method_names())
    parser.add_argument("--steps", type=int, default=25, help="optimizer steps per measurement")
    parser.add_argument("--skip", type=int, default=3, help="warm-up steps left out of the timing")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--authors", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="alternating measurements per loop")
    parser.add_argument("--strict", action="store_true", help="bare loop without the logging forward of IdkPO")
    parser.add_argument(
        "--rules",
        nargs="*",
        default=None,
        metavar="RULE",
        help="update rules' step times against plain instead (all by default)",
    )
    args = parser.parse_args(argv)

    scratch = tempfile.TemporaryDirectory(prefix="bench_trainer_")  # removed when the script ends
    work = Path(scratch.name)
    data, model_dir = work / "bench", work / "model"
    write_benchmark(data, n_authors=args.authors, seed=0)
    model, tokenizer = build_tiny(str(data), seed=0)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"tiny preset model: {n_params / 1e6:.2f}M parameters; torch threads {torch.get_num_threads()}; "
        f"batch {args.batch_size} x accum {args.grad_accum}; {args.steps} steps ({args.skip} warm-up), median step time over {args.rounds} alternating rounds"
    )
    if args.rules is not None:
        base = dict(model=str(model_dir), data=str(data), out=str(work / "runs" / "rule"), lr=1e-4, epochs=1000,
                    max_steps=args.steps, batch_size=args.batch_size, grad_accum=1, template="plain",
                    progress=False, overwrite=True)  # fmt: skip
        bench_rules(base, args.rounds, args.skip, model_dir, args.rules)
        return 0
    print(f"{'method':<12}{'trainer steps/s':>17}{'bare steps/s':>14}{'ratio':>8}")
    worst = float("inf")
    for method in args.methods:
        cfg = UnlearnConfig(
            model=str(model_dir),
            data=str(data),
            out=str(work / "runs" / method),
            method=method,
            lr=1e-4,
            epochs=1000,
            max_steps=args.steps,
            batch_size=args.batch_size,
            grad_accum=args.grad_accum,
            template="plain",
            progress=False,
            overwrite=True,
        )
        # Alternate the two loops and compare median step times, so that bursts of load from other
        # processes on the machine do not decide the ratio.
        bare_steps, trainer_steps = [], []
        for _ in range(args.rounds):
            bare_steps += bare_loop(cfg, args.steps, args.skip, risk_forward=not args.strict)
            clock = StepClock(args.skip)
            unlearn(cfg, callbacks=[clock])
            trainer_steps += clock.durations()
        bare, trainer = 1 / statistics.median(bare_steps), 1 / statistics.median(trainer_steps)
        worst = min(worst, trainer / bare)
        print(f"{method:<12}{trainer:>17.2f}{bare:>14.2f}{trainer / bare:>8.3f}")
    print(f"worst ratio {worst:.3f} ({'meets' if worst >= 0.85 else 'misses'} the 0.85 target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
