"""`geffect methods [--preset NAME] [--json]`: every unlearning method with its effective defaults under a preset.

The numbers come from the one table in geffect/objectives/presets.py (docs/presets.md shows the three side by side).
"""

from __future__ import annotations

import argparse
import json

from geffect.objectives.presets import DEFAULT_PRESET, PRESETS, check_preset, effective_defaults

HELP = "list the unlearning methods and their defaults under a preset (geffect, openunlearning, paper)"


def register(subparsers) -> None:
    parser = subparsers.add_parser("methods", help=HELP, description=HELP)
    parser.add_argument(
        "--preset", default=DEFAULT_PRESET, metavar="{" + ",".join(PRESETS) + "}", help="the preset (default geffect)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per method, one a line")
    parser.add_argument(
        "--markdown", action="store_true", help="the three presets side by side, with sources (docs/presets.md)"
    )
    parser.set_defaults(func=run)


def method_table(preset: str) -> list[dict]:
    """The effective defaults of every registered method under `preset`, in registry order."""
    from geffect.objectives import method_names

    check_preset(preset)
    return [effective_defaults(preset, name) for name in method_names()]


def _line(row: dict) -> str:
    hparams = " ".join(f"{key}={value:g}" for key, value in row["hparams"].items()) or "-"
    return (
        f"{row['method']:<11} gamma={row['gamma']:g} alpha={row['alpha']:g} retain={row['retain_loss']:<5} "
        f"kl_mask={row['kl_mask']:<6} {hparams}  [{row['source']}]"
    )


def _cell(row: dict) -> str:
    hparams = ", ".join(f"{key} {value:g}" for key, value in row["hparams"].items())
    return f"{row['retain_loss']}, γ {row['gamma']:g}, α {row['alpha']:g}" + (f"; {hparams}" if hparams else "")


def markdown_tables() -> str:
    """The three presets side by side, then the source of each reference's numbers (docs/presets.md holds it)."""
    tables = {preset: method_table(preset) for preset in PRESETS}
    lines = ["| method | " + " | ".join(f"`{p}`" for p in PRESETS) + " |", "|---|" + "---|" * len(PRESETS)]
    for index, row in enumerate(tables[DEFAULT_PRESET]):
        lines.append(f"| {row['method']} | " + " | ".join(_cell(tables[p][index]) for p in PRESETS) + " |")
    lines += ["", "| method | source of `openunlearning` | source of `paper` |", "|---|---|---|"]
    for ou, paper in zip(tables["openunlearning"], tables["paper"]):
        lines.append(f"| {ou['method']} | {ou['source']} | {paper['source']} |")
    kl = {p: tables[p][0]["kl_mask"] for p in PRESETS}
    lines += ["", "KL retain term averaged over: " + ", ".join(f"`{p}` {kl[p]}" for p in PRESETS) + "."]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    if args.markdown:
        print(markdown_tables(), end="")
        return 0
    rows = method_table(args.preset)
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(f"preset {args.preset}: defaults a run gets unless it sets them (--retain-loss, --gamma, --hparam ...)")
    for row in rows:
        print(_line(row))
    return 0
