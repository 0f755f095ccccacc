"""The resumable store of reduced captures: checkpoints, a run killed with SIGKILL resumes bit for bit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from lamina import LaminaError
from lamina.capture.reduce import Covariance, Histogram, KeepRows, Moments, TopK
from lamina.capture.reduced import capture_reduced
from lamina.capture.store import Store
from lamina.testing import offline_text

SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    import lamina
    from test_store import reduced_states

    reduced_states(lamina.load_model(sys.argv[1]))
""")


def reduced_states(model) -> tuple[dict, dict]:
    """The capture the kill test interrupts: 12 batches, one checkpoint per batch, every kind of reducer."""
    words = offline_text(60_000).split()
    texts = [" ".join(words[i * 25:(i + 1) * 25]) for i in range(24)]
    n = sum(len(model.tokenizer(t)["input_ids"]) for t in texts)
    length = np.arange(n) % 11
    red = capture_reduced(model, texts, {
        "blocks.*.mlp.hook_pre": [Moments(length), Histogram(np.linspace(-1, 1, 17)), TopK(3)],
        "blocks.*.hook_resid_post": [Covariance(), KeepRows(where=length == 3)],
    }, batch_size=2, store=True, chunk_batches=1)
    states = {f"{site}/{i}/{k}": v for site in red for i, r in enumerate(red[site]) for k, v in r.state_dict().items()}
    return states, red.provenance


def test_a_killed_run_resumes_and_ends_bit_identical(tmp_path, tiny_paths, tiny_models, monkeypatch):
    """SIGKILL between chunks (a test hook sleeps after each checkpoint), resume, compare with a clean run."""
    script = tmp_path / "reduce_run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LAMINA_CACHE_DIR": str(tmp_path / "killed"),
           "LAMINA_TEST_CHUNK_SLEEP": "0.4"}
    victim = subprocess.Popen([sys.executable, str(script), str(tiny_paths["gpt-neox"]), os.path.dirname(__file__)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    store_root = tmp_path / "killed" / "store"
    deadline = time.time() + 120  # imports and model load take a few seconds on a loaded machine
    while time.time() < deadline and victim.poll() is None:
        states = list(store_root.glob("*/state-*.safetensors"))
        if states and int(states[0].name[6:12]) >= 3:
            break
        time.sleep(0.05)
    assert victim.poll() is None, victim.stderr.read().decode()
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    (folder,) = store_root.iterdir()
    done_before = int(next(folder.glob("state-*.safetensors")).name[6:12])
    assert 3 <= done_before < 12 and not (folder / "complete.json").exists()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the victim's setting: the same kernels, the same floats
    try:
        monkeypatch.setenv("LAMINA_CACHE_DIR", str(tmp_path / "killed"))
        resumed, provenance = reduced_states(tiny_models["gpt-neox"])
        monkeypatch.setenv("LAMINA_CACHE_DIR", str(tmp_path / "clean"))
        clean, _ = reduced_states(tiny_models["gpt-neox"])
    finally:
        torch.set_num_threads(threads)
    assert clean.keys() == resumed.keys() and len(clean) > 10
    for key in clean:
        assert torch.equal(clean[key], resumed[key]), key  # bit for bit
    assert provenance["resumed_at_batch"] == done_before  # it did resume, not start over
    assert not list(folder.glob(".tmp-*")) and len(list(folder.glob("state-*"))) == 1


def _texts():
    words = offline_text(30_000).split()
    return [" ".join(words[i * 20:(i + 1) * 20]) for i in range(8)]


def test_a_finished_capture_is_served_from_the_store(tiny_models, cache_dir):
    model = tiny_models["gpt2"]
    reduce = {"blocks.*.hook_mlp_out": [Moments(), KeepRows(dtype=torch.float16)]}
    first = capture_reduced(model, _texts(), reduce, batch_size=3, store=True, chunk_batches=2)
    assert first.provenance["resumed_at_batch"] == 0
    folder = cache_dir / "store" / os.path.basename(first.provenance["store"])
    files = sorted(p.name for p in folder.iterdir())
    # 8 texts / 3 per batch = 3 batches: chunks [0, 2) and [2, 3); only the newest state survives.
    assert [f for f in files if f.startswith("rows-")] == ["rows-000000-000002.safetensors",
                                                          "rows-000002-000003.safetensors"]
    assert [f for f in files if f.startswith("state-")] == ["state-000003.safetensors"]
    assert first.provenance["bytes_written"] >= sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    calls = []
    handle = model.hf.register_forward_hook(lambda *a: calls.append(1))
    try:
        again = capture_reduced(model, _texts(), reduce, batch_size=3, store=True, chunk_batches=2)
    finally:
        handle.remove()
    assert calls == [] and again.provenance["resumed_at_batch"] == 3  # no forward pass at all
    for site in first:
        for x, y in zip(first[site], again[site]):
            for k, v in x.state_dict().items():
                assert torch.equal(v, y.state_dict()[k])
    # Other settings are another capture (another key).
    other = capture_reduced(model, _texts(), reduce, batch_size=2, store=True)
    assert other.provenance["store"] != first.provenance["store"] and other.provenance["resumed_at_batch"] == 0


def test_one_writer_per_capture(tiny_models, cache_dir):
    pytest.importorskip("fcntl")
    model = tiny_models["gpt2"]
    reduce = {"blocks.0.hook_resid_post": Covariance()}
    done = capture_reduced(model, _texts(), reduce, store=True)
    store = Store(os.path.basename(done.provenance["store"]), {})
    with store.open():  # another process would hold this lock while it writes
        with pytest.raises(LaminaError, match="another process is writing"):
            capture_reduced(model, _texts(), reduce, store=True)


def test_store_needs_a_named_position_rule(tiny_models, cache_dir):
    with pytest.raises(LaminaError, match="named position rule"):
        capture_reduced(tiny_models["gpt2"], _texts(), {"blocks.0.hook_resid_post": Histogram([0, 1])},
                        positions=lambda t: [0], store=True)
    with pytest.raises(LaminaError, match="module-level function"):
        capture_reduced(tiny_models["gpt2"], _texts(), {"blocks.0.hook_resid_post": KeepRows(transform=lambda x: x)},
                        store=True)
