"""The per-item runner and the `geffect eval` command on a tiny random Llama and a tiny TOFU-shaped folder."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from geffect.data.collate import encode_qa
from geffect.data.templates import get_template
from geffect.data.tofu import load_split
from geffect.errors import UsageError
from geffect.evaluation import evaluate, summarize
from geffect.evaluation.generation import generate_answers
from geffect.evaluation.scoring import score_answers
from test_eval_support import FORGET_SPLIT, legacy_log, save_model, tiny_setup

TEMPLATE = get_template("plain")
MAX_NEW = 8


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models gain nothing from intra-op threads, and on a shared 2-core machine they lose a lot.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("eval"))


@pytest.fixture(scope="module")
def result(setup):
    data, tokenizer, model = setup
    return evaluate(model, tokenizer, str(data), FORGET_SPLIT, TEMPLATE, batch_size=4, max_new_tokens=MAX_NEW)


@pytest.fixture(scope="module")
def model_dir(setup, tmp_path_factory):
    _, tokenizer, model = setup
    return save_model(tmp_path_factory.mktemp("model") / "tiny", model, tokenizer)


def _hf_item(model, tokenizer, question, answer):
    """Mean answer NLL (HF's own loss) and per-token argmax hits, EOS left out, for one unpadded item."""
    item = encode_qa(tokenizer, TEMPLATE, question, answer)
    ids, labels = torch.tensor([item.input_ids]), torch.tensor([item.labels])
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
    answer_positions = [t for t in range(1, len(item.labels)) if item.labels[t] != -100]
    hits = [int(out.logits[0, t - 1].argmax()) == item.labels[t] for t in answer_positions]
    return float(out.loss), np.array(hits[:-1])


def test_batched_passes_equal_one_at_a_time(setup):
    data, tokenizer, model = setup
    records = load_split(str(data), "retain_perturbed")
    questions = [r["question"] for r in records]
    answers = [r["answer"] for r in records]
    batched = score_answers(model, tokenizer, TEMPLATE, questions, answers, batch_size=4, with_distribution=True)
    single = score_answers(model, tokenizer, TEMPLATE, questions, answers, batch_size=1, with_distribution=True)
    for b, s in zip(batched, single):
        assert b.avg_nll == pytest.approx(s.avg_nll, rel=1e-5)
        np.testing.assert_allclose(b.zscores, s.zscores, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(b.correct, s.correct)
    assert generate_answers(
        model, tokenizer, TEMPLATE, questions, batch_size=4, max_new_tokens=MAX_NEW
    ) == generate_answers(model, tokenizer, TEMPLATE, questions, batch_size=1, max_new_tokens=MAX_NEW)


def test_per_item_values_match_independent_computation(setup, result):
    data, tokenizer, model = setup
    records = load_split(str(data), f"{FORGET_SPLIT}_perturbed")
    for index in (0, 3):
        record, key = records[index], str(index)
        loss, hits = _hf_item(model, tokenizer, record["question"], record["answer"])
        assert result["forget_Q_A_Prob"]["value_by_index"][key]["avg_loss"] == pytest.approx(loss, rel=1e-5)
        assert result["forget_Q_A_Prob"]["value_by_index"][key]["prob"] == pytest.approx(math.exp(-loss), rel=1e-5)
        assert result["exact_memorization"]["value_by_index"][key]["score"] == pytest.approx(hits.mean())
        para, _ = _hf_item(model, tokenizer, record["question"], record["paraphrased_answer"])
        pert = [_hf_item(model, tokenizer, record["question"], p)[0] for p in record["perturbed_answer"]]
        expected_tr = math.exp(-np.mean(pert)) / math.exp(-para)
        assert result["forget_truth_ratio"]["value_by_index"][key]["score"] == pytest.approx(expected_tr, rel=1e-4)
    scores = [v["score"] for v in result["forget_truth_ratio"]["value_by_index"].values()]
    assert result["forget_truth_ratio"]["agg_value"] == pytest.approx(
        np.mean([min(s, 1 / s) for s in scores]), rel=1e-12
    )


def test_mia_auc_from_stored_scores(result):
    attack = result["mia_loss"]
    forget = [v["score"] for v in attack["forget"]["value_by_index"].values()]
    holdout = [v["score"] for v in attack["holdout"]["value_by_index"].values()]
    pairs = [(h > f) + 0.5 * (h == f) for f in forget for h in holdout]
    assert attack["agg_value"] == pytest.approx(np.mean(pairs), abs=1e-12)
    assert forget == [v["avg_loss"] for v in result["forget_Q_A_Prob"]["value_by_index"].values()]


def test_layout_sizes_and_missing_reference(result):
    meta = result["geffect_meta"]
    assert meta["set_sizes"] == {"forget": 6, "retain": 7, "ra": 4, "wf": 5, "holdout": 6}
    assert meta["ds_size"] is None and meta["convention"].startswith("all items")
    assert len(result["retain_Q_A_PERT_Prob"]["value_by_index"]["0"]["avg_loss"]) == 5
    assert len(result["ra_Q_A_ROUGE"]["value_by_index"]) == 4
    assert result["forget_quality"]["agg_value"] is None and result["privleak"]["agg_value"] is None
    assert result["model_utility"]["agg_value"] is not None
    summary = summarize(result)
    assert summary["forget_quality"] is None and summary["model_utility"] == result["model_utility"]["agg_value"]


def test_same_model_same_numbers(setup, result):
    data, tokenizer, model = setup
    again = evaluate(model, tokenizer, str(data), FORGET_SPLIT, "plain", batch_size=3, max_new_tokens=MAX_NEW)
    for name in ("forget_truth_ratio", "model_utility", "mia_min_k_plus_plus", "retain_Q_A_ROUGE"):
        assert again[name]["agg_value"] == pytest.approx(result[name]["agg_value"], rel=1e-6)


def test_ds_size_scores_the_first_items(setup, result):
    data, tokenizer, model = setup
    short = evaluate(
        model, tokenizer, str(data), FORGET_SPLIT, TEMPLATE, ds_size=3, batch_size=4, max_new_tokens=MAX_NEW
    )
    assert short["geffect_meta"]["set_sizes"] == {"forget": 3, "retain": 3, "ra": 3, "wf": 3, "holdout": 3}
    assert short["geffect_meta"]["convention"] == "first 3 items of each set (legacy TOFU ds_size)"
    for key in ("0", "2"):
        assert short["forget_Q_A_Prob"]["value_by_index"][key]["avg_loss"] == pytest.approx(
            result["forget_Q_A_Prob"]["value_by_index"][key]["avg_loss"], rel=1e-5
        )
    with pytest.raises(UsageError, match="scores 6 forget items"):
        summarize(short, result)


def test_openunlearning_layout_without_our_metadata(result):
    plain = {k: v for k, v in result.items() if k != "geffect_meta"}
    ours, theirs = summarize(result, result), summarize(plain, plain)
    assert theirs["source_format"] == "open-unlearning"
    assert theirs["forget_quality"] == ours["forget_quality"] == 1.0
    assert theirs["privleak"] == ours["privleak"] == 0.0
    # A file without our metadata is OpenUnlearning's: aggregated with its 1e-10 guards (docs/presets.md).
    assert theirs["conventions"]["name"] == "openunlearning" and ours["conventions"]["name"] == "geffect"
    for name in ("model_utility", "forget_truth_ratio", "extraction_strength", "mia_zlib"):
        assert theirs[name] == pytest.approx(ours[name], rel=1e-8)


def test_non_finite_loss_stops_cleanly(setup):
    data, tokenizer, model = setup
    broken = type(model)(model.config)
    broken.load_state_dict(model.state_dict())
    with torch.no_grad():
        broken.lm_head.weight[0, 0] = float("nan")
    with pytest.raises(UsageError, match="not finite"):
        evaluate(broken.eval(), tokenizer, str(data), FORGET_SPLIT, TEMPLATE, ds_size=2, max_new_tokens=2)


def test_cli_eval_and_summarize(cli, setup, model_dir, result, tmp_path):
    data = setup[0]
    out = tmp_path / "out"
    args = (
        "eval",
        "--model",
        model_dir,
        "--data",
        data,
        "--forget",
        FORGET_SPLIT,
        "--template",
        "plain",
        "--batch-size",
        4,
        "--max-new-tokens",
        MAX_NEW,
        "--out",
        out,
    )
    code, stdout, err = cli(*args)
    assert code == 0, err
    saved = json.loads((out / "TOFU_EVAL.json").read_text())
    summary_file = json.loads((out / "TOFU_SUMMARY.json").read_text())
    assert json.loads(stdout) == summary_file
    assert saved["geffect_meta"]["model"] == str(model_dir)
    assert saved["model_utility"]["agg_value"] == pytest.approx(result["model_utility"]["agg_value"], rel=1e-6)
    assert summary_file["forget_quality"] is None

    code, stdout, err = cli("eval", "summarize", out / "TOFU_EVAL.json", "--retain-logs", out / "TOFU_EVAL.json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["forget_quality"] == 1.0 and summary["privleak"] == 0.0
    for name in ("model_utility", "forget_truth_ratio", "retain_Q_A_ROUGE", "wf_Truth_Ratio"):
        assert summary[name] == summary_file[name]

    # An existing output folder is never overwritten silently.
    code, stdout, err = cli(*args)
    assert code == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(*args, "--overwrite", "--retain-logs", out / "TOFU_EVAL.json")
    assert code == 0, err
    assert json.loads((out / "TOFU_SUMMARY.json").read_text())["forget_quality"] == 1.0


def _base_argv(setup, model_dir) -> tuple:
    return ("eval", "--model", model_dir, "--data", setup[0], "--forget", FORGET_SPLIT, "--max-new-tokens", 2)


def _assert_each_refused(run, cases) -> None:
    for argv, message in cases:
        code, stdout, err = run(*argv)
        assert code == 2, (argv, err)
        assert len(err.strip().splitlines()) == 1 and message in err, err


def test_cli_bad_inputs(cli, setup, model_dir, result, tmp_path):
    data = setup[0]
    base = _base_argv(setup, model_dir)

    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_text((model_dir / "config.json").read_text())
    (no_tokenizer / "model.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes())
    other_split = dict(result, geffect_meta=dict(result["geffect_meta"], forget_split="forget05"))
    (tmp_path / "forget05.json").write_text(json.dumps(other_split))
    (tmp_path / "summary.json").write_text(json.dumps(summarize(result)))

    cases = [
        (("eval", "--model", no_tokenizer, "--data", data, "--out", tmp_path / "a"), "no tokenizer"),
        ((*base, "--retain-logs", tmp_path / "forget05.json", "--out", tmp_path / "b"), "is for forget05"),
        ((*base, "--retain-logs", tmp_path / "summary.json", "--out", tmp_path / "c"), "TOFU_SUMMARY"),
        ((*base, "--ds-size", 0, "--out", tmp_path / "e"), "--ds-size"),
        (("eval", "--model", model_dir, "--out", tmp_path / "f"), "--data"),
        (("eval", "summarize", tmp_path / "missing.json"), "does not exist"),
    ]
    _assert_each_refused(cli, cases)


@pytest.mark.needs_tofu_logs
def test_cli_bad_inputs_with_a_tofu_authors_log(cli, setup, model_dir, tmp_path):
    base = _base_argv(setup, model_dir)
    cases = [
        # the TOFU authors' retain99 log scores 40 forget01 items; this folder has 6
        ((*base, "--retain-logs", legacy_log("retain99"), "--out", tmp_path / "d"), "scores 40 forget items"),
    ]
    _assert_each_refused(cli, cases)
