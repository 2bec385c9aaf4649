"""What the figures of a run (geffect_plots) and of a study (compare) share: the Agg backend, axis labels,
series against step, the zero line and atomic PNG writing (geffect_plots' docstring explains the unit nat²)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from geffect.reports.runfiles import as_float

EFFECT_LABEL = {"e_u": "unlearning G-effect e_u (forget set)", "e_r": "retaining G-effect e_r (retain set)"}
EFFECT_UNIT = "G-effect (nat²)"
STEP_LABEL = "optimizer step"


def use_agg():
    """matplotlib with the non-interactive Agg backend (no display on servers and in tests)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def step_series(records: list[dict], getter: Callable[[dict], float]) -> tuple[np.ndarray, np.ndarray]:
    """(step, getter(record)) of every record as two float arrays (NaN where a value is missing)."""
    steps = np.array([as_float(r.get("step")) for r in records], dtype=float)
    values = np.array([getter(r) for r in records], dtype=float)
    return steps, values


def save_figure(fig, path: Path) -> Path:
    """Write `fig` to the PNG file `path` (creating its folder) and close it; returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    tmp.replace(path)  # atomic: a reader never sees half a PNG
    use_agg().close(fig)
    return path


def zero_line(ax) -> None:
    """A dotted y = 0 line (the sign of a G-effect is what matters) and whole-number steps on the x axis."""
    from matplotlib.ticker import MaxNLocator

    ax.axhline(0.0, color="0.5", linewidth=0.8, linestyle=":")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
