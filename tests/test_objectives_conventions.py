"""The reference conventions of the objectives and the new method CE-U, against transcriptions (written here) of
OpenUnlearning d3d7cf9 (src/trainer/utils.py compute_undial_loss, src/trainer/unlearn/ceu.py) and the paper's code
G-effect ef368ee (dataloader.py compute_loss, loss_type rmu_L), in float64 on a fully float64 GPT-2."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geffect.objectives import ObjectiveConfig, UnlearnBatch, build_objective
from test_objectives_math import TOLERANCES, close, flat_grad, grad_close, perturbed, random_batch, tiny_model

TOL = {**TOLERANCES["gpt2"], "rtol": 1e-10}  # GPT-2 runs fully in float64


@pytest.fixture(scope="module")
def setup():
    model = tiny_model(0, "gpt2")
    return model, perturbed(model), random_batch(10), random_batch(11)


def ou_undial(model, ref_model, inputs, beta):
    """compute_undial_loss, re-typed."""
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    shift_labels = inputs["labels"][..., 1:].contiguous()
    shift_logits = logits[..., :-1, :].contiguous()
    with torch.no_grad():
        teacher = ref_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    shift_teacher = teacher[..., :-1, :].contiguous()
    mask = torch.zeros_like(shift_teacher)
    batch_idx = torch.arange(mask.shape[0]).view(-1, 1, 1)
    seq_idx = torch.arange(mask.shape[1]).view(1, -1, 1)
    mask[batch_idx, seq_idx, shift_labels.unsqueeze(-1)] = 1.0
    soft_label = F.softmax(shift_teacher - mask * beta, dim=-1)
    loss = nn.CrossEntropyLoss(reduction="none")(
        shift_logits.view(-1, shift_logits.size(-1)), soft_label.view(-1, soft_label.size(-1))
    )
    return loss.mean()


def test_undial_all_positions_equals_openunlearning():
    """OpenUnlearning's index_put wraps a -100 label to V - 100, so its code needs a vocabulary of >= 100 tokens."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=160, n_embd=16, n_layer=2, n_head=2, n_positions=64, initializer_range=0.3)
    model = GPT2LMHeadModel(config).to(torch.float64).eval()
    ref, forget = perturbed(model), random_batch(10)
    objective = build_objective(ObjectiveConfig(method="UNDIAL", hparams={"all_positions": 1, "beta": 3.0}))
    out = objective(model, UnlearnBatch(forget=forget), ref)
    direct = ou_undial(model, ref, forget, 3.0)
    assert close(out.forget_loss, direct, TOL)
    assert grad_close(flat_grad(out.loss, model), flat_grad(direct, model), TOL)
    answer_only = build_objective(ObjectiveConfig(method="UNDIAL", hparams={"beta": 3.0}))(
        model, UnlearnBatch(forget=forget), ref
    )
    assert not close(answer_only.forget_loss, direct, TOL)


def ou_ceu(model, inputs, ignore_first_n_answer_tokens=1):
    """compute_batch_ceu + cross_entropy_unlearning_loss, re-typed."""
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    labels = inputs["labels"]
    valid_mask = labels != -100
    update_mask = (valid_mask.cumsum(dim=-1) <= ignore_first_n_answer_tokens) & valid_mask
    labels = labels.masked_fill(update_mask, -100)
    shifted_labels = labels[..., 1:].contiguous()
    shifted_logits = logits[..., :-1, :].contiguous()
    valid = shifted_labels != -100
    valid_logits, valid_labels = shifted_logits[valid], shifted_labels[valid]
    target = valid_logits.detach().clone()
    target.scatter_(dim=-1, index=valid_labels.unsqueeze(-1), value=float("-inf"))
    return F.cross_entropy(input=valid_logits, target=F.softmax(target, dim=-1))


