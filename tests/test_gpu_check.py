"""benchmarks/gpu_check.py --cpu-smoke: every section of the one-GPU check runs on the CPU with a tiny model
(the figures themselves mean nothing here; on a GPU the script prints the table the README carries)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_cpu_smoke_prints_every_section(tmp_path, capsys):
    gpu_check = _load_script()
    out = tmp_path / "check.json"
    assert gpu_check.main(["--cpu-smoke", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())
    assert [row["method"] for row in results["tracking"]] == list(gpu_check.SMOKE_METHODS)
    for row in results["tracking"]:
        assert row["untracked_s"] > 0 and math.isfinite(row["tracked"]) and math.isfinite(row["instances"])
        assert f"| {row['method']} |" in printed
    # bf16 weights against fp32 on the same first step: close, but not identical (so both dtypes really ran)
    assert results["bf16"]["items"] == 4 and 0 < results["bf16"]["relative_error"] < 0.1
    assert results["speed"]["trainer_steps_per_s"] > 0 and results["speed"]["bare_steps_per_s"] > 0
    if not torch.cuda.is_available():
        assert {row["backend"]: row.get("skipped") for row in results["sharded"]} == {
            "FSDP": "needs a GPU",
            "DeepSpeed ZeRO-3": "needs a GPU",
        }
    assert "per-item G-effects bf16 vs fp32" in printed and "trainer / bare" in printed
