"""The paper's claims computed from a study's files (geffect.study.claims), and the matched comparisons they use
(geffect.reports.paths): small study folders written by hand, each made so that a claim holds or fails, and the
verdict checked against a computation written here."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from geffect.io import append_jsonl, atomic_write_json
from geffect.reports.paths import Point, fq_at_matched_utility, mu_at_matched_forgetting
from geffect.study.claims import CLAIMS_FILE, compute_claims, write_claims

METHODS = ("GA", "GradDiff", "GA+KL", "NPO", "WGA", "TNPO", "WTNPO")


def effect(total: float, groups: dict[str, float] | None = None) -> dict:
    groups = groups or {"shallow": total / 2, "middle": total / 3, "deep": total / 6}
    return {"total": total, "groups": {"embed": 0.0, **groups, "lm_head": 0.0, "other": 0.0}}


def write_run(study, name: str, e_u: list[float], e_r: list[float], groups=None, path=()) -> dict:
    run_dir = study / "runs" / name
    run_dir.mkdir(parents=True)
    for step, (u, r) in enumerate(zip(e_u, e_r), start=1):
        append_jsonl(run_dir / "geffect.jsonl", {"step": step, "e_u": effect(u, groups), "e_r": effect(r)})
    for step, (fq, mu) in path:
        atomic_write_json(
            run_dir / "points" / f"step-{step:05d}" / "TOFU_SUMMARY.json",
            {"forget_quality": fq, "model_utility": mu, "forget_Q_A_Prob": 0.5},
        )
    return {"run_dir": f"runs/{name}", "points_dir": f"runs/{name}/points"}


def default_series(method: str, seed: int) -> tuple[list[float], list[float]]:
    """GA: e_r mirrors e_u; NPO: a tenth of GA's; the reweighted ones: e_r a tenth of e_u; the rest e_r > 0."""
    e_u = [-1.0 - 0.5 * step - 0.1 * seed for step in range(6)]
    scale = {"NPO": 0.1}.get(method, 1.0)
    e_u = [scale * v for v in e_u]
    if method in ("GA", "NPO"):
        e_r = [0.9 * v for v in e_u]
    elif method in ("WGA", "TNPO", "WTNPO"):
        e_r = [0.1 * v for v in e_u]
    else:
        e_r = [0.2] * len(e_u)
    return e_u, e_r


def default_path(method: str) -> list[tuple[int, tuple[float, float]]]:
    """Points (step, (forget quality, model utility)) after step 0 (the target: fq 1e-10, mu 0.8)."""
    best = {"WGA": 1e-2, "WTNPO": 5e-3}.get(method, 1e-4)
    end_utility = 0.5 if method == "GA+KL" else 0.3  # GA+KL keeps more utility once forgetting is matched
    return [(3, (1e-6, 0.78)), (6, (best, 0.75)), (9, (0.5, end_utility))]


def write_study(study, seeds=(0, 1, 2), series=default_series, groups=None, paths=None) -> None:
    """A study folder as the pipeline writes it: manifest, target points, every method's run per seed."""
    entries = [{"name": "target", "kind": "target", "forget_split": "forget10", "eval_dir": "evals/target-forget10"}]
    entries[0]["points_dir"] = "evals/target-forget10/points"
    atomic_write_json(
        study / "evals/target-forget10/points/TOFU_SUMMARY.json",
        {"forget_quality": 1e-10, "model_utility": 0.8, "forget_Q_A_Prob": 0.99},
    )
    for method in METHODS:
        for seed in seeds:
            name = f"forget10-{method}-seed{seed}"
            e_u, e_r = series(method, seed)
            path = (paths or default_path)(method) if paths is not False else ()
            files = write_run(study, name, e_u, e_r, groups=groups, path=path)
            entry = {"name": name, "kind": "run", "method": method, "forget_split": "forget10", "seed": seed}
            entries.append({**entry, "eval_dir": f"runs/{name}/eval", **files})
    atomic_write_json(study / "manifest.json", {"entries": entries})


def verdicts(study) -> dict[int, dict]:
    return {claim["id"]: claim for claim in compute_claims(study)["claims"]}


