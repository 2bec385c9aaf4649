"""`geffect eval`: TOFU evaluation of a model; `geffect eval summarize`: aggregates from saved per-item values."""

from __future__ import annotations

import argparse
import json
import sys

from geffect.data.templates import TEMPLATES, get_template, template_for_model
from geffect.data.tofu import FORGET_SPLITS
from geffect.errors import UsageError
from geffect.evaluation.config import EvalConfig
from geffect.evaluation.extra import extra_metric_options
from geffect.evaluation.logs import EVAL_FILE, META_KEY, SUMMARY_FILE, load_eval_file
from geffect.evaluation.runner import evaluate, plan_evaluation
from geffect.evaluation.summary import summarize
from geffect.io import absolute_if_local, atomic_write_json, staged_output_dir
from geffect.options import add_arguments, from_args


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="TOFU evaluation of a model (TOFU_EVAL.json + TOFU_SUMMARY.json)",
        description=(
            "Score a model on the TOFU evaluation sets: probabilities, ROUGE-L, truth ratios, model utility, "
            "forget quality (needs --retain-logs), extraction strength, MIA AUCs and privleak. "
            "`geffect eval summarize FILE` recomputes the aggregates of a saved evaluation."
        ),
    )
    parser.add_argument("--model", help="save_pretrained folder (with tokenizer) or hub id")
    parser.add_argument("--data", help="TOFU folder of JSON Lines files, or a hub id such as locuslab/TOFU")
    parser.add_argument("--forget", default="forget10", choices=FORGET_SPLITS, help="forget split (default forget10)")
    parser.add_argument(
        "--retain-logs",
        help="the retain model's TOFU_EVAL.json (ours or OpenUnlearning's) or legacy eval_log_aggregated.json; "
        "without it forget quality and privleak are null",
    )
    add_arguments(parser, EvalConfig)
    parser.add_argument(
        "--template", choices=sorted(TEMPLATES), help="prompt template (default: from the model name, else plain)"
    )
    parser.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16, float64")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    parser.add_argument("--out", help="output folder for TOFU_EVAL.json and TOFU_SUMMARY.json")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.set_defaults(func=run)

    commands = parser.add_subparsers(dest="eval_command", metavar="{summarize}", parser_class=type(parser))
    summary = commands.add_parser(
        "summarize",
        help="print the aggregates of a saved evaluation as one JSON object",
        description="Recompute model utility, forget quality (with --retain-logs) and every other aggregate "
        "from the per-item values of a TOFU_EVAL.json (ours or OpenUnlearning's) or a legacy eval_log_aggregated.json.",
    )
    summary.add_argument("eval_file", help="TOFU_EVAL.json or eval_log_aggregated.json")
    summary.add_argument("--retain-logs", help="the retain model's evaluation, in any of the same formats")
    summary.set_defaults(func=run_summarize)


def run(args: argparse.Namespace) -> int:
    from geffect.models.loading import check_model_source

    missing = [
        flag for flag, value in (("--model", args.model), ("--data", args.data), ("--out", args.out)) if not value
    ]
    if missing:
        raise UsageError(
            f"geffect eval needs {', '.join(missing)}; or run `geffect eval summarize FILE` on a saved evaluation"
        )
    scoring = from_args(EvalConfig, args)
    scoring.validate()
    check_model_source(args.model)
    if scoring.reference_model:
        check_model_source(scoring.reference_model)
    template = get_template(args.template) if args.template else template_for_model(args.model)
    # Every input check before the (slow) model load.
    retain = plan_evaluation(
        args.data, args.forget, template, args.retain_logs, scoring.ds_size, scoring.max_new_tokens, scoring.convention
    ).retain
    device = _device(args.device)
    # Results go to a staging folder that replaces --out only once they are complete (--overwrite keeps the old
    # ones until then); the model and data must not be inside --out.
    with staged_output_dir(args.out, overwrite=args.overwrite, inputs=(args.model, args.data)) as out:
        _evaluate_into(out, args, scoring, template, retain, device)
    return 0


def _evaluate_into(out, args: argparse.Namespace, scoring: EvalConfig, template, retain, device: str) -> None:
    from geffect.models.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype)
    model.to(device)
    result = evaluate(
        model,
        tokenizer,
        args.data,
        args.forget,
        template,
        retain_logs=retain,
        ds_size=scoring.ds_size,
        batch_size=scoring.batch_size,
        max_new_tokens=scoring.max_new_tokens,
        **extra_metric_options(scoring, args.dtype, device),
    )
    result[META_KEY]["model"] = absolute_if_local(args.model)
    summary = summarize(result, retain)
    atomic_write_json(out / EVAL_FILE, result)
    atomic_write_json(out / SUMMARY_FILE, summary)
    print(json.dumps(summary))


def run_summarize(args: argparse.Namespace) -> int:
    evaluation = load_eval_file(args.eval_file)
    retain = None if args.retain_logs is None else load_eval_file(args.retain_logs)
    json.dump(summarize(evaluation, retain), sys.stdout)
    sys.stdout.write("\n")
    return 0


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown --device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name} requested but no CUDA device is available; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name}: geffect eval runs on cpu or cuda; use --device cpu or cuda")
    return name
