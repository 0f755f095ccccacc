"""Shared pieces of the memory benchmarks: random models with the seed models' exact shapes, built in memory
(no weights on disk, no hub), a corpus tokenised by a small trained tokenizer, and an RSS sampler."""

from __future__ import annotations

import threading
import time

import numpy as np
import psutil
import torch

from lamina.testing import offline_text, train_tokenizer


def gpt_neo_1_3b():
    """EleutherAI/gpt-neo-1.3B's architecture: 24 blocks, d_model 2048, MLP 8192, vocab 50257."""
    from transformers import GPTNeoConfig

    return GPTNeoConfig(vocab_size=50257, hidden_size=2048, num_layers=24, num_heads=16, intermediate_size=None,
                        attention_types=[[["global", "local"], 12]], window_size=256, max_position_embeddings=2048,
                        activation_function="gelu_new", bos_token_id=50256, eos_token_id=50256)


def pythia_2_8b():
    """EleutherAI/pythia-2.8b's architecture: 32 blocks, d_model 2560, MLP 10240, vocab 50304, rotary 25%."""
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(vocab_size=50304, hidden_size=2560, num_hidden_layers=32, num_attention_heads=32,
                         intermediate_size=10240, rotary_pct=0.25, max_position_embeddings=2048,
                         use_parallel_residual=True, bos_token_id=0, eos_token_id=0)


def random_model(config, tokenizer, name: str, seed: int = 0):
    """A lamina Model with HF-initialised random weights (float32, CPU), built without torch's default init."""
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    from lamina.capture.adapters import adapter_for_config
    from lamina.capture.models import Model

    with no_init_weights():
        hf = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    torch.manual_seed(seed)
    hf.init_weights()
    hf.eval()
    adapter = adapter_for_config(config)
    try:  # newer lamina binds the adapter to the module
        from lamina.capture.discover import bind_adapter

        adapter = bind_adapter(hf, adapter)
    except ImportError:
        pass
    return Model(hf=hf, tokenizer=tokenizer, adapter=adapter, name=name,
                 provenance={"source": "bench", "name": name, "seed": seed, "model_type": config.model_type})


def corpus_ids(tokenizer, n_tokens: int, skip: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """``n_tokens`` consecutive corpus token ids after ``skip`` (the offline prose, repeated if needed), and
    the token counts over the whole corpus (a frequency source)."""
    ids = np.asarray(tokenizer(offline_text(), add_special_tokens=False)["input_ids"])
    reps = int(np.ceil((skip + n_tokens) / ids.size))
    ids = np.tile(ids, reps)
    return ids[skip:skip + n_tokens], np.bincount(ids)


def tokenizer(vocab: int = 8000):
    return train_tokenizer("bpe", vocab)


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.hf.parameters())


class PeakRSS:
    """Highest resident set size seen while the ``with`` block runs (sampled every 20 ms) and at its ends."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()

    def _sample(self):
        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, proc.memory_info().rss)
            time.sleep(0.02)

    def __enter__(self):
        self.start = psutil.Process().memory_info().rss
        self.peak = self.start
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, psutil.Process().memory_info().rss)
        return False


def gb(n: float) -> str:
    return f"{n / 1024**3:.2f} GB"
