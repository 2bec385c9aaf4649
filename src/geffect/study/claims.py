"""The paper's claims checked from a study's files: `claims.json`, one entry per claim, a verdict per seed.

Each claim names the quantity that tests it, computes it per seed (per forget split and seed, when a study
has several splits) from the files the runs wrote (geffect.jsonl, the points along each run), and counts
the seeds in which it holds. Nothing is tuned or hard-coded: a claim that does not hold is a result; a
claim whose methods the study lacks is listed as not computable, with the reason.

Quantities (sums over every measured step t of a run; e_u, e_r the G-effect totals of geffect.jsonl):
- ratio rho = sum_t e_r / sum_t e_u: the retaining G-effect relative to the unlearning one (1: e_r mirrors
  e_u; 0: the retain set is untouched; negative: the retain set is helped);
- correlation: Pearson's r of e_u and e_r over the steps;
- magnitude A_u = sum_t |e_u|, A_r = sum_t |e_r|;
- layer share: |sum_t e_u[g]| of the groups g = shallow, middle, deep (each a third of the decoder layers);
- forget quality at matched utility, model utility at matched forgetting: see geffect.reports.paths.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geffect.io import atomic_write_json
from geffect.reports.paths import Point, fq_at_matched_utility, mu_at_matched_forgetting, study_paths
from geffect.reports.runfiles import effect_total, read_run
from geffect.reports.tables import ManifestEntry, read_manifest

CLAIMS_FILE = "claims.json"
LAYER_GROUPS = ("shallow", "middle", "deep")
MIRROR_RATIO = 0.5  # claim 1: e_r at least half of e_u (same sign) ...
MIRROR_CORRELATION = 0.5  # ... and moving with it step by step
REWEIGHTED = ("WGA", "TNPO", "WTNPO")


class NotComputable(Exception):
    """The study lacks what a claim needs (a method, G-effects, points along the runs)."""


@dataclass
class RunQuantities:
    """What the claims read from one run."""

    e_u: np.ndarray
    e_r: np.ndarray
    groups: dict[str, float]  # |sum_t e_u[g]|
    path: list[Point] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        total = float(self.e_u.sum())
        return float(self.e_r.sum()) / total if total != 0 else math.nan

    @property
    def correlation(self) -> float:
        if len(self.e_u) < 3 or np.std(self.e_u) == 0 or np.std(self.e_r) == 0:
            return math.nan
        return float(np.corrcoef(self.e_u, self.e_r)[0, 1])


Runs = dict[tuple[str, str, int], RunQuantities]  # (method label, forget split, seed) -> quantities


def run_quantities(study_dir: Path, entry: ManifestEntry, path: list[Point]) -> RunQuantities | None:
    records = read_run(study_dir / entry.run_dir).geffect if (study_dir / entry.run_dir).is_dir() else []
    if not records:
        return None
    e_u = np.array([effect_total(r, "e_u") for r in records], dtype=float)
    e_r = np.array([effect_total(r, "e_r") for r in records], dtype=float)
    groups = {
        g: abs(sum(float((r.get("e_u") or {}).get("groups", {}).get(g) or 0.0) for r in records)) for g in LAYER_GROUPS
    }
    keep = np.isfinite(e_u) & np.isfinite(e_r)
    return RunQuantities(e_u[keep], e_r[keep], groups, path)


def collect_runs(study_dir: Path) -> tuple[Runs, list[str]]:
    """Every run's quantities and the methods with several runs per seed (a grid: claims need one run)."""
    entries = read_manifest(study_dir)
    paths = study_paths(study_dir, entries)
    runs: Runs = {}
    repeated = set()
    for entry in entries:
        if entry.kind != "run" or not entry.run_dir:
            continue
        key = (entry.method, entry.forget_split, int(entry.seed))
        quantities = run_quantities(study_dir, entry, paths.get(entry.name, []))
        if quantities is None:
            continue
        if key in runs:
            repeated.add(entry.method)
        runs[key] = quantities
    return runs, sorted(repeated)


