"""The G-effect figures of one unlearning run, drawn from `RUN/geffect.jsonl` and `RUN/log.jsonl`.

Sign convention (DESIGN section 3): e(D) = ∇R(D)ᵀ∇L_u, so e_u < 0 removes knowledge and e_r ≥ 0 keeps the
retained data; a step of size η changes the risk by about -η·e. The G-effect is a product of two gradients
of losses measured in nats, hence its unit nat² per (parameter unit)²; the figures write "nat²" for short.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

from geffect.reports.figures import EFFECT_LABEL, EFFECT_UNIT, STEP_LABEL, save_figure, step_series, use_agg, zero_line
from geffect.reports.runfiles import (
    EFFECT_KEYS,
    GROUPS,
    RunFiles,
    as_float,
    effect_total,
    ema_total,
    item_contributions,
    item_weights,
    objective_items,
    predicted_change,
    read_run,
    side_risk,
)
from geffect.runfolder import RunFolder

WEIGHT_BINS = 5


def plot_totals(run: RunFiles, path: Path) -> Path | None:
    """e_u and e_r against step, one panel each (their scales differ by orders of magnitude)."""
    if not run.geffect:
        return None
    plt = use_agg()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True, layout="constrained")
    for ax, key in zip(axes, EFFECT_KEYS):
        steps, values = step_series(run.geffect, lambda r, k=key: effect_total(r, k))
        ax.plot(steps, values, marker=".", label=f"{key} (estimator: {run.geffect[-1].get('estimator', 'batch')})")
        steps_ema, ema = step_series(run.geffect, lambda r, k=key: ema_total(r, k))
        if np.isfinite(ema).any():
            ax.plot(steps_ema, ema, linestyle="--", label=f"{key}, EMA of gradients (paper)")
        zero_line(ax)
        ax.set(xlabel=STEP_LABEL, ylabel=EFFECT_UNIT, title=EFFECT_LABEL[key])
        ax.legend(fontsize=8)
    fig.suptitle(f"{run.name}: G-effects per step")
    return save_figure(fig, path)


def plot_groups(run: RunFiles, path: Path) -> Path | None:
    """Per parameter group (embed, shallow, middle, deep, lm_head, other) against step."""
    if not run.geffect or not any(isinstance(r.get("e_u"), dict) and r["e_u"].get("groups") for r in run.geffect):
        return None
    plt = use_agg()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True, layout="constrained")
    for ax, key in zip(axes, EFFECT_KEYS):
        for group in GROUPS:
            steps, values = step_series(
                run.geffect, lambda r, k=key, g=group: as_float(((r.get(k) or {}).get("groups") or {}).get(g))
            )
            if np.isfinite(values).any():
                ax.plot(steps, values, label=group)
        zero_line(ax)
        ax.set(xlabel=STEP_LABEL, ylabel=EFFECT_UNIT, title=f"{key} per parameter group")
        ax.legend(fontsize=8, ncol=2)
    fig.suptitle(f"{run.name}: G-effects per group (shallow/middle/deep = thirds of the decoder layers)")
    return save_figure(fig, path)


def _layer_matrix(records: list[dict], key: str) -> np.ndarray | None:
    rows = [((r.get(key) or {}).get("layers") or []) for r in records]
    width = max((len(row) for row in rows), default=0)
    if width == 0:
        return None
    matrix = np.full((width, len(rows)), np.nan)
    for column, row in enumerate(rows):
        matrix[: len(row), column] = [as_float(v) for v in row]
    return matrix


def plot_layer_heatmap(run: RunFiles, path: Path) -> Path | None:
    """Decoder layers x measured steps, coloured by the layer's G-effect (diverging map centred on 0)."""
    from matplotlib.colors import TwoSlopeNorm

    matrices = {key: _layer_matrix(run.geffect, key) for key in EFFECT_KEYS}
    if all(m is None for m in matrices.values()):
        return None
    plt = use_agg()
    steps = [
        int(as_float(r.get("step"))) if math.isfinite(as_float(r.get("step"))) else i for i, r in enumerate(run.geffect)
    ]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    for ax, key in zip(axes, EFFECT_KEYS):
        matrix = matrices[key]
        if matrix is None or not np.isfinite(matrix).any():
            ax.set_axis_off()
            continue
        bound = float(np.nanmax(np.abs(matrix))) or 1.0
        image = ax.imshow(
            matrix,
            aspect="auto",
            origin="lower",
            cmap="RdBu_r",
            interpolation="nearest",
            norm=TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound),
            extent=(-0.5, len(steps) - 0.5, -0.5, matrix.shape[0] - 0.5),
        )
        ticks = np.linspace(0, len(steps) - 1, num=min(len(steps), 8)).round().astype(int)
        ax.set_xticks(ticks, [str(steps[t]) for t in ticks])
        ax.set_yticks(range(matrix.shape[0]))
        ax.set(xlabel=STEP_LABEL, ylabel="decoder layer index", title=f"{key} per decoder layer")
        fig.colorbar(image, ax=ax, label=EFFECT_UNIT)
    fig.suptitle(f"{run.name}: G-effects per layer and step")
    return save_figure(fig, path)


