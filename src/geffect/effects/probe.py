"""The tracker's default sets from the run's data: the retain probe and (for `full`) the forget set."""

from __future__ import annotations

import torch

from geffect.effects.config import TrackerConfig
from geffect.errors import UsageError
from geffect.tokens import Batch


def default_sets(
    run, config: TrackerConfig, probe: bool, forget: bool
) -> tuple[list[Batch] | None, list[Batch] | None]:
    """(retain probe, forget set), each only when asked for, encoded like the training items (`run.template`,
    `run.options.max_length`). The probe: `probe_size` items of the retain split drawn with the run's seed
    (`torch.randperm`, first N, in split order), in batches of `probe_batch_size`."""
    from geffect.data.collate import collate, pad_token_id
    from geffect.data.tofu import RETAIN_FOR_FORGET, load_split
    from geffect.training.batches import encode_records

    options = run.options
    if options is None or run.template is None:
        raise UsageError("G-effect tracking needs a retain probe: pass probe_batches or run through `geffect unlearn`")
    encode = dict(tokenizer=run.tokenizer, template=run.template, max_length=int(options.max_length))
    pad = pad_token_id(run.tokenizer)
    size = config.probe_batch_size
    device = next(run.model.parameters()).device

    def batches(items):
        return [
            {k: v.to(device) for k, v in collate(items[i : i + size], pad).items()} for i in range(0, len(items), size)
        ]

    probe_batches = forget_batches = None
    if probe:
        records = load_split(options.data, RETAIN_FOR_FORGET[options.forget])
        generator = torch.Generator().manual_seed(int(options.seed))
        chosen = torch.randperm(len(records), generator=generator)[: config.probe_size].sort().values.tolist()
        items = encode_records(records=records, **encode)
        probe_batches = batches([items[i] for i in chosen])
    if forget:
        records = load_split(options.data, options.forget)
        forget_batches = batches(encode_records(records=records, **encode))
    return probe_batches, forget_batches