def _need(runs: Runs, method: str, split: str, seed: int, repeated: list[str]) -> RunQuantities:
    if method in repeated:
        raise NotComputable(f"{method} has several runs per seed (a grid); the claims need one run per method and seed")
    run = runs.get((method, split, seed))
    if run is None:
        raise NotComputable(f"the study has no run of {method} with G-effects for seed {seed}")
    return run


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator; inf for a positive numerator over 0, NaN for 0 / 0."""
    if denominator == 0:
        return math.inf if numerator > 0 else math.nan
    return float(numerator / denominator)


def _finite(value: float) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


# --- the claims: each returns (values, holds) for one (forget split, seed) ----------------------------------


def claim_mirror(get) -> tuple[dict, bool]:
    ga = get("GA")
    values = {"GA_ratio": ga.ratio, "GA_correlation": ga.correlation}
    return values, ga.ratio >= MIRROR_RATIO and ga.correlation >= MIRROR_CORRELATION


def claim_reweighted_ratio(get) -> tuple[dict, bool]:
    ga = get("GA")
    values = {"GA_ratio": ga.ratio, **{f"{m}_ratio": get(m).ratio for m in REWEIGHTED}}
    return values, all(abs(get(m).ratio) < abs(ga.ratio) for m in REWEIGHTED)


def claim_npo_smaller(get) -> tuple[dict, bool]:
    ga, npo = get("GA"), get("NPO")
    values = {
        "NPO_over_GA_A_u": _ratio(np.abs(npo.e_u).sum(), np.abs(ga.e_u).sum()),
        "NPO_over_GA_A_r": _ratio(np.abs(npo.e_r).sum(), np.abs(ga.e_r).sum()),
    }
    return values, values["NPO_over_GA_A_u"] < 1 and values["NPO_over_GA_A_r"] < 1


def claim_shallow(get, methods: list[str]) -> tuple[dict, bool]:
    values = {}
    for method in methods:
        groups = get(method).groups
        total = sum(groups.values())
        values[f"{method}_shallow_share"] = groups["shallow"] / total if total > 0 else math.nan
        values[f"{method}_shallow_largest"] = float(groups["shallow"] > max(groups["middle"], groups["deep"]))
    largest = sum(values[f"{m}_shallow_largest"] for m in methods)
    values["methods_shallow_largest"] = largest
    return values, largest > len(methods) / 2


def claim_kl_over_nll(get) -> tuple[dict, bool]:
    kl, nll = get("GA+KL"), get("GradDiff")
    if not kl.path or not nll.path:
        raise NotComputable("needs the points along the runs (eval.every)")
    level, mu_kl, mu_nll = mu_at_matched_forgetting(kl.path, nll.path)
    values = {"matched_forget_quality": level, "GA+KL_model_utility": mu_kl, "GradDiff_model_utility": mu_nll}
    return values, mu_kl > mu_nll


def claim_best_at_matched_utility(get, methods: list[str]) -> tuple[dict, bool]:
    if any(not get(m).path for m in methods):
        raise NotComputable("needs the points along the runs (eval.every)")
    values = {f"{m}_fq_at_matched_utility": fq_at_matched_utility(get(m).path) for m in methods}
    others = [values[f"{m}_fq_at_matched_utility"] for m in methods if m not in ("WGA", "WTNPO")]
    if not others:
        raise NotComputable("needs at least one method besides WGA and WTNPO")
    best_other = max(others)
    get("WGA"), get("WTNPO")  # both must exist
    holds = min(values["WGA_fq_at_matched_utility"], values["WTNPO_fq_at_matched_utility"]) > best_other
    return values, holds


@dataclass(frozen=True)
class Claim:
    id: int
    claim: str
    quantity: str
    check: Callable  # (get, methods) -> (values, holds)


CLAIMS = (
    Claim(
        1,
        "GA's retaining G-effect mirrors its unlearning one",
        f"GA's ratio rho = sum_t e_r / sum_t e_u over the run and Pearson's r of e_u and e_r over the steps; "
        f"holds when rho >= {MIRROR_RATIO} and r >= {MIRROR_CORRELATION}",
        lambda get, methods: claim_mirror(get),
    ),
    Claim(
        2,
        "WGA, TNPO and WTNPO keep the retaining G-effect closer to 0, relative to the unlearning one, than GA",
        "rho = sum_t e_r / sum_t e_u of each method; holds when |rho| of each of WGA, TNPO, WTNPO < |rho| of GA",
        lambda get, methods: claim_reweighted_ratio(get),
    ),
    Claim(
        3,
        "NPO's G-effects are smaller in magnitude than GA's",
        "A_u = sum_t |e_u| and A_r = sum_t |e_r| of NPO over those of GA; holds when both ratios < 1",
        lambda get, methods: claim_npo_smaller(get),
    ),
    Claim(
        4,
        "shallow layers take the largest share of the unlearning G-effect",
        "per method, |sum_t e_u| of the shallow, middle and deep layer groups (a third of the decoder layers each); "
        "holds when the shallow group is the largest in more than half of the study's methods",
        claim_shallow,
    ),
    Claim(
        5,
        "KL is a better regulariser than NLL (GradDiff) at matched forgetting",
        "model utility of GA+KL and GradDiff (GA + NLL) at matched forgetting: the best model utility among each "
        "run's points whose forget quality reaches the lower of the two runs' best forget qualities; holds when "
        "GA+KL's is higher",
        lambda get, methods: claim_kl_over_nll(get),
    ),
    Claim(
        6,
        "WGA and WTNPO reach the best forget quality at matched utility",
        "forget quality at matched utility: the best forget quality among a run's points whose model utility is "
        "at least 0.9 of the target's (points subset); holds when both WGA's and WTNPO's exceed every other method's",
        claim_best_at_matched_utility,
    ),
)


def check_claim(claim: Claim, runs: Runs, repeated: list[str]) -> dict:
    """One claim's entry of claims.json: its values and verdict per seed, and the count."""
    replicates = sorted({(split, seed) for _, split, seed in runs})
    entry = {"id": claim.id, "claim": claim.claim, "quantity": claim.quantity, "per_seed": []}
    try:
        if not replicates:
            raise NotComputable("the study has no run with G-effects")
        for split, seed in replicates:
            methods = sorted({m for m, s, r in runs if s == split and r == seed})
            values, holds = claim.check(lambda m, s=split, r=seed: _need(runs, m, s, r, repeated), methods)
            entry["per_seed"].append(
                {
                    "forget_split": split,
                    "seed": seed,
                    "values": {k: _finite(v) for k, v in values.items()},
                    "holds": bool(holds),
                }
            )
    except NotComputable as reason:
        return {**entry, "per_seed": [], "holds_in": None, "of": None, "verdict": f"not computable: {reason}"}
    held = sum(s["holds"] for s in entry["per_seed"])
    total = len(entry["per_seed"])
    return {**entry, "holds_in": held, "of": total, "verdict": f"holds in {held} of {total} seeds"}


def compute_claims(study_dir: str | Path) -> dict:
    runs, repeated = collect_runs(Path(study_dir))
    return {"claims": [check_claim(claim, runs, repeated) for claim in CLAIMS]}


def write_claims(study_dir: str | Path) -> Path:
    """claims.json in the study folder, from its files; returns its path."""
    study_dir = Path(study_dir)
    return atomic_write_json(study_dir / CLAIMS_FILE, compute_claims(study_dir))


def claims_markdown(claims: dict) -> str:
    """The claims as a Markdown section: claim, quantity, verdict, and the values per seed."""
    lines = ["## The paper's claims (claims.json)", ""]
    for claim in claims["claims"]:
        lines.append(f"{claim['id']}. **{claim['claim']}**: {claim['verdict']}. Quantity: {claim['quantity']}.")
        for seed in claim["per_seed"]:
            values = ", ".join(f"{k} {_short(v)}" for k, v in seed["values"].items())
            verdict = "holds" if seed["holds"] else "does not hold"
            lines.append(f"   - {seed['forget_split']} seed {seed['seed']}: {verdict} ({values})")
    return "\n".join(lines) + "\n"


def _short(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"
