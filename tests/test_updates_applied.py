"""The G-effect of the update the optimizer applied (u) predicts the risk change under AdamW; the plain
gradient's (e) does not. A real `unlearn` run of the tiny model, the whole forget set measured every step."""

from __future__ import annotations

from geffect.data.templates import get_template
from geffect.data.tofu import load_split
from geffect.effects.config import TrackerConfig
from geffect.effects.tracker import GEffectTracker
from geffect.effects.validate import set_risk
from geffect.models.loading import load_model, load_tokenizer
from geffect.reports.real_step import plot_real_step
from geffect.tokens import Batch
from geffect.training.batches import encode_records
from geffect.training.config import UnlearnConfig
from geffect.training.unlearn import unlearn


def _forget_batches(model_dir, data, items: int = 8, size: int = 8) -> list[Batch]:
    """The first `items` forget items: the fixed set whose risk change is predicted and measured."""
    from geffect.data.collate import collate, pad_token_id

    tokenizer = load_tokenizer(str(model_dir))
    items = encode_records(tokenizer, get_template("plain"), load_split(str(data), "forget10")[:items], 512)
    batches = [collate(items[i : i + size], pad_token_id(tokenizer)) for i in range(0, len(items), size)]
    return batches


def test_real_step_prediction_beats_the_plain_gradient_under_adamw(tiny_benchmark, tiny_target_model, tmp_path):
    forget = _forget_batches(tiny_target_model, tiny_benchmark)
    before = set_risk(load_model(str(tiny_target_model)), forget)
    tracker = GEffectTracker(
        TrackerConfig(estimator="full", applied=True, probe_size=4, probe_batch_size=4), forget_batches=forget
    )
    config = UnlearnConfig(
        model=str(tiny_target_model), data=str(tiny_benchmark), out=str(tmp_path / "run"), method="NPO",
        lr=2e-5, max_steps=5, warmup_epochs=0, batch_size=4, grad_accum=1, template="plain", progress=False,
    )  # fmt: skip
    result = unlearn(config, callbacks=[tracker])
    after = set_risk(result.model, forget)
    measured = after - before
    last = tracker.folder.read_geffect()[-1]
    assert last["step"] == 5
    by_u = last["applied"]["predicted_change"]["u_u"]
    by_e = last["predicted_change"]["e_u"]
    error_u, error_e = abs(by_u - measured) / abs(measured), abs(by_e - measured) / abs(measured)
    print(
        f"measured {measured:.4g}; predicted by u {by_u:.4g} (error {error_u:.2%}), by e {by_e:.4g} (error {error_e:.2%})"
    )
    assert measured > 0 and error_u <= 0.10
    assert error_u < error_e
    assert plot_real_step(tmp_path / "run").name == "real_step.png"  # the report's figure of the same lines
