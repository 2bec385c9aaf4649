"""Evaluation conventions and OpenUnlearning's extra metrics against transcriptions of its code written here
(locuslab/open-unlearning d3d7cf9: src/evals/metrics/memorization.py, mia/reference.py, mia/gradnorm.py), float64."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import ks_2samp

from geffect.data.templates import get_template
from geffect.evaluation import metrics as m
from geffect.evaluation.conventions import CONVENTIONS, convention_of
from geffect.evaluation.extra import alternative_rouge_entries
from geffect.evaluation.gradnorm import gradnorm_scores
from geffect.evaluation.registry import compute_metrics
from geffect.evaluation.runner import evaluate
from geffect.evaluation.summary import summarize
from test_eval_support import FORGET_SPLIT, tiny_setup

RNG = np.random.default_rng(0)
OU = CONVENTIONS["openunlearning"]


# --- transcriptions of memorization.py -----------------------------------------------------------------------


def ou_truth_ratio(correct_avg_losses, wrong_avg_losses):
    """memorization.py truth_ratio: aggregate_to_1D, exp(-loss), wrong_prob / (correct_prob + 1e-10)."""
    correct = np.array(correct_avg_losses, dtype=np.float64)
    wrong = np.array(wrong_avg_losses, dtype=np.float64)
    correct = np.mean(correct, axis=tuple(range(1, correct.ndim))) if correct.ndim > 1 else correct
    wrong = np.mean(wrong, axis=tuple(range(1, wrong.ndim)))
    return np.exp(-wrong) / (np.exp(-correct) + 1e-10)


def ou_closer_to_1_better(arr):
    return np.mean(np.minimum(arr, 1 / (arr + 1e-10)))


def ou_prob_mean_ratio(correct_avg_losses, wrong_avg_losses):
    correct = np.exp(-np.array(correct_avg_losses, dtype=np.float64))
    wrong = np.exp(-np.mean(np.array(wrong_avg_losses, dtype=np.float64), axis=1))
    return correct / (correct + wrong + 1e-10)


def ou_probability_w_options(correct_probs, wrong_probs):
    wrong = np.sum(np.array(wrong_probs), axis=1)
    return np.array(correct_probs) / (np.array(correct_probs) + wrong + 1e-10)


def ou_extraction_strength(preds, labels):
    """memorization.py _extraction_strength's loop, on lists."""
    valid_len = len(labels)
    for k in range(valid_len):
        if list(preds[k:]) == list(labels[k:]):
            break
    return 1 - (k / valid_len)


def _losses(n, scale):
    true = RNG.uniform(0.1, scale, size=n)
    false = RNG.uniform(0.1, scale, size=(n, 5))
    return true, false


@pytest.mark.parametrize("scale", [3.0, 40.0])
def test_guarded_truth_ratio_equals_openunlearning(scale):
    true, false = _losses(50, scale)
    ours = m.truth_ratio(true, false, guard=OU.truth_ratio_guard)
    np.testing.assert_allclose(ours, ou_truth_ratio(true, false), rtol=1e-10, atol=0)
    assert m.truth_ratio_closer_to_one(ours, OU.truth_ratio_guard) == pytest.approx(
        ou_closer_to_1_better(ou_truth_ratio(true, false)), rel=1e-10
    )
    np.testing.assert_allclose(m.truth_ratio_prob_mean(true, false), ou_prob_mean_ratio(true, false), rtol=1e-10)
    probs_true, probs_false = np.exp(-true), np.exp(-false)
    np.testing.assert_allclose(
        m.normalised_probability(true, false, OU.truth_ratio_guard),
        ou_probability_w_options(probs_true, probs_false),
        rtol=1e-10,
    )
    exact = m.truth_ratio(true, false)
    np.testing.assert_allclose(exact, np.exp(-false.mean(axis=1)) / np.exp(-true), rtol=1e-10)


def test_guard_moves_forget_quality_on_an_over_unlearned_model():
    """Where the true answer's NLL is past ~23 the guard, not P_true, sets the ratio; forget quality follows."""
    true_model, false_model = RNG.uniform(25, 60, size=100), RNG.uniform(25, 60, size=(100, 5))
    true_retain, false_retain = _losses(100, 3.0)
    exact = m.forget_quality(m.truth_ratio(true_model, false_model), m.truth_ratio(true_retain, false_retain))[0]
    guarded = m.forget_quality(
        m.truth_ratio(true_model, false_model, OU.truth_ratio_guard),
        m.truth_ratio(true_retain, false_retain, OU.truth_ratio_guard),
    )[0]
    reference = ks_2samp(ou_truth_ratio(true_model, false_model), ou_truth_ratio(true_retain, false_retain)).pvalue
    assert guarded == pytest.approx(reference, rel=1e-10)
    assert abs(np.log10(exact) - np.log10(guarded)) > 1  # orders of magnitude apart