def instance_points(records: list[dict], side: str) -> list[tuple[float, str, float, float]]:
    """(step, item id, contribution c_i, objective weight or NaN) for every logged item of `side`."""
    points = []
    for record in records:
        step = as_float(record.get("step"))
        weights = item_weights(record) if side == "u" else {}
        for item, value in item_contributions(record, side).items():
            points.append((step, item, value, weights.get(item, math.nan)))
    return points


def weight_bins(weights: np.ndarray, count: int = WEIGHT_BINS) -> tuple[np.ndarray, np.ndarray]:
    """(bin index per finite weight, bin edges): equal-width bins between the smallest and largest weight."""
    low, high = float(np.nanmin(weights)), float(np.nanmax(weights))
    edges = np.linspace(low, high, count + 1) if high > low else np.array([low, low])
    index = np.clip(np.searchsorted(edges, weights, side="right") - 1, 0, max(len(edges) - 2, 0))
    return index, edges


def _scatter_by_weight(plt, ax, x: np.ndarray, y: np.ndarray, weights: np.ndarray, size: int) -> None:
    """Forget items as points, one colour per objective-weight bin (NaN weight: an unweighted objective)."""
    finite = np.isfinite(weights)
    if finite.any():
        bins, edges = weight_bins(weights[finite])
        colours = plt.get_cmap("viridis")(np.linspace(0, 1, max(len(edges) - 1, 1)))
        for b, colour in enumerate(colours):
            mask = bins == b
            if mask.any():
                ax.scatter(
                    x[finite][mask],
                    y[finite][mask],
                    s=size,
                    color=colour,
                    alpha=0.7,
                    label=f"weight in [{edges[b]:.3g}, {edges[min(b + 1, len(edges) - 1)]:.3g}]",
                )
    if (~finite).any():
        ax.scatter(
            x[~finite], y[~finite], s=size, color="tab:blue", alpha=0.6, label="forget item (unweighted objective)"
        )
    ax.legend(fontsize=7, title="objective weight of the item" if finite.any() else None, title_fontsize=8)


def plot_instances(run: RunFiles, path: Path) -> Path | None:
    """Per-item G-effects (instance level): forget items' shares of e_u coloured by the objective's weight
    bin, and retain items' shares of e_r, one point per (item, measured step)."""
    forget, retain = instance_points(run.geffect, "u"), instance_points(run.geffect, "r")
    if not forget and not retain:
        return None
    plt = use_agg()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    ax = axes[0]
    if forget:
        steps, values, weights = (np.array([p[i] for p in forget], dtype=float) for i in (0, 2, 3))
        _scatter_by_weight(plt, ax, steps, values, weights, size=8)
    zero_line(ax)
    ax.set(xlabel=STEP_LABEL, ylabel="item's share of e_u (nat²)", title="forget items: unlearning PG-effects")
    ax = axes[1]
    if retain:
        ax.scatter(
            [p[0] for p in retain], [p[2] for p in retain], s=8, color="tab:orange", alpha=0.6, label="retain item"
        )
        ax.legend(fontsize=7)
    zero_line(ax)
    ax.set(xlabel=STEP_LABEL, ylabel="item's share of e_r (nat²)", title="retain items: retaining PG-effects")
    fig.suptitle(f"{run.name}: instance-wise G-effects (each set's items sum to its G-effect)")
    return save_figure(fig, path)


def plot_instance_scatter(run: RunFiles, path: Path) -> Path | None:
    """The paper's instance scatter: every forget item of every measured step at (its part of the unlearning
    G-effect, its part of the retaining G-effect), coloured by the objective's weight bin for the item."""
    points = []
    for record in run.geffect:
        weights = item_weights(record)
        points += [(u, r, weights.get(item, math.nan)) for item, (u, r) in objective_items(record).items()]
    if not points:
        return None
    plt = use_agg()
    fig, ax = plt.subplots(figsize=(6.2, 5), layout="constrained")
    e_u, e_r, weights = (np.array([p[i] for p in points], dtype=float) for i in range(3))
    _scatter_by_weight(plt, ax, e_u, e_r, weights, size=10)
    ax.axvline(0.0, color="grey", linewidth=0.8)
    zero_line(ax)
    ax.set(
        xlabel="unlearning PG-effect ∇R(D_u)·∇L_i (nat²; < 0 removes)",
        ylabel="retaining PG-effect ∇R(D_r)·∇L_i (nat²; ≥ 0 keeps)",
        title="forget items: where each item's gradient pushes",
    )
    fig.suptitle(f"{run.name}: instance scatter ({len(points)} item-steps)")
    return save_figure(fig, path)


