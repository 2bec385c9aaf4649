"""Greedy generation speed: geffect's `generate_answers` against a bare `model.generate` on the same prompts.

    .venv/bin/python benchmarks/bench_generation.py --model smollm2-135m-instruct --data ../shared/data/tofu

Both generate the same greedy tokens for the same left-padded batches (checked); the benchmark prints the
tokens per second of each (new tokens up to and including EOS, summed over rows) and their ratio
(geffect / bare; the issue's target is at least 0.8). The bare loop is what a user would write: tokenize the
prompts, left-pad, `model.generate(..., do_sample=False)`, in the model's default settings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model (folder, .gguf, name, hub id)")
    parser.add_argument("--data", default="../shared/data/tofu", help="TOFU folder (questions of forget01)")
    parser.add_argument("--split", default="forget01")
    parser.add_argument("--template", default=None, help="prompt template (default: from the model name)")
    parser.add_argument("--n", type=int, default=8, help="questions (default 8)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of each; the median is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--dtype", default=None, help="weights' dtype: float32 (default) or bfloat16")
    return parser.parse_args(argv)


def _bare(model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int) -> list[list[int]]:
    """A bare generate loop: left-padded batches in input order."""
    tokenizer.padding_side = "left"
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            generated = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        out.extend(generated[:, enc["input_ids"].shape[1] :].tolist())
    return out


def _count(tokens: list[list[int]], eos: int) -> int:
    return sum(row.index(eos) + 1 if eos in row else len(row) for row in tokens)


def _interleaved(fns: dict, repeats: int) -> dict[str, tuple[float, object]]:
    """Median seconds and last result of each function, run alternately (a shared machine's load hits both)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    results: dict[str, object] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            started = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - started)
    return {name: (statistics.median(times[name]), results[name]) for name in fns}


def main(argv=None) -> int:
    from geffect.data.collate import encode_prompt
    from geffect.data.templates import get_template, template_for_model
    from geffect.data.tofu import load_split
    from geffect.evaluation.generation import generate_answers
    from geffect.models.loading import load_model_and_tokenizer

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype)
    template = get_template(args.template) if args.template else template_for_model(args.model)
    questions = [r["question"] for r in load_split(args.data, args.split)[: args.n]]
    # The same token ids for both: geffect's prompts, decoded back into text for the bare loop's tokenizer call.
    prompts = [tokenizer.decode(encode_prompt(tokenizer, template, q)) for q in questions]
    eos = tokenizer.eos_token_id

    def ours():
        return generate_answers(
            model, tokenizer, template, questions, args.batch_size, args.max_new_tokens, progress=False
        )

    def bare():
        return _bare(model, tokenizer, prompts, args.batch_size, args.max_new_tokens)

    ours()  # warm-up (allocations, kernels)
    timed = _interleaved({"bare": bare, "ours": ours}, args.repeats)
    (bare_s, bare_tokens), (ours_s, ours_texts) = timed["bare"], timed["ours"]
    bare_texts = [
        tokenizer.decode(row[: row.index(eos)] if eos in row else row, skip_special_tokens=True).strip()
        for row in bare_tokens
    ]
    n_tokens = _count(bare_tokens, eos)
    result = {
        "model": args.model,
        "template": template.name,
        "questions": len(questions),
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "threads": torch.get_num_threads(),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "new_tokens": n_tokens,
        "bare_tokens_per_s": round(n_tokens / bare_s, 2),
        "geffect_tokens_per_s": round(n_tokens / ours_s, 2),
        "ratio": round(bare_s / ours_s, 3),
        "same_texts": sum(a == b for a, b in zip(ours_texts, bare_texts)),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
