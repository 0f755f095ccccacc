"""The one-time GGUF conversion: each file parsed once, the same folder as transformers' own three parses, and
gguf's functions restored afterwards; the tokenizer hash memo follows the tokenizer."""

from __future__ import annotations

import filecmp

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")


def _tiny_gguf(path):
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_tensor("token_embd.weight", np.arange(12, dtype=np.float32).reshape(3, 4))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_each_file_is_parsed_once_inside_the_block_and_the_originals_come_back(tmp_path):
    from lamina.capture.gguf_files import _parsed_once

    path = _tiny_gguf(tmp_path / "tiny.gguf")
    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with _parsed_once():
        first, again = gguf.GGUFReader(path), gguf.GGUFReader(str(path))
        assert first is again  # one parse per file
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
        fresh = reader(path)
        assert list(first.fields) == list(fresh.fields)
        np.testing.assert_array_equal(first.tensors[0].data, fresh.tensors[0].data)
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (reader, name_map)
    with pytest.raises(RuntimeError):
        with _parsed_once():
            raise RuntimeError("a failed conversion")
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (reader, name_map)  # restored on errors too


@pytest.mark.slow
def test_conversion_equals_transformers_own_parses(tmp_path, monkeypatch):
    # The memo changes no byte: weights, config and tokenizer files equal a conversion without it.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lamina.capture.gguf_files import converted_gguf, default_gguf_path

    monkeypatch.setenv("LAMINA_CACHE_DIR", str(tmp_path / "cache"))
    src = default_gguf_path()
    folder, _ = converted_gguf(src)
    plain = tmp_path / "plain"
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    hf = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    del hf.config.quantization_config
    hf.hf_quantizer, hf.is_quantized = None, False
    hf.save_pretrained(plain)
    tok.save_pretrained(plain)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"):
        assert filecmp.cmp(folder / name, plain / name, shallow=False), name


def test_tokenizer_hash_is_remembered_until_the_vocabulary_changes(tiny_models):
    import copy
    from types import SimpleNamespace

    from lamina.capture.run import _tokenizer_hash

    holder = SimpleNamespace(tokenizer=copy.deepcopy(tiny_models["gpt2"].tokenizer))  # the hash reads only this
    before = _tokenizer_hash(holder)
    assert _tokenizer_hash(holder) == before == _tokenizer_hash(tiny_models["gpt2"])
    holder.tokenizer.add_tokens(["<lamina-test-token>"])
    assert _tokenizer_hash(holder) != before  # a new token: hashed again
