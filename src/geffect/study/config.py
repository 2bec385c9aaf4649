"""The study configuration (YAML): schema, shorthands, validation and path resolution.

A study = a benchmark, a target model, a reference (retain model or its evaluation log) per forget split,
and a list of methods, each with fixed hyper-parameters and a grid. Every forget split x method x grid
point x seed is one unlearning run. See examples/*.yaml for annotated configurations.

Relative paths in a configuration file are relative to the file's folder. A string is a local path when it
starts with `.`, `/` or `~` or names something that exists; otherwise it is a Hugging Face hub id.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from geffect.data.tofu import FORGET_SPLITS
from geffect.effects.config import TrackerConfig
from geffect.errors import UsageError
from geffect.io import yaml_load_unique
from geffect.models.validate import HUB_ID
from geffect.options import check, default_of, from_mapping, section_fields, section_values
from geffect.schema import build, convert, fail
from geffect.study.along import StudyEval
from geffect.study.relearn import RelearnSection
from geffect.training.config import UnlearnConfig
from geffect.training.finetune_config import FinetuneConfig

TINY = "tiny"


@dataclass
class BuiltinBenchmark:
    authors: int = 100
    seed: int = 0


@dataclass
class BenchmarkSection:
    """Exactly one of `builtin` (generated into the study folder) or `source` (TOFU folder or hub id)."""

    builtin: BuiltinBenchmark | None = None
    source: str | None = None
    # With `source`: cut it to the forget split's authors plus the first N retain authors (geffect data slice),
    # written into the study folder; for small machines.
    retain_authors: int | None = None


@dataclass
class ModelSection:
    """`base` is what the study fine-tunes from (`tiny` = built from scratch); `target` is the model to unlearn
    (None: fine-tune `base` on `full`); per forget split, the reference is `retain_logs[split]` (an evaluation
    log file), else the model `retain[split]`, else `base` fine-tuned on the split's retain set."""

    base: str = TINY
    target: str | None = None
    retain: dict[str, str] = field(default_factory=dict)
    retain_logs: dict[str, str] = field(default_factory=dict)
    dtype: str | None = None  # dtype the weights are loaded in for evaluation and unlearning
    finetune: dict[str, Any] = field(default_factory=dict)  # FinetuneConfig options of the models it fine-tunes


@dataclass
class MethodSection:
    """One method: `method` is a spec like "NPO" or "NPO+KL"; `params` fixed hyper-parameters (incl. gamma,
    alpha); `grid` hyper-parameter -> list of values (every combination is a run); `training` overrides of the
    study's training options for this method; `name` the label in tables (default: the spec)."""

    method: str
    retain_loss: str | None = None
    name: str | None = None
    params: dict[str, float] = field(default_factory=dict)
    grid: dict[str, list[float]] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    # the update rule of this method's runs (geffect.updates), shorthands of training.update / update_params
    update: str | None = None
    update_params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Tracking:
    """A study's `geffect:` section: whether to track (default yes) and the tracker's options."""

    enabled: bool = True
    tracker: TrackerConfig = field(default_factory=TrackerConfig)

    @classmethod
    def from_section(cls, data: Any, path: str) -> "Tracking":
        data = dict(data) if isinstance(data, dict) else data  # a copy: `enabled` is taken out
        enabled = convert(bool, data.pop("enabled", True), f"{path}.enabled") if isinstance(data, dict) else True
        tracker = from_mapping(TrackerConfig, data, path)
        check(tracker, path, by_key=True)
        return cls(enabled, tracker)

    def to_section(self) -> dict:
        return {"enabled": self.enabled, **dataclasses.asdict(self.tracker)}


@dataclass
class StudyConfig:
    name: str = "study"
    benchmark: BenchmarkSection = field(default_factory=lambda: BenchmarkSection(builtin=BuiltinBenchmark()))
    model: ModelSection = field(default_factory=ModelSection)
    template: str | None = None  # None: chosen from the model name (phi, llama2, plain)
    methods: list[MethodSection] = field(default_factory=list)
    forget_splits: list[str] = field(default_factory=lambda: ["forget10"])
    seeds: list[int] = field(default_factory=lambda: [0])
    training: dict[str, Any] = field(default_factory=dict)  # UnlearnConfig options of every unlearning run
    geffect: Tracking = field(default_factory=Tracking)
    eval: StudyEval = field(default_factory=StudyEval)  # EvalConfig + the points along each run
    relearn: RelearnSection | None = None  # the relearning attack after each run (geffect.study.relearn)
    # On a CPU-only machine run independent stages (the fine-tunes, then the unlearning runs, then their
    # evaluations) side by side, one process per core: small models barely gain from a second thread.
    side_by_side: bool = True

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["geffect"] = self.geffect.to_section()
        return values

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


