"""`geffect unlearn --track-geffect` (wiring, config.yaml, resume) and `geffect effects` (post-hoc, --validate)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from geffect.cli.main import build_parser, main
from geffect.cli.unlearn import build_callbacks
from geffect.cli.unlearn import unlearn_config as config_from_args
from geffect.data.collate import collate, encode_qa, pad_token_id
from geffect.data.templates import get_template
from geffect.data.tofu import load_split
from geffect.effects.posthoc import expand_checkpoints
from geffect.io import read_jsonl
from geffect.training.unlearn import unlearn
from test_training_support import tiny_paths

TRACK = ["--track-geffect", "--geffect-every", "2", "--geffect-instances"]
RECORD_KEYS = {
    "step",
    "lr",
    "estimator",
    "e_u",
    "e_r",
    "risk_u",
    "risk_r",
    "n_tokens_u",
    "n_tokens_r",
    "predicted_change",
    "seconds",
}
GROUPS = {"embed", "shallow", "middle", "deep", "lm_head", "other"}


def _unlearn_argv(data: str, model: str, out, *more: str) -> list[str]:
    # NPO with an NLL retain term: weights per item, attached risks on both sides; 4 steps of 2 forget items.
    return [
        "unlearn",
        "--model",
        model,
        "--data",
        data,
        "--out",
        str(out),
        "--method",
        "NPO",
        "--retain-loss",
        "NLL",
        "--lr",
        "1e-3",
        "--batch-size",
        "2",
        "--grad-accum",
        "1",
        "--max-steps",
        "4",
        "--save-every",
        "2",
        "--keep-checkpoints",
        "0",
        "--no-progress",
        *more,
    ]


class Crash(RuntimeError):
    pass


class CrashAt:
    retain_graph = False

    def __init__(self, step: int):
        self.step = step

    def on_train_begin(self, run):
        pass

    def after_backward(self, run, step):
        if step.step == self.step:
            raise Crash(step.step)

    def on_train_end(self, run):
        pass


def _check_effect(effect: dict, n_layers: int) -> None:
    assert set(effect["groups"]) == GROUPS and len(effect["layers"]) == n_layers
    assert math.isclose(sum(effect["groups"].values()), effect["total"], rel_tol=1e-9, abs_tol=1e-12)
    deep = sum(effect["groups"][g] for g in ("shallow", "middle", "deep"))
    assert math.isclose(sum(effect["layers"]), deep, rel_tol=1e-9, abs_tol=1e-12)


def _without_seconds(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    data, model = tiny_paths(tmp_path_factory)
    out = tmp_path_factory.mktemp("effects_cli") / "full"
    assert main(_unlearn_argv(data, model, out, *TRACK)) == 0
    return data, model, out


def test_tracked_unlearn_writes_documented_lines_and_config(tracked_run):
    _, _, run = tracked_run
    records = read_jsonl(run / "geffect.jsonl")
    assert [r["step"] for r in records] == [2, 4]  # every 2nd of 4 steps
    lrs = {r["step"]: r["lr"] for r in read_jsonl(run / "log.jsonl")}
    predicted = {"e_u": 0.0, "e_r": 0.0}
    for record in records:
        assert RECORD_KEYS | {"items_u", "items_r", "weights"} <= set(record)
        assert record["estimator"] == "batch" and record["lr"] == lrs[record["step"]]
        for side in ("u", "r"):
            _check_effect(record[f"e_{side}"], 2)
            items = record[f"items_{side}"]
            assert len(items) == 2  # batch size 2 on both sides
            assert math.isclose(sum(items.values()), record[f"e_{side}"]["total"], rel_tol=1e-6, abs_tol=1e-9)
            predicted[f"e_{side}"] += -2 * record["lr"] * record[f"e_{side}"]["total"]
            assert math.isclose(
                record["predicted_change"][f"e_{side}"], predicted[f"e_{side}"], rel_tol=1e-9, abs_tol=1e-15
            )
        assert set(record["weights"]["item"]) == set(record["items_u"])  # NPO's per-item weights
    assert records[-1]["e_u"]["total"] != records[0]["e_u"]["total"]
    config = yaml.safe_load((run / "config.yaml").read_text())
    tracking = config["geffect_tracking"]
    assert (
        tracking["track_geffect"] is True and tracking["geffect_every"] == 2 and tracking["geffect_instances"] is True
    )
    assert tracking["geffect_estimator"] == "batch"
    assert config["options"]["method"] == "NPO"  # the loop's own sections are kept


def test_resume_with_tracking_ends_with_the_uninterrupted_file(tracked_run, tmp_path, capsys):
    data, model, full = tracked_run
    cut = tmp_path / "cut"
    args = build_parser().parse_args(_unlearn_argv(data, model, cut, *TRACK))
    with pytest.raises(Crash):
        unlearn(config_from_args(args), callbacks=[*build_callbacks(args), CrashAt(4)])
    # The tracker wrote step 4's line before the crash; the checkpoint is at step 2, so that line is lost work.
    assert [r["step"] for r in read_jsonl(cut / "geffect.jsonl")] == [2, 4]
    # Other tracking options than the interrupted run's: refused, one line, nothing changed.
    capsys.readouterr()
    assert (
        main(
            _unlearn_argv(
                data, model, cut, "--resume", "--track-geffect", "--geffect-every", "1", "--geffect-instances"
            )
        )
        == 2
    )
    assert "tracking" in capsys.readouterr().err.strip()
    assert main(_unlearn_argv(data, model, cut, "--resume")) == 2
    assert main(_unlearn_argv(data, model, cut, "--resume", *TRACK)) == 0
    assert _without_seconds(read_jsonl(cut / "geffect.jsonl")) == _without_seconds(read_jsonl(full / "geffect.jsonl"))


def _set_gradient(model, records: list[dict], template, tokenizer, ids=None):
    """grad R(D) by plain autograd on one batch holding the whole set (HF loss = mean token NLL)."""
    ids = ids or range(len(records))
    items = [
        encode_qa(tokenizer, template, r["question"], r["answer"], index=i, max_length=512)
        for i, r in zip(ids, records)
    ]
    batch = collate(items, pad_token_id(tokenizer))
    loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    return torch.autograd.grad(loss, [p for p in model.parameters()])


def test_posthoc_full_estimator_equals_independent_gradients(tracked_run, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data, _, run = tracked_run
    assert [(c.step, c.state) for c in expand_checkpoints([run])] == [(2, True), (4, True)]  # RUN/model is step 4 again
    out = tmp_path / "posthoc.jsonl"
    argv = [
        "effects",
        "--checkpoints",
        str(run / "checkpoints" / "step-00000004"),
        "--data",
        data,
        "--method",
        "GA",
        "--batch-size",
        "32",
        "--probe-size",
        "12",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    (record,) = read_jsonl(out)
    assert RECORD_KEYS - {"predicted_change"} <= set(record) and record["estimator"] == "full" and record["step"] == 4
    _check_effect(record["e_u"], 2)
    _check_effect(record["e_r"], 2)
    # Independent: GA on the whole forget split in one batch, G = -grad R(D_u), on RUN/model (= checkpoint 4);
    # the retain probe is the documented draw: torch.randperm(n_retain) with the run's seed 0, first 12, sorted.
    model = AutoModelForCausalLM.from_pretrained(run / "model", dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    template = get_template("plain")
    retain = load_split(data, "retain90")
    probe = torch.randperm(len(retain), generator=torch.Generator().manual_seed(0))[:12].sort().values.tolist()
    grad_u = _set_gradient(model, load_split(data, "forget10"), template, tokenizer)
    grad_r = _set_gradient(model, [retain[i] for i in probe], template, tokenizer, probe)
    e_u = -sum(float((g.double() ** 2).sum()) for g in grad_u)
    e_r = -sum(float((a.double() * b.double()).sum()) for a, b in zip(grad_r, grad_u))
    assert record["n_tokens_r"] > 0 and record["n_tokens_u"] > 0
    assert record["e_u"]["total"] == pytest.approx(e_u, rel=1e-4)
    assert record["e_r"]["total"] == pytest.approx(e_r, rel=1e-4)
    # Existing --out without --overwrite: one line, exit 2.
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "already exists" in err and len(err.splitlines()) == 1


def test_posthoc_batch_estimator_instances_and_tokens(tracked_run, tmp_path):
    data, _, run = tracked_run
    out = tmp_path / "items.jsonl"
    argv = [
        "effects",
        "--checkpoints",
        str(run / "model"),
        "--data",
        data,
        "--method",
        "WGA",
        "--estimator",
        "batch",
        "--batch-size",
        "3",
        "--tokens",
        "--tensors",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    (record,) = read_jsonl(out)
    assert record["step"] == 4 and record["estimator"] == "batch"
    assert set(record["weights"]) >= {"token_mean"}  # WGA weights its tokens
    for side in ("u", "r"):
        effect = record[f"e_{side}"]
        assert math.isclose(sum(effect["tensors"].values()), effect["total"], rel_tol=1e-9)
        items, tokens = record[f"items_{side}"], record[f"tokens_{side}"]
        assert len(items) == 3 and set(tokens) == set(items)
        assert math.isclose(sum(items.values()), effect["total"], rel_tol=1e-5)
        for item, value in items.items():
            assert math.isclose(sum(tokens[item]), value, rel_tol=1e-4, abs_tol=1e-9)


# Llama's RMSNorm rounds through float32 even with float64 weights (transformers), so a step must move the risk
# well above ~1e-8: WGA's weights p_t are tiny on a random model, hence its larger eta.
@pytest.mark.parametrize(
    "method, estimator, eta", [("GA", "full", "1e-5"), ("NPO", "batch", "1e-5"), ("WGA", "batch", "1e-3")]
)
def test_validate_first_order_within_two_percent(tracked_run, capsys, method, estimator, eta):
    data, model, _ = tracked_run
    capsys.readouterr()
    argv = [
        "--method",
        method,
        "--estimator",
        estimator,
        "--eta",
        eta,
        "--batch-size",
        "4",
        "--probe-size",
        "4",
        "--json",
    ]
    assert main(["effects", "--validate", "--model", model, "--data", data, *argv]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dtype"] == "float64" and set(report["sets"]) == {"forget", "retain"}
    for result in report["sets"].values():
        assert result["measured"] != 0 and math.isclose(result["predicted"], -report["eta"] * result["e"])
        assert result["relative_error"] < 0.02


@pytest.mark.parametrize(
    "argv_tail, message",
    [
        (["--checkpoints", "/nonexistent/ckpt", "--method", "GA", "--out", "{tmp}/a.jsonl"], "does not exist"),
        (["--checkpoints", "{run}", "--method", "NoSuchMethod", "--out", "{tmp}/b.jsonl"], "unknown unlearning method"),
        (["--checkpoints", "{run}", "--method", "GA"], "--out"),
        (["--validate", "--method", "GA"], "--model"),
        (
            ["--checkpoints", "{run}", "--method", "GA", "--forget", "forget99", "--out", "{tmp}/c.jsonl"],
            "forget split",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tracked_run, tmp_path, capsys, argv_tail, message):
    data, _, run = tracked_run
    tail = [a.format(tmp=tmp_path, run=run) for a in argv_tail]
    capsys.readouterr()
    assert main(["effects", "--data", data, *tail]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_plain_folder_steps_come_from_the_name(tracked_run, tmp_path):
    _, model, run = tracked_run
    folder = tmp_path / "checkpoint-25"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    found = expand_checkpoints([folder, run / "checkpoints" / "step-00000002", run / "model"])
    assert [(c.step, c.state) for c in found] == [(25, False), (2, True), (4, False)]
