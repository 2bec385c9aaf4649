"""OpenUnlearning's gradient-norm membership attack (d3d7cf9, src/evals/metrics/mia/gradnorm.py GradNormAttack).

Per item: loss = -mean of the answer tokens' log-probabilities, EOS excluded (evals/metrics/utils.py
tokenwise_logprobs); one backward; score = the mean over parameters (with a gradient) of ||grad||_p, p = 2. A
larger norm looks less like a member. The model's own gradients are saved and restored around the attack.
"""

from __future__ import annotations

from typing import Sequence

import torch

from geffect.data.collate import collate, encode_qa, pad_token_id
from geffect.data.templates import Template
from geffect.tokens import IGNORE_INDEX


def gradnorm_score(model, batch: dict[str, torch.Tensor], p: float = 2.0) -> float:
    """The attack score of one item (a batch of one), as GradNormAttack.compute_batch_values."""
    params = [param for param in model.parameters() if param.requires_grad]
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logprobs = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)[:, :-1]
    labels = batch["labels"][:, 1:]
    target = logprobs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)[0]
    keep = (labels[0] != IGNORE_INDEX).nonzero(as_tuple=True)[0][:-1]  # EOS left out, as tokenwise_logprobs
    (-target[keep].mean()).backward()
    norms = [param.grad.detach().norm(p=p) for param in params if param.grad is not None]
    model.zero_grad(set_to_none=True)
    return float(torch.stack(norms).mean())


def gradnorm_scores(
    model, tokenizer, template: Template, questions: Sequence[str], answers: Sequence[str], max_length: int = 512
) -> list[float]:
    """The attack score of each (question, answer), in order; the model's mode and gradients are left as found."""
    device = next(model.parameters()).device
    saved = {param: param.grad for param in model.parameters()}
    was_training = model.training
    model.train()  # GradNormAttack.compute_batch_values runs the model in train mode
    try:
        scores = []
        for index, (question, answer) in enumerate(zip(questions, answers, strict=True)):
            item = encode_qa(tokenizer, template, question, answer, index=index, max_length=max_length)
            batch = {k: v.to(device) for k, v in collate([item], pad_token_id(tokenizer)).items() if torch.is_tensor(v)}
            scores.append(gradnorm_score(model, batch))
        return scores
    finally:
        model.train(was_training)
        for param, grad in saved.items():
            param.grad = grad
