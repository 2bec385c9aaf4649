"""GGUF model files: converted once into an ordinary `save_pretrained` folder (safetensors, fp32, tokenizer).

Transformers' GGUF loader dequantizes a `.gguf` file into a float model, but marks it quantized and then
refuses `save_pretrained`; and dequantizing on every load costs seconds. So a GGUF file is converted once:
the model class is built from its config without the quantization entry, given the dequantized state dict,
and saved with its tokenizer (chat template kept) into a cache folder keyed by the file's content. Every later
`--model file.gguf` resolves to that folder, so training, checkpoints, evaluation and the reference model all
see one plain model folder.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

from geffect.errors import UsageError

CACHE_ENV = "GEFFECT_CACHE"
GGUF_SUFFIX = ".gguf"


def cache_root() -> Path:
    """Where converted models live: $GEFFECT_CACHE, else $XDG_CACHE_HOME/geffect, else ~/.cache/geffect."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "geffect"


def find_gguf(path: str | Path) -> Path | None:
    """The GGUF file `path` names: the file itself, or the one `.gguf` file of a folder without config.json."""
    path = Path(path).expanduser()
    if path.is_file() and path.suffix.lower() == GGUF_SUFFIX:
        return path
    if path.is_dir() and not (path / "config.json").exists():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() == GGUF_SUFFIX)
        if len(files) > 1:
            names = ", ".join(p.name for p in files)
            raise UsageError(f"{path} holds several GGUF files ({names}); pass one of them as --model")
        return files[0] if files else None
    return None


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()[:16]


def converted_folder(gguf: Path) -> Path:
    """The cache folder of one GGUF file's conversion (named by the file's stem and content hash)."""
    return cache_root() / "gguf" / f"{gguf.stem}-{_digest(gguf)}"


def resolve_gguf(gguf: Path) -> Path:
    """The converted folder of `gguf`, converting it first when the cache has none."""
    folder = converted_folder(gguf)
    if not (folder / "config.json").exists():
        print(f"geffect: converting {gguf.name} into {folder} (once)", file=sys.stderr)
        convert_gguf(gguf, folder)
    return folder


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Write `gguf` as a float32 `save_pretrained` folder at `out` (atomically: a temporary folder renamed)."""
    try:
        import gguf as _gguf_package  # noqa: F401  (transformers needs it; fail with a line saying so)
    except ImportError:
        raise UsageError("reading .gguf files needs the gguf package: pip install gguf") from None
    model, tokenizer = _dequantized(gguf)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as scratch:
        staging = Path(scratch) / "model"
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if out.exists():  # another process converted it meanwhile: keep theirs
            return out
        os.replace(staging, out)
    return out


def _dequantized(gguf: Path):
    """The model of `gguf` as an ordinary (unquantized) float32 model, and its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    try:
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise UsageError(f"could not read GGUF file {gguf}: {str(err).splitlines()[0]}") from None
    for attribute in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    config.dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())  # strict: every tensor of the file has its place
    return plain.eval(), tokenizer