@pytest.mark.parametrize("n", [0, 1, 2])
def test_ceu_equals_openunlearning(setup, n):
    model, _, forget, _ = setup
    objective = build_objective(ObjectiveConfig(method="CE-U", hparams={"ignore_first_n": n}))
    assert objective.name == "CEU" and not objective.needs_reference
    out = objective(model, UnlearnBatch(forget=forget))
    direct = ou_ceu(model, forget, n)
    assert close(out.forget_loss, direct, TOL)
    assert grad_close(flat_grad(out.loss, model), flat_grad(direct, model), TOL)
    assert out.forget_risk.requires_grad


def paper_rmu(model, inputs, noise, c, emb_idx):
    """The paper's rmu_L branch (no _kl), re-typed: noise is its torch.rand((1, 1, d))."""
    outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], output_hidden_states=True)
    emb_tar = noise * c
    h = outputs.hidden_states[emb_idx][..., :-1, :]
    emb_dif = ((h - emb_tar[0, 0, : h.size(-1)]) ** 2).mean(-1)
    return emb_dif[inputs["labels"][..., 1:] != -100].mean()


@pytest.mark.parametrize("layer,emb_idx", [(-1, 2), (1, 1), (0, 0)])
def test_rmu_paper_mode_equals_the_paper_code(setup, layer, emb_idx):
    model, _, forget, _ = setup
    hparams = {"layer": layer, "paper_mode": 1, "hidden_states_index": 1, "normalize": 0, "steering_coeff": 3.0}
    objective = build_objective(ObjectiveConfig(method="RMU", retain_loss="none", hparams=hparams))
    objective.setup(model, torch.Generator().manual_seed(5))
    u = objective.state_dict()["u"]
    assert torch.equal(u, torch.rand(u.shape[0], generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    out = objective(model, UnlearnBatch(forget=forget))
    direct = paper_rmu(model, forget, u.view(1, 1, -1), 3.0, emb_idx)
    assert close(out.forget_loss, direct, TOL)
    assert grad_close(flat_grad(out.loss, model), flat_grad(direct, model), TOL)


def test_rmu_hidden_states_index_counts_like_hf(setup):
    """hidden_states[l + 1] is the output of decoder layer l (GPT-2 applies ln_f after the last block only)."""
    model, ref, forget, retain = setup
    batch = UnlearnBatch(forget=forget, retain=retain)

    def loss(**hp):
        objective = build_objective(ObjectiveConfig(method="RMU", hparams=hp))
        objective.setup(model, torch.Generator().manual_seed(1))
        return objective(model, batch, ref)

    by_layer, by_index = loss(layer=0), loss(layer=1, hidden_states_index=1)
    assert close(by_layer.forget_loss, by_index.forget_loss, TOL)
    assert close(by_layer.retain_loss, by_index.retain_loss, TOL)
    with pytest.raises(Exception, match="out of range"):
        loss(layer=3, hidden_states_index=1)


class OuPdu:
    """pdu.py PDU.compute_loss + final_loss_value (dual update per step, no warm-up), re-typed."""

    def __init__(self, gamma, alpha, eps, step):
        self.preferences, self.eps, self.step = [gamma, alpha], eps, step

    def __call__(self, model, forget, retain):
        logits = model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
        logits = logits.reshape(-1, logits.size(-1))
        forget_loss = (logits.max(dim=-1)[0] - logits.mean(dim=-1)) ** 2
        mask = (forget["labels"] != -100).reshape(-1)
        forget_loss = (forget_loss * mask).sum() / mask.sum()
        r_logits = model(input_ids=retain["input_ids"], attention_mask=retain["attention_mask"]).logits
        retain_loss = F.cross_entropy(
            r_logits[:, :-1].reshape(-1, r_logits.size(-1)), retain["labels"][:, 1:].reshape(-1), ignore_index=-100
        )
        shifted = retain_loss - self.eps
        loss = (torch.tensor(self.preferences, dtype=torch.float64) * torch.hstack([forget_loss, shifted])).sum()
        self.preferences[1] = max(0, self.preferences[1] + self.step * shifted.item())
        return loss


def test_pdu_equals_openunlearning_over_steps(setup):
    model, _, forget, retain = setup
    hparams = {"retain_eps": 2.0, "dual_step_size": 0.5}
    objective = build_objective(ObjectiveConfig(method="PDU", gamma=0.7, alpha=1.5, hparams=hparams))
    assert objective.config.retain_loss == "NLL"
    objective.setup(model, torch.Generator().manual_seed(0))
    reference = OuPdu(0.7, 1.5, 2.0, 0.5)
    for _ in range(3):  # lambda moves between calls; each call's loss and gradient follow OpenUnlearning's
        out = objective(model, UnlearnBatch(forget=forget, retain=retain))
        direct = reference(model, forget, retain)
        assert close(out.loss, direct, TOL)
        assert grad_close(flat_grad(out.loss, model), flat_grad(direct, model), TOL)
        assert float(objective.state_dict()["dual"]) == pytest.approx(reference.preferences[1], rel=1e-12)
    assert reference.preferences[1] != 1.5


def test_altpo_is_dpo_on_the_alternate_answers(setup):
    """OpenUnlearning runs AltPO with its DPO trainer (trainer/utils.py compute_dpo_loss, win = the alternate)."""
    model, ref, forget, retain = setup
    alternate = random_batch(21)
    batch = UnlearnBatch(forget=forget, forget_idk=alternate)
    altpo = build_objective(ObjectiveConfig(method="AltPO", hparams={"beta": 0.3}))(model, batch, ref)

    def summed_nll(m, b):
        logits = m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
        return F.cross_entropy(logits.transpose(-1, -2), b["labels"][:, 1:], ignore_index=-100, reduction="none").sum(
            -1
        )

    with torch.no_grad():
        win_ref, lose_ref = summed_nll(ref, alternate), summed_nll(ref, forget)
    win_log_ratio = -(summed_nll(model, alternate) - win_ref)
    lose_log_ratio = -(summed_nll(model, forget) - lose_ref)
    direct = -2 / 0.3 * F.logsigmoid(0.3 * (win_log_ratio - lose_log_ratio)).mean()
    assert close(altpo.loss, direct, TOL)
    assert grad_close(flat_grad(altpo.loss, model), flat_grad(direct, model), TOL)


@pytest.mark.parametrize("method,power", [("TNPO", 0.0), ("WTNPO", 1.5)])
def test_tnpo_eps_equals_the_paper_code(setup, method, power):
    """dataloader.py loss_type tnpo / wtnpo_1.5: -(w * ce)[labels != -100].mean(),
    w = 2 p^(beta + alpha) / (p^beta + p_oracle^beta + 1e-5)."""
    model, ref, forget, _ = setup
    hparams = {"beta": 4.0, "eps": 1e-5, **({"power": power} if method == "WTNPO" else {})}
    out = build_objective(ObjectiveConfig(method=method, hparams=hparams))(model, UnlearnBatch(forget=forget), ref)
    logits = model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
    with torch.no_grad():
        oracle = ref(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
    shift_labels = forget["labels"][..., 1:].reshape(-1)
    ce = F.cross_entropy(
        logits[..., :-1, :].reshape(-1, logits.size(-1)), shift_labels, ignore_index=-100, reduction="none"
    )
    ce_oracle = F.cross_entropy(
        oracle[..., :-1, :].reshape(-1, oracle.size(-1)), shift_labels, ignore_index=-100, reduction="none"
    )
    probs, probs_oracle = (-ce).exp().detach(), (-ce_oracle).exp().detach()
    weights = 2 * probs ** (4.0 + power) / (probs**4.0 + probs_oracle**4.0 + 1e-5)
    direct = -(weights * ce)[shift_labels != -100].mean()
    assert close(out.forget_loss, direct, TOL)
    assert grad_close(flat_grad(out.loss, model), flat_grad(direct, model), TOL)
