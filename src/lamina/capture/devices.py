"""Models split over several devices with HF accelerate's ``device_map``: options, checks and the home device.

``load_model(spec, device_map=...)`` hands the map to ``from_pretrained``, which places each module on its
device (GPUs, CPU RAM, or disk, whose weights are read in for each forward pass) and wraps the modules with
accelerate's hooks that move every module's inputs to its device. lamina's own hooks then see each site's
output on the device that computed it; the capture moves the rows to the model's *home device*
(:func:`home_device`), where the inputs are sent, the reducers keep their state, and from where the rows go
to the host buffers. Nothing is computed differently: the same modules run the same kernels, so a split model
gives the single-device numbers (bit for bit when every part runs on the same kind of device).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import weakref
from pathlib import Path

import torch

from ..errors import LaminaError

__all__ = ["DEVICE_MAP_STRATEGIES", "check_device_map", "check_map_covers", "parse_device_map", "device_map_kwargs",
           "home_device", "placement", "is_split"]

#: Strategies accelerate computes a map for (``"auto"`` is ``"balanced"`` over the visible GPUs, then CPU RAM,
#: then disk).
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")

_OFFLOAD = ("cpu", "disk")


def _as_device(value) -> torch.device:
    """A device-map value as a torch device (``0`` -> the accelerator's device 0, e.g. ``cuda:0``)."""
    if isinstance(value, torch.device):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        accelerator = getattr(torch, "accelerator", None)
        current = accelerator.current_accelerator() if accelerator is not None else None
        return torch.device(current.type if current is not None else "cuda", value)
    return torch.device(str(value))


def check_device_map(device_map):
    """Validate a ``device_map`` before anything loads; returns it (a strategy name or a dict).

    Args:
        device_map: ``"auto"``, ``"balanced"``, ``"balanced_low_0"``, ``"sequential"``, or a dict
            ``{module path: device}`` with devices ``0``/``"cuda:1"``/``"cpu"``/``"disk"`` (every module of the
            model must be covered; ``""`` names the whole model).

    Raises:
        LaminaError: an unknown strategy, a malformed map, or a device this machine does not have.
    """
    from .models import check_device

    if isinstance(device_map, str):
        if device_map not in DEVICE_MAP_STRATEGIES:
            raise LaminaError(f"device_map={device_map!r} is not valid; use one of "
                              f"{', '.join(DEVICE_MAP_STRATEGIES)} or a dict {{module: device}}")
        return device_map
    if not isinstance(device_map, dict) or not device_map:
        raise LaminaError(f"device_map must be a strategy ({', '.join(DEVICE_MAP_STRATEGIES)}) or a non-empty "
                          f"dict {{module: device}}, not {type(device_map).__name__}")
    for module, value in device_map.items():
        if not isinstance(module, str):
            raise LaminaError(f"device_map key {module!r} is not a module path; use names such as "
                              "'model.layers.0' ('' is the whole model)")
        if isinstance(value, str) and value in _OFFLOAD:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, str, torch.device)) or \
                (isinstance(value, int) and value < 0):
            raise LaminaError(f"device_map puts {module!r} on {value!r}, which is not a device; use a GPU index "
                              "(0, 1, ...), 'cuda:N', 'cpu' or 'disk'")
        if isinstance(value, int) and not any(getattr(torch, t, None) is not None and
                                              getattr(torch, t).is_available() for t in ("cuda", "xpu")):
            raise LaminaError(f"device_map puts {module!r} on GPU {value}, but torch {torch.__version__} finds "
                              "no GPU on this machine; use 'cpu' or 'disk' placements")
        try:
            check_device(_as_device(value) if not isinstance(value, str) else value)
        except (LaminaError, RuntimeError) as exc:
            raise LaminaError(f"device_map puts {module!r} on {value!r}: {str(exc).split(';')[0]}; place it on "
                              "an available device, 'cpu' or 'disk'") from None
    return device_map


