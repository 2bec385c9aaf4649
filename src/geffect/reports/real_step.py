"""The real-step prediction figure of a run (RUN/figures/real_step.png): the forget risk's change predicted
from the plain-gradient G-effect (-sum lr e_u) and from the update the optimizer applied (-sum lr u_u)
against the measured change of the risk the tracker logged (exact for the `full` estimator, whose forget set
is fixed; the step's own batch, so noisy, for `batch`). Drawn for runs tracked with `applied`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geffect.reports.figures import STEP_LABEL, save_figure, use_agg, zero_line
from geffect.runfolder import RunFolder

FIGURE = "real_step.png"


def plot_real_step(run_dir: str | Path) -> Path | None:
    folder = RunFolder(run_dir)
    records = [r for r in folder.read_geffect() if "applied" in r]
    if len(records) < 2:
        return None
    steps = np.array([r["step"] for r in records], dtype=float)
    by_e = np.array([r["predicted_change"]["e_u"] for r in records], dtype=float)
    by_u = np.array([r["applied"]["predicted_change"]["u_u"] for r in records], dtype=float)
    risk = np.array([np.nan if r.get("risk_u") is None else r["risk_u"] for r in records], dtype=float)
    # risk_u of record t is measured at theta_{t-1}: the change after step t is risk[t+1] - risk[first]
    measured = risk[1:] - risk[0]
    estimator = records[0].get("estimator", "")
    plt = use_agg()
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    ax.plot(steps, by_e, label="-sum lr e_u (plain gradient)", color="tab:orange")
    ax.plot(steps, by_u, label="-sum lr u_u (applied update)", color="tab:blue")
    ax.plot(steps[:-1], measured, "k.", label=f"measured ({estimator} estimator)")
    zero_line(ax)
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel("change of the forget risk")
    ax.legend(fontsize=7)
    return save_figure(fig, folder.figures_dir / FIGURE)
