"""`geffect unlearn`: run an unlearning objective on a model (also under `accelerate launch`).

    geffect unlearn --model runs/target/model --data data/bench --forget forget10 --method NPO+KL --out runs/npo
    accelerate launch --config_file examples/accelerate/cpu_2proc.yaml -m geffect unlearn ... --grad-accum 2
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from geffect.effects.tracker import add_tracking_arguments, tracker_from_args
from geffect.errors import UsageError
from geffect.training.config import MIXED_PRECISION, UnlearnConfig

# config.yaml section holding the G-effect tracking options (argparse names), so a run can be rerun as it was.
TRACKING_SECTION = "geffect_tracking"

HELP = "unlearn a forget split with an objective (GA, NPO, SimNPO, WGA, TNPO, ...); writes RUN/model and RUN/log.jsonl"


def register(subparsers) -> None:
    parser = subparsers.add_parser("unlearn", help=HELP, description=HELP)
    build_unlearn_parser(parser)
    parser.set_defaults(func=run)


def build_unlearn_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Every `unlearn` option; other commands (e.g. G-effect tracking) add their own groups to `parser`."""
    d = UnlearnConfig(model="", data="", out="")  # the defaults live in one place
    io = parser.add_argument_group("inputs and outputs")
    io.add_argument("--model", required=True, help="save_pretrained folder or hub id of the model to unlearn from")
    io.add_argument("--data", required=True, help="TOFU folder (JSON Lines named like the hub) or hub id, e.g. locuslab/TOFU")
    io.add_argument("--forget", default=d.forget, help=f"forget split (default {d.forget}); its retain split is paired")
    io.add_argument("--out", required=True, help="run folder: config.yaml, log.jsonl, checkpoints/, model/")
    io.add_argument("--template", default=None, help="prompt template (phi, llama2, plain, chat); default from the model name")
    io.add_argument("--max-length", type=int, default=d.max_length, help=f"max tokens per item (default {d.max_length})")
    io.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    io.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    io.add_argument("--no-progress", action="store_true", help="no progress bar")

    objective = parser.add_argument_group("objective")
    objective.add_argument("--method", required=True, help="GA, GradDiff, NPO, SimNPO, IdkPO, DPO, RMU, WGA, TNPO, WTNPO, SatImp, UNDIAL; or METHOD+RETAIN, e.g. NPO+KL")
    objective.add_argument("--retain-loss", default=None, help="none, NLL (GD), KL or MSE; default: the method's")
    objective.add_argument("--beta", type=float, default=None, help="the method's beta (shorthand for --hparam beta=B)")
    objective.add_argument("--gamma", type=float, default=d.gamma, help=f"weight of the forget loss (default {d.gamma})")
    objective.add_argument("--alpha", type=float, default=d.alpha, help=f"weight of the retain loss (default {d.alpha})")
    objective.add_argument("--hparam", action="append", default=[], metavar="KEY=VALUE", help="any method hyper-parameter; repeatable")
    objective.add_argument("--kl-mask", default=d.kl_mask, help="KL over answer tokens ('answer', default) or every position ('all')")

    train = parser.add_argument_group("optimisation")
    train.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr:g})")
    train.add_argument("--epochs", type=int, default=d.epochs, help=f"epochs over the forget split (default {d.epochs})")
    train.add_argument("--batch-size", type=int, default=d.batch_size, help=f"forget items per process and micro-step (default {d.batch_size})")
    train.add_argument("--grad-accum", type=int, default=d.grad_accum, help=f"micro-steps per optimizer step (default {d.grad_accum})")
    train.add_argument("--max-grad-norm", type=float, default=None, help="clip the gradient norm (default: no clipping)")
    train.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, help=f"linear warm-up length in epochs (default {d.warmup_epochs:g})")
    train.add_argument("--weight-decay", type=float, default=d.weight_decay, help=f"AdamW weight decay (default {d.weight_decay:g})")
    train.add_argument("--max-steps", type=int, default=None, help="cap on optimizer steps (the schedule spans the capped run)")
    train.add_argument("--save-every", type=int, default=d.save_every, help="checkpoint every N optimizer steps (default: never)")
    train.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints, help=f"newest checkpoints kept (default {d.keep_checkpoints}; 0 all)")
    train.add_argument("--seed", type=int, default=d.seed, help=f"seed of data order, pairing and initialisations (default {d.seed})")
    train.add_argument("--lora-r", type=int, default=d.lora_r, help="LoRA rank (default 0: full fine-tuning)")
    train.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default 2 * rank)")
    train.add_argument("--mixed-precision", default=d.mixed_precision, help=f"{', '.join(MIXED_PRECISION)} (default auto: bf16 on a GPU)")
    train.add_argument("--dtype", default=None, help="dtype the weights are loaded in (float32, bfloat16, ...; default float32)")

    add_tracking_arguments(parser)  # --track-geffect and its options (docs/geffect-format.md)
    return parser


