"""Checks of a model source before anything heavy is loaded: each failure is one UsageError line.

- a bare name that is neither an existing path nor shaped like a hub id (`owner/name`) is a missing local
  folder, said so at once (it would otherwise spend half a minute on hub retries before a hub error);
- a local folder's config.json must parse and name a causal LM that transformers knows: an unknown
  `model_type` (remote code through `auto_map` is never run), an encoder such as DistilBERT, or BERT without
  `is_decoder` (transformers would train it as a causal LM with bidirectional attention) is refused;
- every `*.safetensors` file must have a complete header and the length it declares (a truncated copy).
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

from geffect.errors import UsageError

# owner/name, as the hub spells its ids (legacy one-word ids such as gpt2 now live under an owner too)
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_hub_id(name: str) -> None:
    """A source that is not local must look like a hub id; anything else is a folder that does not exist."""
    if not HUB_ID.match(name):
        raise UsageError(
            f"model folder {name} does not exist (and is not a hub id such as microsoft/phi-1_5); check the path"
        )


def check_model_folder(folder: str | Path) -> None:
    """config.json names a known causal LM, and the safetensors files are complete."""
    folder = Path(folder)
    check_model_config(folder / "config.json")
    for weights in sorted(folder.glob("*.safetensors")):
        check_safetensors(weights)


def check_model_config(path: Path) -> None:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"{path} is not readable JSON ({err}); restore the model folder") from None
    kind = config.get("model_type") if isinstance(config, dict) else None
    if kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        if isinstance(config, dict) and config.get("auto_map"):
            raise UsageError(
                f"{path.parent} needs its own code (model_type {kind!r} with auto_map); geffect never runs remote "
                "code: convert the model to a transformers architecture"
            )
        raise UsageError(
            f"{path.parent} has model_type {kind!r}, which is not a causal language model transformers knows; "
            "pass a decoder-only (causal) LM such as Llama, Phi or GPT-2"
        )
    if kind in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not config.get("is_decoder"):
        raise UsageError(
            f"{path.parent} is an encoder ({kind}, is_decoder false), not a causal language model; pass a "
            "decoder-only LM such as Llama, Phi or GPT-2"
        )


def check_safetensors(path: Path) -> None:
    """The header parses and the file is as long as the header says (8-byte length, JSON, then the data)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            if header_len > size - 8:
                raise ValueError("the header is cut off")
            header = json.loads(handle.read(header_len))
        ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error) as err:
        raise UsageError(f"{path} is not a valid safetensors file ({err}); restore or re-save the model") from None
    if 8 + header_len + max(ends, default=0) > size:
        raise UsageError(f"{path} is truncated ({size} bytes, its header needs more); restore or re-save the model")