@pytest.mark.parametrize("seed", range(20))
def test_extraction_strength_floor_equals_openunlearning(seed):
    rng = np.random.default_rng(seed)
    length = int(rng.integers(1, 8))
    labels = rng.integers(0, 3, size=length)
    preds = np.where(rng.random(length) < 0.6, labels, (labels + 1) % 3)
    correct = preds == labels
    assert m.extraction_strength(correct, floor=True) == pytest.approx(ou_extraction_strength(preds, labels), abs=1e-12)
    if not correct[-1]:  # ours, unfloored: no suffix matches but the empty one
        assert m.extraction_strength(correct) == 0.0


def test_registry_follows_the_convention():
    true, false = _losses(6, 40.0)
    entries = {
        "forget_Q_A_PARA_Prob": {"value_by_index": {str(i): {"avg_loss": t} for i, t in enumerate(true)}},
        "forget_Q_A_PERT_Prob": {"value_by_index": {str(i): {"avg_loss": list(f)} for i, f in enumerate(false)}},
    }
    guarded = compute_metrics(entries, convention=OU)
    scores = [guarded["forget_truth_ratio"]["value_by_index"][str(i)]["score"] for i in range(6)]
    np.testing.assert_allclose(scores, ou_truth_ratio(true, false), rtol=1e-10)
    assert guarded["forget_truth_ratio"]["agg_value"] == pytest.approx(
        ou_closer_to_1_better(np.array(scores)), rel=1e-10
    )
    prob_mean = guarded["forget_truth_ratio_prob_mean"]["agg_value"]
    assert prob_mean == pytest.approx(np.mean(ou_prob_mean_ratio(true, false)), rel=1e-10)
    exact = compute_metrics(entries)["forget_truth_ratio"]["value_by_index"]["0"]["score"]
    assert exact == pytest.approx(np.exp(true[0] - false[0].mean()), rel=1e-10)


def test_conventions_of_each_format():
    assert convention_of({"source_format": "open-unlearning"}).name == "openunlearning"
    assert convention_of({"source_format": "legacy-tofu"}).name == "legacy"
    assert convention_of({"source_format": "geffect"}).name == "geffect"
    assert convention_of({"conventions": OU.record(), "source_format": "geffect"}) == OU


def test_alternative_rouge_entries_score_against_paraphrased_and_perturbed():
    from rouge_score import rouge_scorer

    items = [
        {"paraphrased_answer": "The genre is crime.", "perturbed_answer": ["He writes poetry.", "Crime, he writes."]},
        {"paraphrased_answer": "Her books are poems.", "perturbed_answer": ["She writes drama."]},
    ]
    generations = ["He writes crime.", "She writes poems."]
    entries = alternative_rouge_entries(["q1", "q2"], items, generations)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    for i, (item, generation) in enumerate(zip(items, generations)):
        para = entries["forget_Q_A_PARA_ROUGE"]["value_by_index"][str(i)]["rougeL_recall"]
        assert para == scorer.score(item["paraphrased_answer"], generation)["rougeL"].recall
        pert = entries["forget_Q_A_PERT_ROUGE"]["value_by_index"][str(i)]["rougeL_recall"]
        assert pert == [scorer.score(a, generation)["rougeL"].recall for a in item["perturbed_answer"]]
    agg = compute_metrics(entries)["forget_Q_A_PERT_ROUGE"]["agg_value"]
    per_item = [np.mean(entries["forget_Q_A_PERT_ROUGE"]["value_by_index"][k]["rougeL_recall"]) for k in ("0", "1")]
    assert agg == pytest.approx(np.mean(per_item), rel=1e-12)  # aggregate_to_1D then the mean


# --- end to end on a tiny model: reference and gradnorm MIA, conventions recorded, the summarize warning ------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    data, tokenizer, model = tiny_setup(tmp_path_factory.mktemp("conventions"))
    return data, tokenizer, model.to(torch.float64)


