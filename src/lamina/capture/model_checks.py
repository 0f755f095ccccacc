"""What can be checked about a model before (or instead of) loading it: the device, the spec (a path that
exists, a GGUF file that is one, a local folder that is complete), and whether the Hugging Face hub answers.

Each check raises :class:`~lamina.errors.LaminaError` with one line naming the problem and the fix, so a wrong
model costs a second, and a damaged local folder is reported as damaged (not as a download problem).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import LaminaError

__all__ = ["check_device", "check_spec", "check_tokenizer", "damaged_error", "first_line", "hub_error",
           "hub_unreachable", "offline_error"]


def check_device(device: str | torch.device) -> torch.device:
    """The torch device ``device`` names, if this machine has it.

    Raises:
        LaminaError: not a device name (``"tpu"``), or a device this machine lacks (``"cuda:7"``, ``"mps"``).
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise LaminaError(f"device {str(device)!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "meta":
        raise LaminaError("device 'meta' holds no weights, so nothing can be captured; use --device cpu")
    backend = torch.backends.mps if dev.type == "mps" else getattr(torch, dev.type, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise LaminaError(f"device {str(device)!r} is not available on this machine (torch {torch.__version__} "
                          f"finds no {dev.type} device); use --device cpu")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if dev.index is not None and dev.index >= count:
        raise LaminaError(f"device {str(device)!r} does not exist: this machine has {count} {dev.type} "
                          f"device(s), {dev.type}:0..{count - 1}; choose one of them")
    return dev


def check_spec(spec: str | os.PathLike, *, weights: bool = True) -> str:
    """What can be known about a model spec without loading it (no network, no weights read): the bundled
    default is installed, a ``.gguf`` file exists and is one, a folder has a readable config and complete
    weights, a path-like spec exists. Returns the spec as a string (``~`` expanded); a hub id passes.
    ``weights=False`` (a model loaded without weights): a folder needs its config, not its weight files.

    Raises:
        LaminaError: naming the problem and the fix.
    """
    spec = os.path.expanduser(str(spec)) if str(spec).startswith("~") else str(spec)
    if not spec.strip():
        raise LaminaError("the model is empty; pass 'default', a hub id, a folder or a .gguf file")
    if spec == "default":
        from .models import default_gguf_path

        default_gguf_path()
    elif spec.endswith(".gguf"):
        if not os.path.isfile(spec):
            raise LaminaError(f"GGUF file {spec!r} not found; check the path")
        with open(spec, "rb") as handle:
            if handle.read(4) != b"GGUF":
                raise LaminaError(f"{spec!r} is not a GGUF file (it does not start with the GGUF magic bytes); "
                                  "check the file, or download it again")
    elif os.path.isdir(spec):
        folder = Path(spec).resolve()
        if not (folder / "config.json").is_file():
            raise LaminaError(f"folder {spec!r} has no config.json; save the model with save_pretrained")
        _check_local_folder(folder, weights=weights)
    elif os.path.exists(spec):
        raise LaminaError(f"{spec!r} is neither a model folder nor a .gguf file")
    elif _looks_like_path(spec):
        raise LaminaError(f"no folder or file {spec!r}; check the path (a hub id looks like 'gpt2' or 'org/name')")
    return spec


def damaged_error(folder: Path, what: str, converted: bool = False) -> LaminaError:
    """``this folder is damaged: <what>`` with the fix (save again; for lamina's converted copy: clear it)."""
    fix = ("run 'lamina cache --clear models' to convert it again" if converted
           else "save the model again with save_pretrained or copy the folder again")
    return LaminaError(f"this folder is damaged: {what} ({folder}); {fix}")


def _check_safetensors(path: Path, folder: Path) -> None:
    """Header-only check of a safetensors file: readable, and as long as its header says (not truncated)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            n = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(n)) if 8 + n <= size else None
    except (OSError, ValueError):
        header = None
    if not isinstance(header, dict):
        raise damaged_error(folder, f"{path.name} is not a readable safetensors file")
    offsets = [v.get("data_offsets") for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    ends = [o[1] for o in offsets if isinstance(o, list) and len(o) == 2 and isinstance(o[1], int)]
    need = 8 + n + max(ends, default=0)
    if size < need:
        raise damaged_error(folder, f"{path.name} is truncated ({size} of {need} bytes)")


def _check_local_folder(folder: Path, weights: bool = True) -> None:
    """Fail fast, naming the damage, on a local model folder HF would misreport (config, weights)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise damaged_error(folder, f"config.json is not valid JSON ({first_line(exc)})") from None
    if not isinstance(config, dict) or not config.get("model_type"):
        raise damaged_error(folder, "config.json has no model_type")
    if not weights:
        return
    weights = []
    for name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / name).is_file():
            try:
                shards = set(json.loads((folder / name).read_text(encoding="utf-8"))["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                raise damaged_error(folder, f"{name} is not a valid weight index") from None
            missing = sorted(s for s in shards if not (folder / s).is_file())
            if missing:
                raise damaged_error(folder, f"weight file {missing[0]} listed in {name} is missing")
            weights += [folder / s for s in sorted(shards)]
            break
    else:
        weights = [folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()][:1]
    if not weights:
        raise damaged_error(folder, "it has no weights (model.safetensors or pytorch_model.bin)")
    for path in weights:
        if path.suffix == ".safetensors":
            _check_safetensors(path, folder)
        elif path.suffix == ".bin":
            import zipfile

            with open(path, "rb") as handle:
                legacy_pickle = handle.read(1) == b"\x80"  # torch < 1.6 wrote a bare pickle, not a zip archive
            if not legacy_pickle and not zipfile.is_zipfile(path):
                raise damaged_error(folder, f"{path.name} is truncated or not a torch weight file")


def _looks_like_path(spec: str) -> bool:
    """A spec that can only be a path (a hub id is ``name`` or ``org/name``)."""
    return (spec.startswith(("/", "./", "../", "~", ".\\")) or spec in (".", "..") or spec.count("/") > 1
            or "\\" in spec or spec.endswith("/"))


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_unreachable(timeout: float = 1.5) -> str | None:
    """Why the Hugging Face hub cannot be reached (offline mode, or one quick connection attempt failed), else
    None. One attempt, no retries: an offline user learns it in ~1 s instead of after HF's retry loop."""
    if _env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE"):
        return "HF_HUB_OFFLINE is set"
    import socket
    import threading
    import urllib.parse
    import urllib.request

    from huggingface_hub import constants

    url = urllib.parse.urlsplit(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        parsed = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = parsed.hostname or host, parsed.port or 8080
    outcome: list[str] = []

    def attempt() -> None:  # in a thread: a name lookup ignores socket timeouts
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append("")
        except OSError as exc:
            outcome.append(f"{host}:{port}: {exc.strerror or exc}")

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if not outcome:
        return f"{host}:{port} did not answer within {timeout:g} s"
    return outcome[0] or None


def first_line(exc: Exception) -> str:
    """The first non-empty line of an exception's message (HF's are long), at most 200 characters."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)[:200]


def hub_error(spec: str, exc: Exception) -> LaminaError:
    """The hub answered but could not provide the model (unknown id, gated, missing files)."""
    return LaminaError(f"model {spec!r} could not be loaded from the Hugging Face hub ({first_line(exc)}); "
                       "check the id (and for a gated model `hf auth login`), or pass a local folder or .gguf file")


def offline_error(spec: str, reason: str) -> LaminaError:
    """A hub id that is not cached while the hub cannot be reached."""
    return LaminaError(f"model {spec!r} is not available: it is not a local folder or .gguf file, not in the Hugging "
                       f"Face cache, and the hub is unreachable ({reason}); download it once where the hub is "
                       "reachable (it is then cached), or pass a folder saved with save_pretrained or a .gguf file")


def check_tokenizer(tokenizer, spec: str) -> None:
    """Raise for a tokenizer without a vocabulary (HF builds an empty one for a folder with no tokenizer files)."""
    if len(tokenizer) < 2 or not tokenizer("hello world", add_special_tokens=False)["input_ids"]:
        raise LaminaError(f"model {spec!r} has no tokenizer (no tokenizer.json or vocabulary files); save it "
                          "beside the weights with tokenizer.save_pretrained(folder)")
