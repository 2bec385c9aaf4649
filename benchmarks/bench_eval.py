"""Speed of the TOFU evaluation on the CPU: batched versus one item at a time, and a full evaluation.

    python benchmarks/bench_eval.py                       # built-in benchmark (100 authors) + random tiny model
    python benchmarks/bench_eval.py --model DIR --data DIR --forget forget10

Without --model, the script writes the built-in benchmark to a temporary folder and builds the `tiny` preset's
tokenizer and a randomly initialised tiny Llama (a random model never emits EOS, so every generation runs the
full --max-new-tokens: the worst case). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from geffect.evaluation.runner import DEFAULT_BATCH_SIZE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="save_pretrained folder with tokenizer (default: random tiny model)")
    parser.add_argument("--data", help="TOFU folder (default: the built-in benchmark, written to a temp folder)")
    parser.add_argument("--forget", default="forget10")
    parser.add_argument("--template", default="plain")
    parser.add_argument("--authors", type=int, default=100, help="built-in benchmark size when --data is not given")
    parser.add_argument(
        "--compare-items", type=int, default=32, help="items per set in the batched vs one-at-a-time comparison"
    )
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--skip-full", action="store_true", help="skip the full evaluation")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    from geffect.evaluation import evaluate

    with tempfile.TemporaryDirectory() as scratch:
        data = args.data or _builtin_benchmark(Path(scratch) / "data", args.authors)
        model, tokenizer = _model(args.model, data)

        def run(batch_size: int, ds_size: int | None) -> tuple[float, float, dict]:
            # Wall time and this process's CPU time: on a shared machine the CPU time is the steadier measure.
            wall, cpu = time.perf_counter(), time.process_time()
            result = evaluate(
                model,
                tokenizer,
                data,
                args.forget,
                args.template,
                ds_size=ds_size,
                batch_size=batch_size,
                max_new_tokens=args.max_new_tokens,
            )
            return time.perf_counter() - wall, time.process_time() - cpu, result

        batched_s, batched_cpu, batched = run(args.batch_size, args.compare_items)
        single_s, single_cpu, single = run(1, args.compare_items)
        report = {
            "model": args.model or "random tiny Llama (tiny preset)",
            "parameters": sum(p.numel() for p in model.parameters()),
            "data": args.data or f"built-in benchmark, {args.authors} authors",
            "threads": torch.get_num_threads(),
            "max_new_tokens": args.max_new_tokens,
            "compare": {
                "items_per_set": batched["geffect_meta"]["set_sizes"],
                "batch_size": args.batch_size,
                "batched_seconds": round(batched_s, 2),
                "one_at_a_time_seconds": round(single_s, 2),
                "speedup": round(single_s / batched_s, 2),
                "batched_cpu_seconds": round(batched_cpu, 2),
                "one_at_a_time_cpu_seconds": round(single_cpu, 2),
                "speedup_cpu_time": round(single_cpu / batched_cpu, 2),
                "same_model_utility": _close(
                    batched["model_utility"]["agg_value"], single["model_utility"]["agg_value"]
                ),
            },
        }
        if not args.skip_full:
            full_s, full_cpu, full = run(args.batch_size, None)
            report["full_evaluation"] = {
                "seconds": round(full_s, 1),
                "cpu_seconds": round(full_cpu, 1),
                "set_sizes": full["geffect_meta"]["set_sizes"],
                "batch_size": args.batch_size,
                "model_utility": full["model_utility"]["agg_value"],
            }
    print(json.dumps(report, indent=2))


def _builtin_benchmark(folder: Path, authors: int) -> str:
    from geffect.data.synth import write_benchmark

    write_benchmark(folder, n_authors=authors, seed=0, overwrite=True)
    return str(folder)


def _model(path: str | None, data: str):
    if path:
        from geffect.models.loading import load_model_and_tokenizer

        return load_model_and_tokenizer(path)
    from geffect.models.tiny import build_tiny

    model, tokenizer = build_tiny(data, seed=0)
    return model.eval(), tokenizer


def _close(a: float | None, b: float | None) -> bool:
    return (
        a is None and b is None or (a is not None and b is not None and abs(a - b) <= 1e-4 * max(abs(a), abs(b), 1e-12))
    )


if __name__ == "__main__":
    main()