def _ou_gradnorm(model, tokenizer, question, answer):
    """gradnorm.py GradNormAttack.compute_batch_values for one item, with torch.autograd.grad."""
    from geffect.data.collate import collate, encode_qa, pad_token_id

    batch = collate([encode_qa(tokenizer, get_template("plain"), question, answer)], pad_token_id(tokenizer))
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    log_probs = torch.log_softmax(logits, dim=-1)[:, :-1, :]
    target = torch.gather(log_probs, 2, batch["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)
    labels = batch["labels"][0]
    idx = (labels != -100).nonzero(as_tuple=True)[0][:-1]
    loss = -torch.mean(target[0, idx[0].item() - 1 : idx[-1].item()])
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.stack([g.norm(p=2) for g in grads if g is not None]).mean().item()


def _records(data, split):
    return [json.loads(line) for line in (data / f"{split}.json").read_text(encoding="utf-8").splitlines()]


@torch.no_grad()
def _ou_avg_loss(model, tokenizer, question, answer):
    """utils.py evaluate_probability's avg_loss: the mean NLL over the item's labelled tokens (EOS included)."""
    from geffect.data.collate import collate, encode_qa, pad_token_id

    batch = collate([encode_qa(tokenizer, get_template("plain"), question, answer)], pad_token_id(tokenizer))
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[0, :-1]
    labels = batch["labels"][0, 1:]
    losses = F.cross_entropy(logits, labels, ignore_index=-100, reduction="none")
    return float(losses.sum() / (labels != -100).sum())


def test_gradnorm_equals_openunlearning(tiny):
    data, tokenizer, model = tiny
    questions, answers = ["What does Li Wei write?", "Who is Søren?"], ["Li Wei writes drama.", "A poet."]
    ours = gradnorm_scores(model, tokenizer, get_template("plain"), questions, answers)
    expected = [_ou_gradnorm(model, tokenizer, q, a) for q, a in zip(questions, answers)]
    np.testing.assert_allclose(ours, expected, rtol=1e-10)
    assert all(p.grad is None for p in model.parameters())


def test_openunlearning_convention_end_to_end_and_summarize_warns(tiny, tmp_path, cli, caplog):
    data, tokenizer, model = tiny
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for p in reference.parameters():
            p.mul_(0.9)
    kwargs = dict(batch_size=4, max_new_tokens=8)
    ou = evaluate(model, tokenizer, str(data), FORGET_SPLIT, "plain", convention="openunlearning",
                  reference_model=reference, gradnorm=True, **kwargs)  # fmt: skip
    ours = evaluate(model, tokenizer, str(data), FORGET_SPLIT, "plain", **kwargs)
    assert ou["geffect_meta"]["conventions"] == OU.record()
    assert ours["geffect_meta"]["conventions"]["name"] == "geffect"
    records = {"forget": _records(data, f"{FORGET_SPLIT}_perturbed"), "holdout": _records(data, "holdout01")}
    for part in ("forget", "holdout"):  # reference MIA: target loss minus reference loss, per item
        got = ou["mia_reference"][part]["value_by_index"]
        assert len(got) == len(records[part]) == len(ou["mia_gradnorm"][part]["value_by_index"])
        for i, record in enumerate(records[part][:3]):
            q, a = record["question"], record["answer"]
            expected = _ou_avg_loss(model, tokenizer, q, a) - _ou_avg_loss(reference, tokenizer, q, a)
            assert got[str(i)]["score"] == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert 0.0 <= ou["mia_reference"]["agg_value"] <= 1.0 and 0.0 <= ou["mia_gradnorm"]["agg_value"] <= 1.0
    assert "forget_Q_A_PARA_ROUGE" in ou and "forget_Q_A_PERT_ROUGE" in ou
    for name in ("extraction_strength",):  # floored scores are never below ours
        for key, item in ou[name]["value_by_index"].items():
            assert item["score"] >= ours[name]["value_by_index"][key]["score"]
    mine, theirs = tmp_path / "ours.json", tmp_path / "ou.json"
    mine.write_text(json.dumps(ours))
    theirs.write_text(json.dumps(ou))
    with caplog.at_level("WARNING"):
        code, out, _ = cli("eval", "summarize", mine, "--retain-logs", theirs)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert code == 0 and len(warned) == 1 and "convention geffect" in warned[0] and "truth_ratio_guard" in warned[0]
    summary = json.loads(out)
    assert summary["conventions"]["name"] == "geffect" and summary["convention_warning"] == warned[0]
    caplog.clear()
    with caplog.at_level("WARNING"):
        code, out, _ = cli("eval", "summarize", mine, "--retain-logs", mine)
    assert code == 0 and not caplog.records and json.loads(out)["convention_warning"] is None
    assert summarize(ou, ou)["conventions"] == OU.record()


# --- refusals: --refusals FILE and per-visit sampling (OpenUnlearning's QAwithIdkDataset) ----------------------


def test_refusals_file_text_and_json_lines(tmp_path):
    from geffect.data.refusals import load_refusals, refusal_for
    from geffect.errors import UsageError

    text = tmp_path / "idk.txt"
    text.write_text("I have no idea.\n\n  Not sure, sorry.  \n", encoding="utf-8")
    assert load_refusals(text) == ["I have no idea.", "Not sure, sorry."]
    jsonl = tmp_path / "idontknow.jsonl"
    jsonl.write_text('"I do not know."\n{"text": "No clue."}\nplain line\n', encoding="utf-8")
    assert load_refusals(jsonl) == ["I do not know.", "No clue.", "plain line"]
    assert {refusal_for(i, 0, load_refusals(jsonl)) for i in range(200)} == set(load_refusals(jsonl))
    for bad in (tmp_path / "missing.txt", tmp_path / "empty.txt"):
        if bad.name == "empty.txt":
            bad.write_text("\n \n", encoding="utf-8")
        with pytest.raises(UsageError, match="--refusals"):
            load_refusals(bad)


def test_per_visit_sampling_draws_again_and_is_reproducible():
    from geffect.data.refusals import refusal_items

    records = [{"question": f"q{i}"} for i in range(5)]
    refusals = None  # ours

    def draws(sampling):
        items = refusal_items(records, lambda i, r: (i, r), refusals, sampling, seed=3)
        return [[items[i][1] for i in range(5)] for _ in range(8)]  # 8 visits of each item

    fixed, per_visit = draws("fixed"), draws("per_visit")
    assert all(row == fixed[0] for row in fixed)
    assert per_visit == draws("per_visit")  # same seed, same draws
    assert any(len({row[i] for row in per_visit}) > 1 for i in range(5))


def test_altpo_alternates_are_matched_by_question_and_required(tmp_path):
    from geffect.data.refusals import read_alternates
    from geffect.errors import UsageError
    from geffect.training.config import UnlearnConfig

    records = [{"question": "Q1?", "answer": "A1."}, {"question": "Q2?", "answer": "A2."}]
    path = tmp_path / "alt5_seed_0.json"  # OpenUnlearning's AltPO generate.py writes JSON Lines
    path.write_text(
        "\n".join(json.dumps({"question": q, "answer": "x", "alternate": f" alt {q} "}) for q in ("Q2?", "Q1?")),
        encoding="utf-8",
    )
    assert read_alternates(path, records) == ["alt Q1?", "alt Q2?"]
    with pytest.raises(UsageError, match="no alternate for 1 forget questions"):
        read_alternates(path, [*records, {"question": "Q3?"}])
    base = dict(model="m", data="d", out="o")
    with pytest.raises(UsageError, match="AltPO needs --alternates"):
        UnlearnConfig(method="AltPO", **base).validate()
    with pytest.raises(UsageError, match="--alternates"):
        UnlearnConfig(method="AltPO", alternates=str(tmp_path / "missing.jsonl"), **base).validate()
    UnlearnConfig(method="AltPO", alternates=str(path), **base).validate()
    with pytest.raises(UsageError, match="--refusals"):
        UnlearnConfig(method="IdkPO", refusals=str(tmp_path / "missing.txt"), **base).validate()


def test_paraphrased_questions_ask_the_forget_and_retain_sets(tiny):
    data, tokenizer, model = tiny
    result = evaluate(model, tokenizer, str(data), FORGET_SPLIT, "plain", batch_size=4, max_new_tokens=4,
                      question_key="paraphrased_question")  # fmt: skip
    assert result["geffect_meta"]["question_key"] == "paraphrased_question"
    records = [json.loads(line) for line in (data / f"{FORGET_SPLIT}_perturbed.json").read_text().splitlines()]
    inputs = [result["forget_Q_A_ROUGE"]["value_by_index"][str(i)]["input"] for i in range(len(records))]
    assert inputs == [r["paraphrased_question"] for r in records]
    ra = result["ra_Q_A_ROUGE"]["value_by_index"]["0"]["input"]
    assert "In which genre" not in ra  # real authors keep their own questions
