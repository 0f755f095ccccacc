"""Models split with accelerate's device_map capture what the single-device model captures.

No GPU here: the splits are over "cpu" and "disk" placements (disk: the weights stay in safetensors files and
are read in by accelerate's hooks for each module's forward pass, the parameters themselves are on the meta
device), and over "cpu" placements with accelerate's per-module hooks forced on. Rows crossing between GPUs
are not exercised (see README).
"""

from __future__ import annotations

import gc
import glob
import json
import os
import tempfile

import pytest
import torch

import lamina
from lamina import LaminaError
from lamina.capture import capture, capture_reduced
from lamina.capture.devices import home_device, parse_device_map, placement
from lamina.capture.reduce import Covariance, Moments

TEXTS = ["The coffee was hot and the morning was cold.", "A cup of coffee.",
         "Every study runs on the same model, split or not, and gives the same numbers."]


def block_map(hf: torch.nn.Module, placements=("cpu", "disk")) -> dict[str, str]:
    """One entry per block and per other module of the base model (and per head), cycling ``placements``."""
    entries = []
    for name, child in hf.named_children():
        if any(isinstance(m, torch.nn.ModuleList) for m in child.children()):  # the base model
            for sub, grand in child.named_children():
                if isinstance(grand, torch.nn.ModuleList):
                    entries += [f"{name}.{sub}.{i}" for i in range(len(grand))]
                else:
                    entries.append(f"{name}.{sub}")
        else:
            entries.append(name)
    return {e: placements[i % len(placements)] for i, e in enumerate(entries)}


def assert_same_capture(a, b):
    assert a.sites == b.sites
    for site in a.sites:
        # Exact: the same kernels run on the same device in both; only where the weights are kept differs.
        assert torch.equal(a[site], b[site]), site


@pytest.fixture(scope="module")
def single(tiny_paths):
    return {arch: lamina.load_model(tiny_paths[arch]) for arch in ("llama", "gpt2")}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_cpu_and_disk_split_equals_single_device(tiny_paths, single, arch):
    ref = single[arch]
    dm = block_map(ref.hf)
    split = lamina.load_model(tiny_paths[arch], device_map=dm)
    where = placement(split.hf)
    assert set(where.values()) == {"cpu", "disk"}
    assert any(p.device.type == "meta" for p in split.hf.parameters())  # disk weights are really offloaded
    assert home_device(split.hf) == torch.device("cpu") and split.device == torch.device("cpu")
    sites = ref.sites()  # every site, logits included
    assert_same_capture(capture(ref, TEXTS, sites), capture(split, TEXTS, sites))
    left = capture(ref, TEXTS, "blocks.*.hook_resid_post", padding_side="left", batch_size=2)
    assert_same_capture(left, capture(split, TEXTS, "blocks.*.hook_resid_post", padding_side="left",
                                      batch_size=2))


def test_forced_hooks_on_every_block_equal_single_device(tiny_paths, single):
    # All-"cpu" maps are placed whole by transformers; accelerate's dispatch with force_hooks wraps every
    # mapped module in its device-aligning hook, as on a multi-GPU split.
    from accelerate import dispatch_model
    from accelerate.hooks import AlignDevicesHook

    ref = single["llama"]
    split = lamina.load_model(tiny_paths["llama"])
    dm = block_map(split.hf, ("cpu",))
    dispatch_model(split.hf, device_map=dm, main_device="cpu", force_hooks=True)
    assert isinstance(getattr(split.module("model.layers.1"), "_hf_hook", None), AlignDevicesHook)
    assert_same_capture(capture(ref, TEXTS, ref.sites()), capture(split, TEXTS, ref.sites()))


