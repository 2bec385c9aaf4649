"""The code's shape, read with `ast` (no imports of geffect, no timing, no network).

- src/geffect/effects/tracker.py stays small (at most 250 lines) and does not branch on the estimator's name:
  no comparison involves the string "batch", "ema" or "full" (each estimator owns its behaviour instead);
- no function or method anywhere under src/ is longer than 80 lines;
- no geffect module imports a private name (one leading underscore, not a dunder) from another geffect module.

Each check is a function from source text to a list of offenders, tried first on small synthetic sources
(so a check that finds nothing cannot pass vacuously), then on the tree; a failure lists every offender.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "geffect"
TRACKER = PACKAGE / "effects" / "tracker.py"
TRACKER_MAX_LINES = 250
ESTIMATOR_NAMES = frozenset({"batch", "ema", "full"})
FUNCTION_MAX_LINES = 80


def _sources(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _where(path: Path) -> str:
    return str(path.relative_to(SRC.parent)) if path.is_relative_to(SRC.parent) else str(path)


# ---- the checks: source text -> offenders --------------------------------------------------------------------


def line_count(source: str) -> int:
    return len(source.splitlines())


def estimator_name_comparisons(source: str) -> list[str]:
    """'line N: <comparison>' for every comparison with "batch", "ema" or "full" as one of its operands
    (also inside a tuple/list/set operand, as in `x in ("ema", "full")`), and every `case "ema":` of a match."""
    offenders = []
    compares = [node for node in ast.walk(ast.parse(source)) if isinstance(node, (ast.Compare, ast.MatchValue))]
    for node in sorted(compares, key=lambda n: (n.lineno, n.col_offset)):
        operands = [node.left, *node.comparators] if isinstance(node, ast.Compare) else [node.value]
        constants = [
            sub.value
            for operand in operands
            for sub in ([operand, *operand.elts] if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand])
            if isinstance(sub, ast.Constant) and isinstance(sub.value, str)
        ]
        if ESTIMATOR_NAMES.intersection(constants):
            offenders.append(f"line {node.lineno}: {ast.unparse(node)}")
    return offenders


def long_functions(source: str, limit: int = FUNCTION_MAX_LINES) -> list[str]:
    """'Qualified.name (line N): L lines' for every function or method longer than `limit` lines
    (end_lineno - lineno + 1, decorators not counted; nested functions are checked on their own too)."""
    offenders = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                length = child.end_lineno - child.lineno + 1
                if length > limit:
                    offenders.append(f"{name} (line {child.lineno}): {length} lines")
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return offenders


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(source: str) -> list[str]:
    """'line N: from X import _y' for every private name imported from a geffect module: absolute imports from
    geffect or geffect.*, and every relative import (`from . import _y`, `from .x import _y`)."""
    offenders = []
    imports = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)]
    for node in sorted(imports, key=lambda n: (n.lineno, n.col_offset)):
        module = node.module or ""
        if not (node.level > 0 or module == "geffect" or module.startswith("geffect.")):
            continue
        for alias in node.names:
            if _is_private(alias.name):
                offenders.append(f"line {node.lineno}: from {'.' * node.level}{module} import {alias.name}")
    return offenders


# ---- the checks on synthetic sources: each finds what it must and nothing else -----------------------------

GOOD_TRACKER = """
MODE = "ema"
def step(estimator, reduce):
    names = ("batch", "ema")
    if estimator.replays and reduce != "mean":
        return estimator.reduce(MODE)
    return {"full": 1}.get(names[0])
"""
BAD_TRACKER = """
def step(mode, estimator):
    if mode == "batch":
        return 1
    if "ema" != mode or estimator.name in ("full", "other"):
        return 2
    match mode:
        case "full" | "x":
            return 3
    return mode not in ["x"] and mode is not None
"""
GOOD_MODULE = """
from __future__ import annotations
from geffect.data import tofu
from geffect.io import write_json as _write_json
from .config import Config, __version__
from os.path import _private_but_not_ours
class A:
    def method(self):
        return 1
"""
BAD_MODULE = """
from geffect.effects.engine import item_effects, _replay
from . import _helpers
from ..io import _atomic as atomic
"""


def _function_of(lines: int, name: str = "f", indent: str = "") -> str:
    body = "".join(f"{indent}    x{i} = {i}\n" for i in range(lines - 2))
    return f"{indent}def {name}():\n{body}{indent}    return 0\n"


def test_checks_find_offenders_in_synthetic_sources():
    assert estimator_name_comparisons(GOOD_TRACKER) == []
    assert estimator_name_comparisons(BAD_TRACKER) == [
        "line 3: mode == 'batch'",
        "line 5: 'ema' != mode",
        "line 5: estimator.name in ('full', 'other')",
        "line 8: 'full'",
    ]
    assert private_imports(GOOD_MODULE) == []
    assert private_imports(BAD_MODULE) == [
        "line 2: from geffect.effects.engine import _replay",
        "line 3: from . import _helpers",
        "line 4: from ..io import _atomic",
    ]
    assert long_functions(GOOD_MODULE) == [] and long_functions(_function_of(80)) == []
    assert long_functions(_function_of(81)) == ["f (line 1): 81 lines"]
    in_class = "class C:\n" + _function_of(90, "run", indent="    ") + _function_of(5, "ok", indent="    ")
    assert long_functions(in_class) == ["C.run (line 2): 90 lines"]
    assert line_count("a = 1\n" * 251) == 251


# ---- the checks on the tree --------------------------------------------------------------------------------


def test_sources_are_found():
    assert TRACKER.is_file()
    assert len(_sources(PACKAGE)) > 20


def test_tracker_is_at_most_250_lines():
    lines = line_count(TRACKER.read_text(encoding="utf-8"))
    assert lines <= TRACKER_MAX_LINES, f"{_where(TRACKER)} has {lines} lines (at most {TRACKER_MAX_LINES})"


def test_tracker_does_not_compare_estimator_names():
    offenders = estimator_name_comparisons(TRACKER.read_text(encoding="utf-8"))
    assert not offenders, f"{_where(TRACKER)} compares estimator names:\n" + "\n".join(offenders)


def test_no_function_is_longer_than_80_lines():
    offenders = [
        f"{_where(path)}: {offender}"
        for path in _sources(SRC)
        for offender in long_functions(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, f"{len(offenders)} function(s) longer than {FUNCTION_MAX_LINES} lines:\n" + "\n".join(
        offenders
    )


def test_no_private_name_is_imported_across_geffect_modules():
    offenders = [
        f"{_where(path)}: {offender}"
        for path in _sources(PACKAGE)
        for offender in private_imports(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, f"{len(offenders)} import(s) of a private geffect name:\n" + "\n".join(offenders)
