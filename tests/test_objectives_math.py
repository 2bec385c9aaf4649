"""Objectives against closed forms and direct computations written independently here (float64, tiny Llama)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from geffect.objectives import ObjectiveConfig, UnlearnBatch, build_objective

VOCAB = 64


# Llama computes RMSNorm and the attention softmax in float32 even in a float64 model, so gradients through it
# agree to ~1e-7 only; GPT-2 runs fully in float64 and is checked to ~1e-10. Both architectures are tested.
TOLERANCES = {"gpt2": dict(rtol=1e-9, atol=1e-14), "llama": dict(rtol=2e-6, atol=1e-10)}


def tiny_model(seed: int = 0, arch: str = "llama"):
    torch.manual_seed(seed)
    if arch == "gpt2":
        config = GPT2Config(
            vocab_size=VOCAB,
            n_embd=16,
            n_layer=2,
            n_head=2,
            n_positions=64,
            initializer_range=0.3,
            bos_token_id=1,
            eos_token_id=2,
            attn_implementation="eager",
        )
        return GPT2LMHeadModel(config).to(torch.float64).eval()
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.3,  # peaked enough that token probabilities and weights vary
        attn_implementation="eager",
    )
    return LlamaForCausalLM(config).to(torch.float64).eval()


def perturbed(model: LlamaForCausalLM, seed: int = 1, scale: float = 0.1) -> LlamaForCausalLM:
    ref = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return ref.requires_grad_(False)


def random_batch(seed: int, n_items: int = 3, prompt=(2, 4), answer=(2, 5)) -> dict[str, torch.Tensor]:
    """Right-padded QA batch: prompt and padding labels are -100, padding has attention 0."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n_items):
        n_prompt = int(torch.randint(prompt[0], prompt[1] + 1, (1,), generator=gen))
        n_answer = int(torch.randint(answer[0], answer[1] + 1, (1,), generator=gen))
        ids = torch.randint(1, VOCAB, (n_prompt + n_answer,), generator=gen)
        rows.append((ids, n_prompt))
    width = max(len(ids) for ids, _ in rows) + 1  # at least one padding column
    input_ids = torch.zeros(n_items, width, dtype=torch.long)
    labels = torch.full((n_items, width), -100, dtype=torch.long)
    attention = torch.zeros(n_items, width, dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(rows):
        input_ids[i, : len(ids)] = ids
        labels[i, n_prompt : len(ids)] = ids[n_prompt:]
        attention[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels, "index": torch.arange(n_items)}


def logits_of(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def answer_tokens(batch):
    """(item, position) pairs of valid labels, position >= 1 (the token predicted by logits at position-1)."""
    labels = batch["labels"]
    return [(i, t) for i in range(labels.shape[0]) for t in range(1, labels.shape[1]) if labels[i, t] != -100]


def token_logprobs(logits, batch):
    """{(i, t): log p(label_t | prefix)} by explicit indexing, one token at a time."""
    return {(i, t): torch.log_softmax(logits[i, t - 1], dim=-1)[batch["labels"][i, t]] for i, t in answer_tokens(batch)}


def seq_nll(logp, batch):
    return [sum(-v for (i, _), v in logp.items() if i == item) for item in range(batch["labels"].shape[0])]


def n_answer(batch, item):
    return sum(1 for i, _ in answer_tokens(batch) if i == item)


def flat_grad(scalar, model):
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(scalar, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


def hf_risk(model, batch):
    """Mean token NLL over the batch's valid labels, token by token (HF's own loss upcasts only to float32)."""
    with torch.no_grad():
        logp = token_logprobs(logits_of(model, batch), batch)
    return -torch.stack(list(logp.values())).mean()


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def setup(request):
    model = tiny_model(0, request.param)
    return model, perturbed(model), random_batch(10), random_batch(11), random_batch(12)


@pytest.fixture(scope="module")
def tol(setup):
    return TOLERANCES["gpt2" if isinstance(setup[0], GPT2LMHeadModel) else "llama"]


def grad_close(got, expected, tol) -> bool:
    """Gradient vectors agree in norm: |got - expected| <= rtol |expected| + atol."""
    return bool((got - expected).norm() <= tol["rtol"] * expected.norm() + tol["atol"])


def close(a, b, tol) -> bool:
    return torch.allclose(torch.as_tensor(a), torch.as_tensor(b, dtype=torch.as_tensor(a).dtype), **tol)


# ---- token-weighted objectives: gradient = mean_t sg(w_t) * grad(-ce_t) --------------------------------


def wga_w(p, p_ref, hp):
    return p ** hp["beta"]


def tnpo_w(p, p_ref, hp):
    # The paper code (G-effect dataloader.py, loss_type tnpo): 2 * probs**beta / (probs**beta + oracle**beta + 1e-5).
    return 2 * p ** hp["beta"] / (p ** hp["beta"] + p_ref ** hp["beta"] + hp["eps"])


def wtnpo_w(p, p_ref, hp):
    return p ** hp["power"] * tnpo_w(p, p_ref, hp)


def satimp_w(p, p_ref, hp):
    return p ** hp["beta1"] * (1 - p) ** hp["beta2"]


TOKEN_WEIGHTED = [
    ("WGA", wga_w, {"beta": 1.0}, {}),
    ("WGA", wga_w, {"beta": 5.0}, {"beta": 5.0}),
    ("TNPO", tnpo_w, {"beta": 4.0, "eps": 0.0}, {}),
    ("TNPO", tnpo_w, {"beta": 0.7, "eps": 0.0}, {"beta": 0.7}),
    ("TNPO", tnpo_w, {"beta": 4.0, "eps": 1e-5}, {"eps": 1e-5}),
    ("TNPO", tnpo_w, {"beta": 1.0, "eps": 0.3}, {"beta": 1.0, "eps": 0.3}),
    ("WTNPO", wtnpo_w, {"beta": 4.0, "power": 1.5, "eps": 0.0}, {}),
    ("WTNPO", wtnpo_w, {"beta": 2.0, "power": 0.5, "eps": 0.0}, {"beta": 2.0, "power": 0.5}),
    ("WTNPO", wtnpo_w, {"beta": 4.0, "power": 1.5, "eps": 1e-5}, {"eps": 1e-5}),
    ("SatImp", satimp_w, {"beta1": 5.0, "beta2": 1.0}, {}),
    ("SatImp", satimp_w, {"beta1": 1.0, "beta2": 2.0}, {"beta1": 1.0, "beta2": 2.0}),
]


@pytest.mark.parametrize("method,weight_fn,hp,given", TOKEN_WEIGHTED)
def test_token_weighted_gradient_is_weighted_ga(setup, tol, method, weight_fn, hp, given):
    model, ref, forget, _, _ = setup
    objective = build_objective(ObjectiveConfig(method=method, hparams=given))
    assert dict(objective.config.hparams) == hp and objective.weighted
    out = objective(model, UnlearnBatch(forget=forget), ref)
    got = flat_grad(out.loss, model)

    logp = token_logprobs(logits_of(model, forget), forget)
    with torch.no_grad():
        logp_ref = token_logprobs(logits_of(ref, forget), forget)
    expected = torch.zeros_like(got)
    weights = torch.zeros(forget["labels"].shape, dtype=torch.float64)
    for key, lp in logp.items():
        w = weight_fn(math.exp(lp.item()), math.exp(logp_ref[key].item()), hp)
        weights[key] = w
        expected += w * flat_grad(lp, model)  # grad(-ce_t) = grad(log p_t)
    expected /= len(logp)

    assert grad_close(got, expected, tol)
    assert expected.norm() > 0 and weights.max() > 0  # the check is not vacuous
    assert torch.allclose(out.token_weights, weights, rtol=1e-10, atol=1e-15)
    assert out.item_weights is None and out.retain_loss is None


# ---- sequence-level objectives ------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_npo_gradient_is_ga_reweighted_per_sequence(setup, tol, beta):
    model, ref, forget, _, _ = setup
    objective = build_objective(ObjectiveConfig(method="NPO", hparams={"beta": beta}))
    out = objective(model, UnlearnBatch(forget=forget), ref)
    got = flat_grad(out.loss, model)

    s = seq_nll(token_logprobs(logits_of(model, forget), forget), forget)
    with torch.no_grad():
        s_ref = seq_nll(token_logprobs(logits_of(ref, forget), forget), forget)
    expected = torch.zeros_like(got)
    weights = []
    for s_i, s_ref_i in zip(s, s_ref):
        p, p_ref = math.exp(-s_i.item()), math.exp(-s_ref_i.item())
        w = 2 * p**beta / (p**beta + p_ref**beta)
        weights.append(w)
        expected += w * flat_grad(-s_i, model)
    expected /= len(s)
    assert grad_close(got, expected, tol)
    assert close(out.item_weights, torch.tensor(weights, dtype=torch.float64), tol)
    direct = -(2 / beta) * sum(math.log(1 / (1 + math.exp(-beta * (a - b).item()))) for a, b in zip(s, s_ref)) / len(s)
    assert out.forget_loss.item() == pytest.approx(direct, rel=1e-10)


def test_simnpo_matches_direct_computation(setup, tol):
    model, _, forget, _, _ = setup
    beta, delta = 2.0, 0.3
    objective = build_objective(ObjectiveConfig(method="SimNPO", hparams={"beta": beta, "delta": delta}))
    assert not objective.needs_reference
    out = objective(model, UnlearnBatch(forget=forget))
    s = seq_nll(token_logprobs(logits_of(model, forget), forget), forget)
    terms = [s_i / n_answer(forget, i) - delta for i, s_i in enumerate(s)]
    direct = -(2 / beta) * sum(torch.log(torch.sigmoid(beta * m)) for m in terms) / len(terms)
    assert close(out.forget_loss, direct, tol)
    assert grad_close(flat_grad(out.loss, model), flat_grad(direct, model), tol)
    expected_w = torch.stack([2 * torch.sigmoid(-beta * m) for m in terms]).detach()
    assert close(out.item_weights, expected_w, tol)


def test_simnpo_defaults():
    assert dict(build_objective(ObjectiveConfig(method="SimNPO")).config.hparams) == {"beta": 4.5, "delta": 0.0}


@pytest.mark.parametrize("name", ["DPO", "IdkDPO"])
def test_dpo_matches_direct_computation(setup, tol, name):
    model, ref, forget, _, idk = setup
    beta = 0.5
    objective = build_objective(ObjectiveConfig(method=name, hparams={"beta": beta}))
    assert objective.name == "DPO" and objective.needs_idk and objective.needs_reference
    out = objective(model, UnlearnBatch(forget=forget, forget_idk=idk), ref)

    def summed_logp(m, b):
        return [-x for x in seq_nll(token_logprobs(logits_of(m, b), b), b)]

    win, lose = summed_logp(model, idk), summed_logp(model, forget)
    with torch.no_grad():
        win_ref, lose_ref = summed_logp(ref, idk), summed_logp(ref, forget)
    total = 0.0
    for i in range(len(win)):
        h = beta * ((win[i] - win_ref[i]) - (lose[i] - lose_ref[i]))
        total = total - (2 / beta) * F.logsigmoid(h)
    direct = total / len(win)
    assert close(out.forget_loss, direct, tol)
    assert grad_close(flat_grad(out.loss, model), flat_grad(direct, model), tol)
    assert close(out.forget_risk, hf_risk(model, forget), tol)


def test_idkpo_is_refusal_nll(setup, tol):
    model, _, forget, _, idk = setup
    objective = build_objective(ObjectiveConfig(method="PO"))
    assert objective.name == "IdkPO" and objective.needs_idk and not objective.needs_reference
    out = objective(model, UnlearnBatch(forget=forget, forget_idk=idk))
    assert close(out.forget_loss, hf_risk(model, idk), tol)
    assert out.forget_risk is None


@pytest.mark.parametrize("beta", [10.0, 2.0])
def test_undial_matches_direct_computation(setup, tol, beta):
    model, ref, forget, _, _ = setup
    objective = build_objective(ObjectiveConfig(method="UNDIAL", hparams={"beta": beta}))
    out = objective(model, UnlearnBatch(forget=forget), ref)
    logits = logits_of(model, forget)
    with torch.no_grad():
        ref_logits = logits_of(ref, forget)
    terms = []
    for i, t in answer_tokens(forget):
        z = ref_logits[i, t - 1].clone()
        z[forget["labels"][i, t]] -= beta
        target = torch.softmax(z, dim=-1)
        terms.append(-(target * torch.log_softmax(logits[i, t - 1], dim=-1)).sum())
    direct = torch.stack(terms).mean()
    assert close(out.forget_loss, direct, tol)
    assert grad_close(flat_grad(out.loss, model), flat_grad(direct, model), tol)


# ---- retain losses -------------------------------------------------------------------------------------


def kl_at(ref_row, row):
    log_ref, log_p = torch.log_softmax(ref_row, dim=-1), torch.log_softmax(row, dim=-1)
    return (log_ref.exp() * (log_ref - log_p)).sum()


@pytest.mark.parametrize("kl_mask", ["answer", "all"])
def test_kl_retain_matches_direct_computation(setup, tol, kl_mask):
    model, ref, forget, retain, _ = setup
    objective = build_objective(ObjectiveConfig(method="GA", retain_loss="KL", alpha=1.0, kl_mask=kl_mask))
    assert objective.needs_reference and objective.needs_retain
    out = objective(model, UnlearnBatch(forget=forget, retain=retain), ref)
    logits = logits_of(model, retain)
    with torch.no_grad():
        ref_logits = logits_of(ref, retain)
    if kl_mask == "answer":
        positions = [(i, t - 1) for i, t in answer_tokens(retain)]
    else:  # every position of every row, padding included
        positions = [(i, t) for i in range(logits.shape[0]) for t in range(logits.shape[1])]
    direct = torch.stack([kl_at(ref_logits[i, t], logits[i, t]) for i, t in positions]).mean()
    assert close(out.retain_loss, direct, tol)
    assert grad_close(flat_grad(out.retain_loss, model), flat_grad(direct, model), tol)
    assert close(out.retain_risk, hf_risk(model, retain), tol)
    assert out.retain_risk.requires_grad


def test_kl_masks_differ_and_vanish_at_reference(setup, tol):
    model, ref, forget, retain, _ = setup
    batch = UnlearnBatch(forget=forget, retain=retain)
    answer = build_objective(ObjectiveConfig(method="GA", retain_loss="KL"))(model, batch, ref).retain_loss
    full = build_objective(ObjectiveConfig(method="GA", retain_loss="KL", kl_mask="all"))(model, batch, ref).retain_loss
    assert not torch.allclose(answer, full)
    same = build_objective(ObjectiveConfig(method="GA", retain_loss="KL"))(model, batch, model).retain_loss
    assert abs(same.item()) < 1e-12


def test_ga_and_gamma_alpha_combination(setup, tol):
    model, _, forget, retain, _ = setup
    ga = build_objective(ObjectiveConfig(method="GA"))
    out = ga(model, UnlearnBatch(forget=forget))
    assert not ga.needs_reference and not ga.needs_retain and ga.config.retain_loss == "none"
    assert torch.equal(out.forget_loss, -out.forget_risk) and torch.equal(out.loss, out.forget_loss)
    assert close(out.forget_risk, hf_risk(model, forget), tol)
    assert out.forget_risk.requires_grad and out.retain_risk is None

    gd = build_objective(ObjectiveConfig(method="GD", gamma=0.7, alpha=2.5))
    assert gd.config.retain_loss == "NLL" and gd.needs_retain and not gd.needs_reference
    out = gd(model, UnlearnBatch(forget=forget, retain=retain))
    r_f, r_r = hf_risk(model, forget), hf_risk(model, retain)
    assert close(out.forget_risk, r_f, tol) and close(out.retain_risk, r_r, tol)
    assert close(out.retain_loss, r_r, tol)
    assert close(out.loss, 0.7 * -r_f + 2.5 * r_r, tol)
    # The gradient combines the same way.
    g_f = flat_grad(build_objective(ObjectiveConfig(method="GA"))(model, UnlearnBatch(forget=forget)).loss, model)
    g_r = flat_grad(out.retain_risk, model)
    assert grad_close(flat_grad(out.loss, model), 0.7 * g_f + 2.5 * g_r, tol)


@pytest.mark.parametrize("method", ["NPO", "SimNPO", "WGA", "TNPO", "WTNPO", "SatImp", "UNDIAL", "RMU"])
def test_risks_equal_hf_loss(setup, tol, method):
    model, ref, forget, retain, _ = setup
    objective = build_objective(ObjectiveConfig(method=method, retain_loss="NLL" if method != "RMU" else None))
    objective.setup(model, torch.Generator().manual_seed(0))
    out = objective(model, UnlearnBatch(forget=forget, retain=retain), ref)
    assert close(out.forget_risk, hf_risk(model, forget), tol)
    assert close(out.retain_risk, hf_risk(model, retain), tol)
    assert out.forget_risk.requires_grad and out.retain_risk.requires_grad
    assert close(out.loss, out.forget_loss + out.retain_loss, tol)


# ---- RMU -----------------------------------------------------------------------------------------------


def rmu_direct(hidden, target, batch):
    per_item = []
    for i in range(hidden.shape[0]):
        rows = [
            ((hidden[i, t] - target[i, t] if target.dim() == 3 else hidden[i, t] - target) ** 2).mean()
            for t in range(hidden.shape[1])
            if batch["labels"][i, t] != -100
        ]
        per_item.append(torch.stack(rows).mean())
    return torch.stack(per_item).mean()


def layer_output(model, batch, layer):
    # hidden_states[layer + 1] is the output of decoder layer `layer` (not the last one, which is normed)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    return out.hidden_states[layer + 1]


@pytest.mark.parametrize("normalize", [1.0, 0.0])
def test_rmu_matches_direct_computation(setup, tol, normalize):
    model, ref, forget, retain, _ = setup
    c = 3.0
    objective = build_objective(ObjectiveConfig(method="RMU", hparams={"steering_coeff": c, "normalize": normalize}))
    assert objective.config.retain_loss == "MSE" and objective.needs_reference and objective.needs_retain
    objective.setup(model, torch.Generator().manual_seed(5))
    u = objective.state_dict()["u"].double()
    assert u.shape == (16,) and (u >= 0).all()
    if normalize:
        assert u.norm().item() == pytest.approx(1.0, abs=1e-6)
    else:
        assert (u < 1).all() and u.norm().item() > 1.0  # raw U[0,1)^16
    out = objective(model, UnlearnBatch(forget=forget, retain=retain), ref)

    layer = 0  # the default -1 resolves to 7/32 of 2 layers -> 0
    forget_direct = rmu_direct(layer_output(model, forget, layer), c * u, forget)
    with torch.no_grad():
        ref_hidden = layer_output(ref, retain, layer)
    retain_direct = rmu_direct(layer_output(model, retain, layer), ref_hidden, retain)
    assert close(out.forget_loss, forget_direct, tol)
    assert close(out.retain_loss, retain_direct, tol)
    assert grad_close(flat_grad(out.loss, model), flat_grad(forget_direct + retain_direct, model), tol)


def test_rmu_state_is_seeded_and_resumable(setup, tol):
    model, ref, forget, retain, _ = setup
    config = ObjectiveConfig(method="RMU", hparams={"layer": 1})
    a, b, c = (build_objective(config) for _ in range(3))
    a.setup(model, torch.Generator().manual_seed(7))
    b.setup(model, torch.Generator().manual_seed(7))
    assert torch.equal(a.state_dict()["u"], b.state_dict()["u"])
    c.setup(model, torch.Generator().manual_seed(8))
    assert not torch.equal(a.state_dict()["u"], c.state_dict()["u"])
    c.load_state_dict(a.state_dict())
    batch = UnlearnBatch(forget=forget, retain=retain)
    assert torch.equal(a(model, batch, ref).loss, c(model, batch, ref).loss)
    with pytest.raises(RuntimeError, match="setup"):
        build_objective(config)(model, batch, ref)


def test_bf16_model_losses_in_float32():
    model = tiny_model(3).to(torch.bfloat16)
    batch = random_batch(4)
    out = build_objective(ObjectiveConfig(method="WGA"))(model, UnlearnBatch(forget=batch))
    assert out.forget_risk.dtype == torch.float32 and out.loss.dtype == torch.float32
    logits = logits_of(model, batch).double()
    lp = token_logprobs(logits, batch)
    assert out.forget_risk.item() == pytest.approx(-sum(v.item() for v in lp.values()) / len(lp), rel=1e-5)