# --- loading -------------------------------------------------------------------------------------------


def load_config(path: str | Path) -> StudyConfig:
    """Read, validate and resolve a study YAML file (UsageError naming the key path on bad input)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(
            f"study configuration {path} does not exist; pass a YAML file such as examples/builtin-cpu.yaml"
        )
    try:
        data = yaml_load_unique(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"{path} is not valid YAML{where}: {getattr(err, 'problem', None) or err}") from None
    return parse_config(data, base_dir=path.parent)


def parse_config(data: Any, base_dir: str | Path = ".") -> StudyConfig:
    if not isinstance(data, dict):
        raise fail("", "a study configuration is a mapping with keys such as benchmark, model, methods")
    data = _expand_shorthands(data)
    config = build(StudyConfig, data)
    config = _checked_sections(config)
    validate(config)
    config = resolve_paths(config, Path(base_dir))
    check_benchmark_source(config.benchmark.source)
    return config


def check_benchmark_source(source: str | None) -> None:
    """A benchmark source is an existing folder or a hub id (owner/name); a missing folder fails here, in
    --dry-run too, not after the stages have started."""
    if source is None or Path(source).exists():
        return
    if source.startswith("/") or not HUB_ID.match(source):
        raise fail(
            "benchmark.source", f"folder {source} does not exist; pass a TOFU folder or a hub id such as locuslab/TOFU"
        )


def _expand_shorthands(data: dict) -> dict:
    """`benchmark: builtin` / `benchmark: locuslab/TOFU`, `model: tiny` / `model: HUB_ID`, `methods: [GA, ...]`."""
    data = dict(data)
    benchmark = data.get("benchmark")
    if isinstance(benchmark, str):
        data["benchmark"] = {"builtin": {}} if benchmark == "builtin" else {"source": benchmark}
    elif isinstance(benchmark, dict) and benchmark.get("builtin") is True:
        data["benchmark"] = {**benchmark, "builtin": {}}
    if isinstance(data.get("model"), str):
        data["model"] = {"base": data["model"]} if data["model"] == TINY else {"target": data["model"]}
    if isinstance(data.get("methods"), list):
        data["methods"] = [{"method": m} if isinstance(m, str) else m for m in data["methods"]]
    return data


# --- validation ------------------------------------------------------------------------------------------


def _checked_sections(config: StudyConfig) -> StudyConfig:
    """The option sections converted and checked against their declarations (UnlearnConfig for `training`
    and each method's `training`, FinetuneConfig for `model.finetune`, StudyEval for `eval`)."""
    check(config.eval, "eval", by_key=True)
    methods = [
        dataclasses.replace(m, training=section_values(UnlearnConfig, _with_update(m, i), f"methods[{i}].training"))
        for i, m in enumerate(config.methods)
    ]
    finetune = section_values(FinetuneConfig, config.model.finetune, "model.finetune")
    return dataclasses.replace(
        config,
        training=section_values(UnlearnConfig, config.training, "training"),
        methods=methods,
        model=dataclasses.replace(config.model, finetune=finetune),
    )


def _with_update(method: MethodSection, index: int) -> dict:
    """The method's training overrides with its `update` / `update_params` folded in (checked with them)."""
    from geffect.updates import resolve_params

    training = dict(method.training or {})
    if method.update is not None:
        training["update"] = method.update
    if method.update_params:
        training["update_params"] = method.update_params
    if "update" in training or "update_params" in training:
        _reraise(
            f"methods[{index}].update", resolve_params, training.get("update", "plain"), training.get("update_params")
        )
    return training


def _check_slice(config: StudyConfig) -> None:
    n = config.benchmark.retain_authors
    if n is None:
        return
    if config.benchmark.source is None:
        raise fail("benchmark.retain_authors", "slices a TOFU source: give benchmark.source with it")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise fail("benchmark.retain_authors", f"needs a whole number of authors >= 1, got {n!r}")
    if len(config.forget_splits) != 1:
        raise fail("benchmark.retain_authors", "a slice is cut for one forget split; list exactly one in forget_splits")


def validate(config: StudyConfig) -> None:
    """Checks that need more than types; each UsageError names the key path."""
    bench = config.benchmark
    if (bench.builtin is None) == (bench.source is None):
        raise fail(
            "benchmark",
            "give exactly one of builtin (e.g. {authors: 100, seed: 0}) or source (a TOFU folder or hub id)",
        )
    if bench.builtin is not None and bench.builtin.authors < 10:
        raise fail(
            "benchmark.builtin.authors",
            f"needs at least 10 authors (forget01 is 1% of them), got {bench.builtin.authors}",
        )
    _check_list("forget_splits", config.forget_splits, FORGET_SPLITS)
    _check_slice(config)
    if not config.seeds:
        raise fail("seeds", "give at least one seed")
    if len(set(config.seeds)) != len(config.seeds):
        raise fail("seeds", "seeds repeat")
    if not config.methods:
        raise fail("methods", "give at least one method, e.g. [GA, NPO+KL]")
    for key in ("retain", "retain_logs"):
        for split in getattr(config.model, key):
            if split not in config.forget_splits:
                raise fail(
                    f"model.{key}.{split}", f"not one of the study's forget_splits ({', '.join(config.forget_splits)})"
                )
    if config.template is not None:
        from geffect.data.templates import get_template

        _reraise("template", get_template, config.template)
    if config.model.dtype is not None:
        from geffect.models.loading import resolve_dtype

        _reraise("model.dtype", resolve_dtype, config.model.dtype)
    for index, method in enumerate(config.methods):
        _check_method(method, f"methods[{index}]")


def _check_list(path: str, values: list[str], allowed: tuple[str, ...]) -> None:
    if not values:
        raise fail(path, f"give at least one of {', '.join(allowed)}")
    for index, value in enumerate(values):
        if value not in allowed:
            raise fail(f"{path}[{index}]", f"unknown value {value!r}; choose one of {', '.join(allowed)}")
    if len(set(values)) != len(values):
        raise fail(path, "values repeat")


def _reraise(path: str, check, *args):
    try:
        return check(*args)
    except UsageError as err:
        raise fail(path, str(err)) from None


def method_spec(method: MethodSection, path: str) -> tuple[str, str | None]:
    """(method name, retain loss or None) of a method entry, from "NPO+KL" or `method` + `retain_loss`."""
    from geffect.objectives import parse_method_spec

    name, retain = _reraise(f"{path}.method", parse_method_spec, method.method)
    if method.retain_loss is not None:
        if retain is not None:
            raise fail(f"{path}.retain_loss", f"given twice: in method {method.method!r} and as retain_loss; keep one")
        _, retain = _reraise(f"{path}.retain_loss", parse_method_spec, f"{name}+{method.retain_loss}")
    return name, retain


def hyperparameter_names(method: str, retain: str | None) -> set[str]:
    """gamma, alpha and the method's and its retain loss's hyper-parameters."""
    from geffect.objectives.registry import get_method, get_retain_loss

    entry = get_method(method)
    loss = get_retain_loss(retain if retain is not None else entry.default_retain)
    return {"gamma", "alpha", *entry.hparams, *loss.hparams}


def _check_method(method: MethodSection, path: str) -> None:
    name, retain = method_spec(method, path)
    known = hyperparameter_names(name, retain)
    for key in ("params", "grid"):
        for hparam in getattr(method, key):
            if hparam not in known:
                raise fail(
                    f"{path}.{key}.{hparam}",
                    f"unknown hyper-parameter of {method.method}; known: {', '.join(sorted(known))}",
                )
    for hparam, values in method.grid.items():
        if not values:
            raise fail(f"{path}.grid.{hparam}", "a grid needs at least one value")
        if len(set(values)) != len(values):
            raise fail(f"{path}.grid.{hparam}", "grid values repeat")
        if hparam in method.params:
            raise fail(f"{path}.grid.{hparam}", "also fixed in params; keep one")
    if method.name is not None and not method.name.strip():
        raise fail(f"{path}.name", "must not be empty")


def training_options(config: StudyConfig, method_index: int) -> dict[str, Any]:
    """Every training option of a method's runs: UnlearnConfig's defaults, the study's `training`, then the
    method's own overrides (both checked already)."""
    defaults = {f.name: default_of(f) for f in section_fields(UnlearnConfig)}
    return {**defaults, **config.training, **config.methods[method_index].training}


# --- paths -----------------------------------------------------------------------------------------------


def is_local_path(value: str, base_dir: Path) -> bool:
    return value.startswith((".", "/", "~")) or (base_dir / value).exists()


def resolve(value: str | None, base_dir: Path) -> str | None:
    """An absolute path for local paths (relative ones against `base_dir`), hub ids and `tiny` unchanged."""
    if value is None or value == TINY or not is_local_path(value, base_dir):
        return value
    return str((base_dir / Path(value).expanduser()).resolve())


def resolve_paths(config: StudyConfig, base_dir: Path) -> StudyConfig:
    model = config.model
    return dataclasses.replace(
        config,
        benchmark=dataclasses.replace(config.benchmark, source=resolve(config.benchmark.source, base_dir)),
        model=dataclasses.replace(
            model,
            base=resolve(model.base, base_dir),
            target=resolve(model.target, base_dir),
            retain={split: resolve(value, base_dir) for split, value in model.retain.items()},
            retain_logs={
                split: str((base_dir / Path(v).expanduser()).resolve()) for split, v in model.retain_logs.items()
            },
        ),
    )
