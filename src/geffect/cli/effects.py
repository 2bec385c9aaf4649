"""`geffect effects`: G-effects of saved checkpoints (post-hoc, like the paper), and the first-order check.

    geffect effects --checkpoints runs/npo --data data/bench --forget forget10 --method NPO --out runs/npo/posthoc.jsonl
    geffect effects --validate --model runs/target/model --data data/bench --forget forget10 --method GA --eta 1e-5

Format of the output lines and the choices made: docs/geffect-posthoc.md.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from geffect.cli.unlearn import add_objective_arguments, parse_hparams
from geffect.errors import UsageError
from geffect.io import check_writable

HELP = "G-effects of saved checkpoints (one geffect.jsonl line per checkpoint), or --validate: the first-order check"


def register(subparsers) -> None:
    parser = subparsers.add_parser("effects", help=HELP, description=HELP)
    build_effects_parser(parser)
    parser.set_defaults(func=run)


def build_effects_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from geffect.effects.posthoc import ESTIMATORS

    what = parser.add_argument_group("what to measure")
    what.add_argument(
        "--checkpoints",
        nargs="+",
        metavar="DIR",
        help="save_pretrained folders, run checkpoints (RUN/checkpoints/step-N) or run folders (expanded to their checkpoints in step order)",
    )
    what.add_argument(
        "--validate",
        action="store_true",
        help="first-order check on --model: -eta*e against the measured risk change after one SGD step",
    )
    what.add_argument("--model", help="--validate: the model folder to check")
    what.add_argument("--data", required=True, help="TOFU folder (JSON Lines named like the hub) or hub id")
    what.add_argument(
        "--forget", default="forget10", help="forget split (default forget10); its retain split gives the retain data"
    )
    what.add_argument(
        "--out", help="output file: JSON Lines, one line per checkpoint (with --validate: optional JSON file)"
    )
    what.add_argument("--overwrite", action="store_true", help="replace an existing --out")

    objective = parser.add_argument_group("objective")
    add_objective_arguments(objective)
    objective.add_argument(
        "--reference",
        default=None,
        metavar="DIR",
        help="pi_ref for objectives that need one (default: the run's starting model, else the first checkpoint; --validate: the model itself)",
    )

    how = parser.add_argument_group("estimator")
    how.add_argument(
        "--estimator",
        choices=ESTIMATORS,
        default="full",
        help="full (whole forget split, retain probe; default) or batch (the run's first mini-batch)",
    )
    how.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="items per forward (default 8); with full, one batch holding the whole split gives the exact grad L_u(D_u)",
    )
    how.add_argument(
        "--probe-size", type=int, default=32, metavar="N", help="retain probe items for the full estimator (default 32)"
    )
    how.add_argument("--instances", action="store_true", help="per-item contributions (ghost dot products)")
    how.add_argument("--tokens", action="store_true", help="per-token contributions (implies --instances)")
    how.add_argument("--tensors", action="store_true", help="per-tensor breakdown in every line")
    how.add_argument(
        "--template",
        default=None,
        help="prompt template (phi, llama2, plain, chat); default: the run's, else from the model name",
    )
    how.add_argument("--max-length", type=int, default=None, help="max tokens per item (default: the run's, else 512)")
    how.add_argument(
        "--seed", type=int, default=None, help="seed of the retain pairing and probe (default: the run's, else 0)"
    )
    how.add_argument(
        "--dtype", default=None, help="dtype the weights are loaded in (default float32; --validate: float64)"
    )
    how.add_argument("--eta", type=float, default=1e-5, help="--validate: SGD step size (default 1e-5)")
    how.add_argument("--json", action="store_true", help="--validate: print JSON instead of a table")
    how.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _objective(args: argparse.Namespace):
    from geffect.objectives import build_objective, objective_config

    hparams = parse_hparams(args.hparams, args.beta)
    return build_objective(
        objective_config(args.method, args.retain_loss, args.gamma, args.alpha, hparams, args.kl_mask, args.preset)
    )


def _options(args: argparse.Namespace, dtype: str | None):
    from geffect.effects.posthoc import EffectOptions
    from geffect.models.loading import resolve_dtype

    resolve_dtype(dtype)  # fails early on an unknown name
    options = EffectOptions(
        data=args.data,
        forget=args.forget,
        estimator=args.estimator,
        batch_size=args.batch_size,
        probe_size=args.probe_size,
        instances=args.instances or args.tokens,
        tokens=args.tokens,
        tensors=args.tensors,
        template=args.template,
        max_length=args.max_length,
        seed=args.seed,
        dtype=dtype,
    )
    options.validate()
    return options


def _check_out(out: str | None, overwrite: bool) -> Path | None:
    if out is None:
        return None
    path = Path(out)
    if path.is_dir():
        raise UsageError(f"--out {path} is a folder; pass a file name such as {path / 'posthoc.jsonl'}")
    if path.exists() and not overwrite:
        raise UsageError(f"--out {path} already exists; pass --overwrite to replace it, or another --out")
    check_writable(path)  # before any G-effect is computed
    return path


def run(args: argparse.Namespace) -> int:
    if args.validate:
        return run_validate(args)
    return run_posthoc(args)


def run_posthoc(args: argparse.Namespace) -> int:
    from geffect.effects.posthoc import expand_checkpoints, plan_posthoc, posthoc_effects
    from geffect.io import atomic_write_text

    if not args.checkpoints:
        raise UsageError("pass --checkpoints DIR [DIR ...] (or --validate --model DIR for the first-order check)")
    if args.out is None:
        raise UsageError("pass --out FILE for the G-effect lines, e.g. --out posthoc.jsonl")
    out = _check_out(args.out, args.overwrite)
    objective = _objective(args)
    options = _options(args, args.dtype)
    plan = plan_posthoc(expand_checkpoints(args.checkpoints), objective, options, args.reference)
    lines: list[str] = []
    out.parent.mkdir(parents=True, exist_ok=True)
    for record in posthoc_effects(plan, progress=not args.no_progress):
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
        atomic_write_text(out, "".join(lines))  # complete lines so far, never a torn file
    print(f"G-effects of {len(lines)} checkpoint(s) ({objective.name}, {options.estimator} estimator): {out}")
    return 0


def run_validate(args: argparse.Namespace) -> int:
    import torch

    from geffect.effects.posthoc import (
        build_sets,
        expand_checkpoints,
        load_checkpoint_model,
        load_reference,
        plan_posthoc,
        validate_model,
    )
    from geffect.io import atomic_write_json
    from geffect.models.loading import load_tokenizer

    if args.model is None:
        raise UsageError("--validate needs --model DIR, the model to check")
    if args.checkpoints:
        raise UsageError(
            "--validate checks one --model; drop --checkpoints (or drop --validate for post-hoc G-effects)"
        )
    if not (math.isfinite(args.eta) and args.eta > 0):
        raise UsageError(f"--eta must be a positive number, got {args.eta}")
    out = _check_out(args.out, args.overwrite)
    objective = _objective(args)
    options = _options(args, args.dtype or "float64")
    checkpoints = expand_checkpoints([args.model])[-1:]  # a run folder: its final model
    plan = plan_posthoc(checkpoints, objective, options, args.reference)
    sets = build_sets(
        load_tokenizer(plan.tokenizer_source),
        plan.template,
        options,
        objective,
        plan.seed,
        plan.max_length,
        plan.device,
        plan.preferred,
    )
    model = load_checkpoint_model(checkpoints[0], options.dtype).to(plan.device)
    objective.setup(model, torch.Generator().manual_seed(plan.seed))
    results = validate_model(model, objective, sets, load_reference(plan), args.eta)
    report = {
        "model": str(checkpoints[0].path),
        "method": objective.name,
        "estimator": options.estimator,
        "dtype": options.dtype,
        "eta": args.eta,
        "sets": {name: result.to_json() for name, result in results.items()},
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, report)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"first-order check of {objective.name} on {report['model']} (eta {args.eta:g}, {options.dtype}, {options.estimator} estimator)"
        )
        print(f"{'set':<8} {'e':>13} {'predicted -eta*e':>17} {'measured dR':>13} {'rel. error':>11}")
        for name, result in results.items():
            print(
                f"{name:<8} {result.e:>13.6g} {result.predicted:>17.6g} {result.measured:>13.6g} {result.relative_error:>11.3%}"
            )
    return 0