def test_auto_map_with_a_memory_cap_offloads_and_matches(tiny_paths, single):
    ref = single["llama"]
    total = sum(p.numel() * p.element_size() for p in ref.hf.parameters())
    # 90% of the weights' bytes for CPU RAM (accelerate also keeps room for the largest module): the first
    # modules stay in RAM, the rest goes to disk.
    split = lamina.load_model(tiny_paths["llama"], device_map="auto", max_memory={"cpu": int(total * 0.9)})
    assert {"cpu", "disk"} <= set(placement(split.hf).values())
    assert_same_capture(capture(ref, TEXTS, ref.sites()), capture(split, TEXTS, ref.sites()))


def test_reducer_states_equal_single_device(tiny_paths, single):
    ref = single["gpt2"]
    split = lamina.load_model(tiny_paths["gpt2"], device_map=block_map(ref.hf))
    plan = {"blocks.*.hook_resid_post": [Moments(), Covariance()], "blocks.0.mlp.hook_post": Moments()}
    a = capture_reduced(ref, TEXTS, plan)
    b = capture_reduced(split, TEXTS, plan)
    assert list(a) == list(b) and len(a) == ref.n_layers + 1
    for key in a:
        ra, rb = a[key], b[key]
        for x, y in zip(ra if isinstance(ra, list) else [ra], rb if isinstance(rb, list) else [rb]):
            sa, sb = x.state_dict(), y.state_dict()
            assert sa.keys() == sb.keys()
            for name in sa:  # exact: the same rows arrive in the same order
                assert torch.equal(sa[name], sb[name]), (key, name)


def test_temporary_offload_folder_goes_with_the_model(tiny_paths, single):
    pattern = os.path.join(tempfile.gettempdir(), "lamina-offload-*")
    before = set(glob.glob(pattern))
    split = lamina.load_model(tiny_paths["llama"], device_map=block_map(single["llama"].hf))
    made = set(glob.glob(pattern)) - before
    assert len(made) == 1
    del split
    gc.collect()
    assert not (set(glob.glob(pattern)) & made)


def test_device_map_mistakes_are_one_line_errors(tiny_paths, single):
    path = tiny_paths["llama"]
    with pytest.raises(LaminaError, match="not valid"):
        lamina.load_model(path, device_map="fastest")
    with pytest.raises(LaminaError, match="not a module of this model"):
        lamina.load_model(path, device_map={"": "cpu", "model.layer.0": "disk"})
    with pytest.raises(LaminaError, match="gives no device to"):
        lamina.load_model(path, device_map={"model.embed_tokens": "cpu", "model.layers": "disk"})
    with pytest.raises(LaminaError, match="is not a torch device"):
        lamina.load_model(path, device_map={"": "gpu-0"})
    if not torch.cuda.is_available():
        with pytest.raises(LaminaError, match="no GPU"):
            lamina.load_model(path, device_map={"": 0})
        with pytest.raises(LaminaError, match="cuda:1"):
            lamina.load_model(path, device_map={"model": "cuda:1", "lm_head": "cpu"})
    with pytest.raises(LaminaError, match="only with device_map"):
        lamina.load_model(path, max_memory={"cpu": "1GiB"})
    with pytest.raises(LaminaError, match="both given"):
        lamina.load_model(path, device="cpu:0", device_map="auto")


def test_cli_device_map(tiny_paths, single, tmp_path, capsys):
    from lamina.cli import main

    dm = block_map(single["llama"].hf)
    (tmp_path / "map.json").write_text(json.dumps(dm), "utf-8")
    assert parse_device_map(str(tmp_path / "map.json")) == dm
    assert parse_device_map(json.dumps(dm)) == dm and parse_device_map("auto") == "auto"
    assert main(["sites", str(tiny_paths["llama"]), "--device-map", str(tmp_path / "map.json")]) == 0
    assert "blocks.1.hook_resid_post" in capsys.readouterr().out
    assert main(["sites", str(tiny_paths["llama"]), "--device-map", "{not json"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["sites", str(tiny_paths["llama"]), "--device-map", "everywhere"]) == 2
    assert "neither a strategy" in capsys.readouterr().err