def check_map_covers(device_map: dict, config, auto_cls) -> None:
    """Raise unless every key of an explicit map names a module of the model ``config`` describes and every
    parameter has a device. The model is built on the meta device (no memory, no weights read).
    """
    from accelerate import init_empty_weights

    with init_empty_weights():
        skeleton = auto_cls.from_config(config)
    modules = {name for name, _ in skeleton.named_modules()}
    unknown = [k for k in device_map if k not in modules]
    if unknown:
        example = next((n for n in sorted(modules) if n.count(".") == 2), "model.layers.0")
        raise LaminaError(f"device_map names {unknown[0]!r}, which is not a module of this model; use module "
                          f"paths such as {example!r} ('' for the whole model)")
    for name, _ in skeleton.named_parameters():
        if not any(k == "" or name == k or name.startswith(k + ".") for k in device_map):
            raise LaminaError(f"device_map gives no device to {name!r}; add its module (or a parent) to the map")


def parse_device_map(text: str):
    """The ``--device-map`` option: a strategy name, a JSON object, or the path of a JSON file holding one."""
    text = text.strip()
    if text in DEVICE_MAP_STRATEGIES:
        return text
    source = "--device-map"
    if not text.startswith("{"):
        path = Path(os.path.expanduser(text))
        if not path.is_file():
            raise LaminaError(f"--device-map {text!r} is neither a strategy ({', '.join(DEVICE_MAP_STRATEGIES)}), "
                              "a JSON object nor a JSON file; e.g. --device-map auto")
        try:
            text, source = path.read_text(encoding="utf-8"), str(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise LaminaError(f"--device-map file {path} cannot be read ({exc}); check the path") from None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise LaminaError(f"{source} is not valid JSON ({exc}); write it as {{\"model.layers.0\": 0, ...}}") from None
    return check_device_map(value)


def device_map_kwargs(device_map, max_memory: dict | None = None, offload_folder: str | os.PathLike | None = None,
                      ) -> tuple[dict, str | None]:
    """``from_pretrained`` keyword arguments for a device map, and the temporary offload folder made for it
    (None if the caller gave one). Call :func:`forget_offload_folder_with` once the model exists."""
    kwargs: dict = {"device_map": check_device_map(device_map)}
    if max_memory is not None:
        if not isinstance(max_memory, dict) or not max_memory:
            raise LaminaError("max_memory must be a dict such as {0: '20GiB', 1: '20GiB', 'cpu': '64GiB'}")
        kwargs["max_memory"] = max_memory
    made = None
    if offload_folder is None:
        made = tempfile.mkdtemp(prefix="lamina-offload-")
        atexit.register(shutil.rmtree, made, True)  # also if the load fails; else when the model goes
        offload_folder = made
    kwargs["offload_folder"] = str(offload_folder)
    return kwargs, made


def forget_offload_folder_with(hf: torch.nn.Module, folder: str | None) -> None:
    """Delete the temporary offload folder ``folder`` when ``hf`` is garbage-collected (or at exit)."""
    if folder is not None:
        weakref.finalize(hf, shutil.rmtree, folder, ignore_errors=True)


def is_split(hf: torch.nn.Module) -> bool:
    """Whether accelerate dispatched ``hf`` over several devices (or offloads part of it)."""
    return bool(getattr(hf, "hf_device_map", None))


def home_device(hf: torch.nn.Module) -> torch.device:
    """Where inputs go and captured rows are gathered: for a split model the first GPU of its map (the CPU if
    it has none), else the device of its parameters."""
    dm = getattr(hf, "hf_device_map", None)
    if dm:
        for value in dm.values():
            if not (isinstance(value, str) and value in _OFFLOAD):
                return _as_device(value)
        return torch.device("cpu")
    return next(hf.parameters()).device


def placement(hf: torch.nn.Module) -> dict[str, str]:
    """Module path -> where its weights live (``"cuda:0"``, ``"cpu"``, ``"disk"``), for a split model; else {}."""
    dm = getattr(hf, "hf_device_map", None) or {}
    return {k: (v if isinstance(v, str) else str(_as_device(v))) for k, v in dm.items()}