def test_every_claim_holds_in_every_seed_of_a_study_made_to_satisfy_them(tmp_path):
    write_study(tmp_path)
    claims = verdicts(tmp_path)
    assert sorted(claims) == [1, 2, 3, 4, 5, 6]
    for claim in claims.values():
        assert claim["verdict"] == "holds in 3 of 3 seeds", claim
        assert claim["quantity"] and [s["seed"] for s in claim["per_seed"]] == [0, 1, 2]
    seed0 = claims[1]["per_seed"][0]["values"]
    e_u, e_r = default_series("GA", 0)
    assert seed0["GA_ratio"] == pytest.approx(sum(e_r) / sum(e_u))
    assert seed0["GA_correlation"] == pytest.approx(np.corrcoef(e_u, e_r)[0, 1])
    npo = claims[3]["per_seed"][0]["values"]
    assert npo["NPO_over_GA_A_u"] == pytest.approx(0.1) and npo["NPO_over_GA_A_r"] == pytest.approx(0.1)
    # written to claims.json as plain JSON
    path = write_claims(tmp_path)
    assert path.name == CLAIMS_FILE and json.loads(path.read_text())["claims"][0]["holds_in"] == 3


def test_claims_fail_when_the_files_say_otherwise(tmp_path):
    def series(method, seed):
        e_u, e_r = default_series(method, seed)
        if method == "GA":  # claim 1 and 2 fail: GA's retain set untouched (seed 1 only for claim 1)
            e_r = [0.0 * v for v in e_r] if seed == 1 else e_r
        if method == "NPO":  # claim 3 fails: NPO's G-effects 3x GA's
            e_u, e_r = [30 * v for v in e_u], [30 * v for v in e_r]
        return e_u, e_r

    def paths(method):
        path = default_path(method)
        if method == "GradDiff":  # claim 5 fails: NLL keeps more utility at the forget quality both reach
            return [(3, (1e-6, 0.79)), (6, (1e-4, 0.79))]
        if method == "NPO":  # claim 6 fails: NPO beats WGA and WTNPO at matched utility
            return [(3, (1e-1, 0.79))]
        return path

    deep = {"shallow": -0.1, "middle": -0.2, "deep": -0.7}  # claim 4 fails: the deep layers take the most
    write_study(tmp_path, series=series, groups=deep, paths=paths)
    claims = verdicts(tmp_path)
    assert claims[1]["verdict"] == "holds in 2 of 3 seeds"
    assert [s["holds"] for s in claims[1]["per_seed"]] == [True, False, True]
    assert claims[2]["holds_in"] == 2  # seed 1: GA's |rho| = 0 is below the reweighted ones'
    assert claims[3]["verdict"] == "holds in 0 of 3 seeds"
    assert claims[4]["verdict"] == "holds in 0 of 3 seeds"
    shares = claims[4]["per_seed"][0]["values"]
    assert shares["GA_shallow_share"] == pytest.approx(0.1) and shares["methods_shallow_largest"] == 0
    assert claims[5]["verdict"] == "holds in 0 of 3 seeds"
    values = claims[5]["per_seed"][0]["values"]
    assert values["matched_forget_quality"] == pytest.approx(1e-4)  # GradDiff's best: the level both reach
    assert values["GA+KL_model_utility"] == 0.75 and values["GradDiff_model_utility"] == 0.79
    assert claims[6]["verdict"] == "holds in 0 of 3 seeds"
    assert claims[6]["per_seed"][0]["values"]["NPO_fq_at_matched_utility"] == 1e-1


def test_a_claim_whose_methods_or_points_are_missing_is_not_computable(tmp_path):
    write_study(tmp_path, seeds=(0,), paths=False)
    claims = verdicts(tmp_path)
    assert claims[1]["verdict"] == "holds in 1 of 1 seeds"  # G-effects only
    for number in (5, 6):
        assert claims[number]["verdict"] == "not computable: needs the points along the runs (eval.every)"
        assert claims[number]["holds_in"] is None and claims[number]["per_seed"] == []


def test_forget_quality_at_matched_utility_and_utility_at_matched_forgetting():
    start = Point(0, 1e-10, 0.8, 0.99)
    path = [start, Point(2, 1e-5, 0.75, 0.5), Point(4, 1e-2, 0.71, 0.3), Point(6, 0.9, 0.2, 0.1)]
    # 0.9 x 0.8 = 0.72: step 4's utility 0.71 is below it, so the best qualifying point is step 2
    assert fq_at_matched_utility(path) == 1e-5
    assert fq_at_matched_utility(path, fraction=0.85) == 1e-2  # 0.68
    assert fq_at_matched_utility(path, fraction=0.2) == 0.9  # 0.16
    assert fq_at_matched_utility([start]) == 1e-10  # the target itself always qualifies
    assert math.isnan(fq_at_matched_utility([]))
    other = [start, Point(3, 1e-3, 0.79, 0.4)]
    level, first, second = mu_at_matched_forgetting(path, other)
    assert level == 1e-3 and first == 0.71 and second == 0.79
    assert all(math.isnan(v) for v in mu_at_matched_forgetting([], other))
