"""Load any causal LM and its tokenizer by hub id, local `save_pretrained` folder, `.gguf` file (or a folder
holding one) or model name (`geffect models list`).

A GGUF file or a name resolves to a plain `save_pretrained` folder (converted once, see `models/gguf.py`), so
everything downstream sees one kind of model folder. Remote code is never run unless the caller asks
(`trust_remote_code=False` by default).
"""

from __future__ import annotations

from pathlib import Path

import torch

from geffect.errors import UsageError
from geffect.models.validate import check_hub_id, check_model_folder

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _looks_local(name_or_path: str) -> bool:
    return name_or_path.startswith((".", "/", "~")) or Path(name_or_path).exists()


def resolve_model_source(name_or_path: str) -> str:
    """The folder or hub id to load: a model name resolves to its fetched folder, a `.gguf` file (or a folder
    holding one and no config.json) to its converted folder; anything else is returned unchanged."""
    from geffect.models.gguf import find_gguf, resolve_gguf
    from geffect.models.named import NAMED_MODELS, resolve_named

    if name_or_path in NAMED_MODELS and not Path(name_or_path).exists():
        return str(resolve_named(name_or_path))
    if _looks_local(name_or_path):
        gguf = find_gguf(name_or_path)
        if gguf is not None:
            return str(resolve_gguf(gguf))
    if name_or_path.lower().endswith(".gguf"):
        raise UsageError(f"GGUF file {name_or_path} does not exist; pass an existing .gguf file")
    return name_or_path


def check_model_source(name_or_path: str, need_tokenizer: bool = True) -> None:
    """Fail with one line when a local model folder is missing or incomplete."""
    name_or_path = resolve_model_source(name_or_path)
    if not _looks_local(name_or_path):
        check_hub_id(name_or_path)  # a missing local folder never reaches the hub
        return
    folder = Path(name_or_path).expanduser()
    if not folder.is_dir():
        raise UsageError(
            f"model folder {folder} does not exist; pass a save_pretrained folder, a .gguf file, a hub id or a "
            "model name (geffect models list)"
        )
    if not (folder / "config.json").exists():
        raise UsageError(f"{folder} has no config.json; pass a save_pretrained model folder")
    check_model_folder(folder)  # a causal LM transformers knows, complete weights
    if need_tokenizer and not any(
        (folder / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    ):
        raise UsageError(
            f"{folder} has no tokenizer files; save the tokenizer next to the model (tokenizer.save_pretrained)"
        )


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise UsageError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}") from None


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    name_or_path = resolve_model_source(name_or_path)
    check_model_source(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise UsageError(f"could not load a tokenizer from {name_or_path!r}: {str(err).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name_or_path: str, dtype: str | torch.dtype | None = None, trust_remote_code: bool = False):
    """A causal LM in eval mode; `dtype` None keeps float32 (the safe default on CPU)."""
    from transformers import AutoModelForCausalLM

    name_or_path = resolve_model_source(name_or_path)
    check_model_source(name_or_path, need_tokenizer=False)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, dtype=resolve_dtype(dtype) or torch.float32, trust_remote_code=trust_remote_code
        )
    except OSError as err:
        raise UsageError(f"could not load a model from {name_or_path!r}: {str(err).splitlines()[0]}") from None
    return model.eval()


def load_model_and_tokenizer(
    name_or_path: str, dtype: str | torch.dtype | None = None, trust_remote_code: bool = False
):
    tokenizer = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code)
    return load_model(name_or_path, dtype=dtype, trust_remote_code=trust_remote_code), tokenizer