def measured_risk_change(run: RunFiles, side: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Measured change of a risk since the first measured step, against the step it was reached after.

    A risk logged at step t is measured before step t's update, i.e. after step t-1. The risks of
    geffect.jsonl are those of the sets the G-effects were measured on (whole sets for the `full` estimator;
    the step's batches otherwise, so the change mixes the update with batch-to-batch noise); log.jsonl's
    per-step batch risks are the fallback. Returns (steps, change, description).
    """
    log_key = {"u": "forget_risk", "r": "retain_risk"}[side]
    estimator = run.geffect[-1].get("estimator", "batch") if run.geffect else "batch"
    sources = (
        (run.geffect, lambda r: side_risk(r, side), f"measured on the {estimator} estimator's sets"),
        (run.log, lambda r: as_float(r.get(log_key)), "measured on each step's batch"),
    )
    for records, getter, what in sources:
        steps, values = step_series(records, getter)
        finite = np.isfinite(values) & np.isfinite(steps)
        if finite.sum() >= 2:
            steps, values = steps[finite], values[finite]
            return steps - 1, values - values[0], what
    return np.array([]), np.array([]), ""


def plot_predicted_vs_measured(run: RunFiles, path: Path) -> Path | None:
    """First-order prediction against the measured change of the forget and retain risks: cumulatively
    (-Σ η_t e_t, top row) and per step (-η_t e_t against the change over that step, bottom row), so that one
    sees at which steps the linear approximation holds."""
    sides = (("u", "forget set risk R(D_u)"), ("r", "retain set risk R(D_r)"))
    if not run.geffect or not any(
        np.isfinite(step_series(run.geffect, lambda r, s=s: predicted_change(r, s))[1]).any() for s, _ in sides
    ):
        return None
    plt = use_agg()
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.6), sharex=True, layout="constrained")
    for column, (side, title) in enumerate(sides):
        steps, values = step_series(run.geffect, lambda r, s=side: predicted_change(r, s))
        start = steps[0] - 1 if len(steps) else 0.0
        predicted_x, predicted = np.r_[start, steps], np.r_[0.0, values]
        m_steps, m_values, what = measured_risk_change(run, side)
        for row, (transform, kind) in enumerate(((_same, "cumulative"), (_per_step, "per step"))):
            ax = axes[row, column]
            x, y = transform(predicted_x, predicted)
            ax.plot(x, y, marker=".", label="predicted: -η·e (first order, plain gradient step)")
            if len(m_steps):
                x, y = transform(m_steps, m_values)
                ax.plot(x, y, linestyle="--", marker="x" if row else None, label=what)
            zero_line(ax)
            ax.set(
                xlabel=f"after {STEP_LABEL}",
                ylabel="Δ mean token NLL (nats)",
                title=f"{title}, {kind}",
            )
            ax.legend(fontsize=7)
    fig.suptitle(
        f"{run.name}: predicted vs measured risk change\n"
        "(the prediction assumes plain gradient steps θ' = θ - η∇L; adaptive optimizers such as AdamW step differently)"
    )
    return save_figure(fig, path)


def _same(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x, y


def _per_step(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The change over each step of a cumulative series, at the step it was reached after."""
    return x[1:], np.diff(y)


FIGURES: dict[str, Callable[[RunFiles, Path], Path | None]] = {
    "effects_vs_step": plot_totals,
    "groups_vs_step": plot_groups,
    "layer_heatmap": plot_layer_heatmap,
    "instances": plot_instances,
    "instance_scatter": plot_instance_scatter,
    "predicted_vs_measured": plot_predicted_vs_measured,
}


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write every figure the run's logs allow to `out_dir` (default RUN/figures); returns name -> PNG path."""
    run = read_run(run_dir)
    out = Path(out_dir) if out_dir is not None else RunFolder(run.path).figures_dir
    written = {}
    for name, draw in FIGURES.items():
        result = draw(run, out / f"{name}.png")
        if result is not None:
            written[name] = result
    return written