def parse_hparams(items: Sequence[str], beta: float | None) -> dict[str, float]:
    hparams: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--hparam {item!r} is not KEY=VALUE, e.g. --hparam beta=0.5")
        try:
            hparams[key.strip()] = float(value)
        except ValueError:
            raise UsageError(f"--hparam {item!r}: {value!r} is not a number") from None
    if beta is not None:
        if "beta" in hparams and hparams["beta"] != beta:
            raise UsageError(f"--beta {beta:g} and --hparam beta={hparams['beta']:g} disagree; give one")
        hparams["beta"] = beta
    return hparams


def config_from_args(args: argparse.Namespace) -> UnlearnConfig:
    return UnlearnConfig(
        model=args.model,
        data=args.data,
        out=args.out,
        forget=args.forget,
        method=args.method,
        retain_loss=args.retain_loss,
        gamma=args.gamma,
        alpha=args.alpha,
        hparams=parse_hparams(args.hparam, args.beta),
        kl_mask=args.kl_mask,
        lr=args.lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        max_grad_norm=args.max_grad_norm,
        warmup_epochs=args.warmup_epochs,
        weight_decay=args.weight_decay,
        save_every=args.save_every,
        keep_checkpoints=args.keep_checkpoints,
        max_steps=args.max_steps,
        seed=args.seed,
        template=args.template,
        max_length=args.max_length,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        mixed_precision=args.mixed_precision,
        dtype=args.dtype,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )


def tracking_options(args: argparse.Namespace) -> dict | None:
    """The G-effect tracking options as recorded in config.yaml (argparse names); None without --track-geffect."""
    if not getattr(args, "track_geffect", False):
        return None
    defaults = argparse.ArgumentParser(add_help=False)
    add_tracking_arguments(defaults)
    return {name: getattr(args, name, value) for name, value in vars(defaults.parse_args([])).items()}


class RecordTracking:
    """Adds the tracking options to the run's config.yaml (the loop writes it before any callback starts)."""

    retain_graph = False

    def __init__(self, options: dict):
        self.options = options

    def on_train_begin(self, run) -> None:
        import yaml

        from geffect.io import atomic_write_text
        from geffect.training.unlearn import CONFIG_FILE

        run.config[TRACKING_SECTION] = dict(self.options)
        if getattr(run.accelerator, "is_main_process", True):
            atomic_write_text(Path(run.run_dir) / CONFIG_FILE, yaml.safe_dump(run.config, sort_keys=False))

    def after_backward(self, run, step) -> None:
        pass

    def on_train_end(self, run) -> None:
        pass


def build_callbacks(args: argparse.Namespace) -> list:
    """Step callbacks requested on the command line: the G-effect tracker (with --track-geffect)."""
    tracker = tracker_from_args(args)
    if tracker is None:
        return []
    return [RecordTracking(tracking_options(args)), tracker]


def check_tracking_resumable(args: argparse.Namespace) -> None:
    """--resume must track as the interrupted run did, or RUN/geffect.jsonl would mix two settings."""
    import yaml

    from geffect.training.unlearn import CONFIG_FILE, SUMMARY_FILE

    run_dir = Path(args.out)
    if not args.resume or not (run_dir / CONFIG_FILE).exists() or (run_dir / SUMMARY_FILE).exists():
        return  # nothing to continue, or unlearn() reports why not
    saved = (yaml.safe_load((run_dir / CONFIG_FILE).read_text(encoding="utf-8")) or {}).get(TRACKING_SECTION)
    new = tracking_options(args)
    if saved != new:
        if saved is None or new is None:
            change = "the run had no G-effect tracking" if saved is None else "the run had --track-geffect"
        else:
            change = "changed: " + ", ".join(f"{k}: {saved.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(saved) | set(new)) if saved.get(k) != new.get(k))
        raise UsageError(f"--resume needs the G-effect tracking options of the interrupted run; {change}")
    if new is not None and new.get("geffect_estimator") == "ema":
        logging.getLogger(__name__).warning(
            "the EMA estimator's smoothed gradients are not checkpointed: after --resume the 'ema' values restart from the resumed step"
        )


def run(args: argparse.Namespace) -> int:
    from geffect.training.unlearn import TrainingDiverged, unlearn

    config = config_from_args(args)
    check_tracking_resumable(args)
    try:
        result = unlearn(config, callbacks=build_callbacks(args))
    except TrainingDiverged as err:
        print(f"geffect: stopped: {err}", file=sys.stderr)
        return 1
    if result.summary:
        last = result.last_log or {}
        print(f"unlearned with {result.summary['method']} for {result.steps} steps; "
              f"forget risk {last.get('forget_risk', float('nan')):.4g}; model: {result.model_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m geffect.cli.unlearn ...` (equivalent to `geffect unlearn ...`)."""
    parser = argparse.ArgumentParser(prog="geffect unlearn", description=HELP)
    build_unlearn_parser(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UsageError as err:
        print(f"geffect: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
