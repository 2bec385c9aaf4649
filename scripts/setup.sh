#!/usr/bin/env bash
# Creates or reuses .venv in the repository root and installs geffect into it (editable, with test extras).
# torch is pinned to 2.13.0 first: on CPU-only machines that carry the wheel locally it installs in seconds,
# elsewhere pip takes PyPI's build (CUDA-enabled on Linux). Set GEFFECT_TORCH_SPEC to choose another torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    .venv/bin/pip install -q --disable-pip-version-check "${GEFFECT_TORCH_SPEC:-torch==2.13.0}"
fi
if ! .venv/bin/python -c "import geffect, pytest" >/dev/null 2>&1 || [ pyproject.toml -nt .venv/.geffect-installed ]; then
    .venv/bin/pip install -q --disable-pip-version-check -e ".[test]"
    touch .venv/.geffect-installed
fi
