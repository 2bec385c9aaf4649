"""A small synthetic study folder, written the way the pipeline writes one, for the report tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geffect.io import append_jsonl, atomic_write_json, atomic_write_text

GROUPS = ("embed", "shallow", "middle", "deep", "lm_head", "other")


def effect(rng: np.random.Generator, n_layers: int, sign: float) -> dict:
    layers = (sign * rng.random(n_layers)).tolist()
    groups = {
        "embed": float(sign * rng.random()),
        "shallow": layers[0],
        "middle": layers[1],
        "deep": sum(layers[2:]),
        "lm_head": 0.0,
        "other": float(sign * 0.01),
    }
    return {"total": float(sum(groups.values())), "groups": groups, "layers": layers, "tied_embeddings": True}


def write_run(run_dir: Path, seed: int, steps: int = 6, n_items: int = 4, weights: bool = True) -> None:
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True)
    atomic_write_text(run_dir / "config.yaml", f"method: X\nseed: {seed}\n")
    predicted_u = predicted_r = 0.0
    for step in range(1, steps + 1):
        lr = 1e-3
        append_jsonl(
            run_dir / "log.jsonl",
            {
                "step": step,
                "loss": float(-step),
                "forget_loss": float(-step),
                "retain_loss": 0.1,
                "forget_risk": 1.0 + 0.3 * step,
                "retain_risk": 1.0 + 0.01 * step,
                "lr": lr,
            },
        )
        e_u, e_r = effect(rng, 3, -1.0), effect(rng, 3, 0.5)
        predicted_u -= lr * e_u["total"]
        predicted_r -= lr * e_r["total"]
        ids = [str(4 * (step - 1) + i) for i in range(n_items)]  # a new batch of forget items each step
        items_u = {i: float(-rng.random()) for i in ids}
        items_r = {str(1000 + int(i)): float(rng.normal()) for i in ids}
        record = {
            "step": step,
            "lr": lr,
            "estimator": "batch",
            "e_u": e_u,
            "e_r": e_r,
            "risk_u": 1.0 + 0.3 * step,
            "risk_r": 1.0 + 0.01 * step,
            "n_tokens_u": 40,
            "n_tokens_r": 40,
            "items_u": items_u,
            "items_r": items_r,
            "objective_items": {i: {"e_u": float(-rng.random()), "e_r": float(rng.normal())} for i in ids},
            "predicted_change": {"e_u": predicted_u, "e_r": predicted_r},
            "ema": {"e_u": {"total": e_u["total"] * 0.9}, "e_r": {"total": e_r["total"] * 0.9}},
            "seconds": 0.01,
        }
        if weights:
            record["weights"] = {"item": {i: float(rng.random()) for i in ids}}
        append_jsonl(run_dir / "geffect.jsonl", record)


def write_summary(eval_dir: Path, rng: np.random.Generator) -> dict:
    summary = {
        "forget_quality": float(10 ** -rng.uniform(0, 20)),
        "model_utility": float(rng.random()),
        "forget_truth_ratio": float(rng.random()),
        "forget_Q_A_Prob": float(rng.random()),
        "forget_Q_A_ROUGE": float(rng.random()),
        "extraction_strength": float(rng.random()),
    }
    atomic_write_json(eval_dir / "TOFU_SUMMARY.json", summary)
    return summary


def make_study(root: Path, methods=("GA", "NPO+KL")) -> dict[str, dict]:
    """A study folder with target, retain and one run per method; returns name -> its TOFU summary."""
    rng = np.random.default_rng(0)
    entries, summaries = [], {}
    for kind in ("target", "retain"):
        eval_dir = f"evals/{kind}-forget10"
        summaries[kind] = write_summary(root / eval_dir, rng)
        entries.append({"name": kind, "kind": kind, "forget_split": "forget10", "eval_dir": eval_dir})
    for index, method in enumerate(methods):
        name = f"forget10-{method}-seed0"
        run_dir = f"runs/{name}"
        write_run(root / run_dir, seed=index + 1, weights=index % 2 == 1)
        summaries[name] = write_summary(root / run_dir / "eval", rng)
        entries.append(
            {
                "name": name,
                "kind": "run",
                "method": method,
                "forget_split": "forget10",
                "seed": 0,
                "params": {"beta": 0.1} if index else {},
                "run_dir": run_dir,
                "eval_dir": f"{run_dir}/eval",
            }
        )
    atomic_write_json(root / "manifest.json", {"entries": entries})
    atomic_write_text(root / "study.yaml", "name: fake\n")
    atomic_write_json(
        root / "timings.json", {"stages": [{"stage": "benchmark", "name": "builtin", "seconds": 1.5, "cached": False}]}
    )
    return summaries
