"""`--model file.gguf`: a tiny float32 Llama written to GGUF by this test with the `gguf` package (llama.cpp's
tensor names and its q/k permutation, transcribed here) loads back with the logits of the model it was written
from, and its tokenizer and chat template survive the conversion into a plain model folder."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

CHAT_TEMPLATE = "{% for m in messages %}<|user|>{{ m['content'] }}\n{% endfor %}<|assistant|>"


def _byte_level_vocab() -> tuple[list[str], list[str]]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    merges = ["Ġ t", "h e", "Ġt he"]
    tokens = chars + ["Ġt", "he", "Ġthe", "<|endoftext|>"]
    return tokens, merges


def _llama_cpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp convert_hf_to_gguf.py LlamaModel.permute: rotary halves interleaved per head.
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _reference_model(vocab_size: int, tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=tied,
        bos_token_id=vocab_size - 1,
        eos_token_id=vocab_size - 1,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # non-trivial norms, so a misplaced norm weight would show
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.uniform_(0.5, 1.5)
    return model


def write_tiny_llama_gguf(path: Path, tied: bool = True):
    """Write a tiny Llama to `path` as float32 GGUF; returns the model it was written from."""
    tokens, merges = _byte_level_vocab()
    model = _reference_model(len(tokens), tied)
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-test-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.NORMAL] * (len(tokens) - 1) + [gguf.TokenType.CONTROL])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(len(tokens) - 1)
    writer.add_eos_token_id(len(tokens) - 1)
    writer.add_chat_template(CHAT_TEMPLATE)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        stem, suffix = hf_name.rsplit(".", 1)
        data = tensor.detach().numpy().astype(np.float32)
        if stem.endswith("q_proj"):
            data = _llama_cpp_permute(data, config.num_attention_heads)
        elif stem.endswith("k_proj"):
            data = _llama_cpp_permute(data, config.num_key_value_heads)
        writer.add_tensor(f"{names.get_name(stem)}.{suffix}", np.ascontiguousarray(data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("GEFFECT_CACHE", str(folder))
    return folder


@pytest.mark.parametrize("tied", [True, False])
def test_gguf_file_loads_with_the_logits_it_was_written_from(tmp_path, cache, tied):
    from geffect.models.loading import load_model_and_tokenizer

    path = tmp_path / "tiny.gguf"
    reference = write_tiny_llama_gguf(path, tied=tied)
    model, tokenizer = load_model_and_tokenizer(str(path))
    ids = torch.tensor([[5, 17, 200, 3, 99, 256, 257, 258, 1]])
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
        got = model(input_ids=ids).logits
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert model.config.tie_word_embeddings == tied
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.decode(tokenizer(" the cat")["input_ids"]) == " the cat"
    converted = list((cache / "gguf").iterdir())
    assert len(converted) == 1 and (converted[0] / "model.safetensors").exists()


def test_a_folder_holding_one_gguf_loads_and_converts_once(tmp_path, cache):
    from geffect.models.loading import load_model, resolve_model_source

    folder = tmp_path / "download"
    folder.mkdir()
    reference = write_tiny_llama_gguf(folder / "model.gguf")
    first = resolve_model_source(str(folder))
    stamp = (Path(first) / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_source(str(folder / "model.gguf")) == first  # same content: the same converted folder
    assert (Path(first) / "model.safetensors").stat().st_mtime_ns == stamp  # not converted again
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(load_model(str(folder))(input_ids=ids).logits, reference(input_ids=ids).logits)


def test_gguf_errors_are_one_line(tmp_path, cache):
    from geffect.errors import UsageError
    from geffect.models.loading import check_model_source

    with pytest.raises(UsageError, match="does not exist"):
        check_model_source(str(tmp_path / "absent.gguf"))
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file at all")
    with pytest.raises(UsageError, match="could not read GGUF file"):
        check_model_source(str(broken))
    two = tmp_path / "two"
    two.mkdir()
    (two / "a.gguf").write_bytes(b"x")
    (two / "b.gguf").write_bytes(b"x")
    with pytest.raises(UsageError, match="several GGUF files"):
        check_model_source(str(two))


def test_unlearn_accepts_a_gguf_model(tmp_path, cache, tiny_benchmark, caplog):
    """`geffect unlearn --model file.gguf` runs (one step), records the template it chose, and its checkpoint
    of a tied-embedding model saves without accelerate's shared-tensor notice and loads back re-tied."""
    import yaml
    from accelerate import Accelerator

    from geffect.cli.main import main
    from geffect.models.loading import load_model
    from geffect.training.checkpoint import latest_checkpoint

    path = tmp_path / "tiny-instruct.gguf"
    write_tiny_llama_gguf(path)
    out = tmp_path / "run"
    argv = ["unlearn", "--model", str(path), "--data", str(tiny_benchmark), "--forget", "forget01", "--lr", "1e-3"]
    argv += ["--method", "GA", "--max-steps", "1", "--batch-size", "2", "--grad-accum", "1", "--out", str(out)]
    with caplog.at_level(logging.WARNING):
        assert main([*argv, "--no-progress", "--save-every", "1", "--warmup-epochs", "0"]) == 0
    assert not [r for r in caplog.records if "Removed shared tensor" in r.getMessage()]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["resolved"]["template"] == "chat"  # "instruct" in the name, and the file has a chat template
    from geffect.data.templates import template_for_model

    assert template_for_model(str(out / "model")).name == "chat"  # RUN/model: the run's recorded template

    fresh = load_model(str(path))
    accelerator = Accelerator(cpu=True)
    fresh = accelerator.prepare(fresh)
    accelerator.load_state(str(latest_checkpoint(out)))
    final = load_model(str(out / "model"))
    assert fresh.lm_head.weight.data_ptr() == fresh.model.embed_tokens.weight.data_ptr()
    changed = not torch.equal(fresh.model.embed_tokens.weight, load_model(str(path)).model.embed_tokens.weight)
    assert changed  # the step moved the tied weights, and the checkpoint holds the moved ones
    for name, tensor in final.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[name], tensor, rtol=0, atol=0)
