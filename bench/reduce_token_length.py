"""Benchmark: the token-length study's compute path at gpt-neo-1.3B shape (random weights), as
``lamina run token-length --baseline none`` computes it (``token_length.measure``: reducers, resumable store,
statistics, bimodality), over 8192 corpus tokens (or ``--tokens 81920``).

Printed, all measured in this one run: the plain forward time over the same windows and batches, the study's
time, lamina's own time (study - plain forward) as a fraction of the forward, the peak RSS beside the weights,
and the bytes the store wrote. Not a test.

    nice -n 10 .venv/bin/python bench/reduce_token_length.py [--shape gpt-neo-125m] [--tokens 81920] [--no-plain]
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _shapes import PeakRSS, gb, gpt_neo_1_3b, random_model, tokenizer, weight_bytes  # noqa: E402


def shape(name: str):
    cfg = gpt_neo_1_3b()
    if name == "gpt-neo-125m":  # the same family, small enough for a quick run
        cfg.hidden_size, cfg.num_layers, cfg.num_heads = 768, 12, 12
        cfg.attention_types, cfg.attention_layers = [[["global", "local"], 6]], ["global", "local"] * 6
        cfg.intermediate_size = None
    return cfg


class Clock:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        return False

    def __str__(self):
        return f"{self.wall:7.1f} s wall {self.cpu:7.1f} s cpu"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="gpt-neo-1.3b", choices=["gpt-neo-1.3b", "gpt-neo-125m"])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--no-plain", action="store_true", help="skip the plain forward (memory only)")
    args = ap.parse_args()
    os.environ["LAMINA_CACHE_DIR"] = tempfile.mkdtemp(prefix="lamina-bench-")  # the store goes here

    import lamina.studies.token_length as tl
    from lamina.capture.run import _batches, _forward
    from lamina.testing import offline_text

    tok = tokenizer()
    with Clock() as build:
        model = random_model(shape(args.shape), tok, args.shape)
    weights = weight_bytes(model)
    config = tl.TokenLengthConfig(n_tokens=args.tokens)
    text = offline_text()
    n_text = len(tok(text, add_special_tokens=False)["input_ids"])
    text = "\n\n".join([text] * int(np.ceil((args.tokens + config.skip_tokens + 1) / n_text)))
    print(f"{args.shape}: {model.n_layers} blocks x {4 * model.d_model} MLP neurons, weights {gb(weights)} "
          f"(float32), {args.tokens} tokens in windows of {config.seq_len}; {torch.get_num_threads()} threads; "
          f"built in {build}")

    windows, _, seq = tl.corpus_windows(model, text, config)
    batches = _batches([len(w) for w in windows], max(1, tl.BATCH_TOKENS // seq))  # the study's batches
    plain = None
    if not args.no_plain:
        runner = model.module(model.adapter.base)
        with torch.no_grad():
            _forward(model, runner, torch.tensor([windows[0][:16]]), torch.ones(1, 16, dtype=torch.long))  # warm
            gc.collect()
            with PeakRSS() as rss_plain, Clock() as plain:
                for b in batches:
                    ids = torch.tensor([windows[i] for i in b])
                    _forward(model, runner, ids, torch.ones_like(ids))
        runner = None
        print(f"plain forward, same {len(batches)} batches: {plain}; RSS {gb(rss_plain.start)} -> peak "
              f"{gb(rss_plain.peak)} = weights + {gb(rss_plain.peak - weights)}")

    provenance = {}
    inner = tl.capture_reduced

    def recorded(*a, **k):  # the study's own call, recorded for the store's byte count
        red = inner(*a, **k)
        provenance.update(red.provenance)
        return red

    tl.capture_reduced = recorded
    gc.collect()
    with PeakRSS() as rss, Clock() as study:
        results = tl.measure(model, text, config)
    print(f"token-length measure() (capture_reduced + store + statistics + bimodality): {study}")
    if plain is not None:
        own, own_cpu = study.wall - plain.wall, study.cpu - plain.cpu
        print(f"lamina's own time: {own:.1f} s = {own / plain.wall:.1%} of the plain forward "
              f"(cpu: {own_cpu:.1f} s = {own_cpu / plain.cpu:.1%})")
    print(f"RSS before the study {gb(rss.start)}; peak {gb(rss.peak)} = weights + {gb(rss.peak - weights)} "
          f"(+{gb(rss.peak - rss.start)} over the start)")
    written = provenance["bytes_written"]
    print(f"store: {gb(written)} written ({written / 1e6:.0f} MB) to {provenance['store']}")
    pl = results["per_layer"]
    print(f"check: {len(pl)} layers, mean_r layer 0 {pl[0]['mean_r']:.4f}, block {results['block']} "
          f"({results['block_rows']} rows kept), bimodal {results['short_token_bimodality']['bimodal']}")
    print(f"process peak RSS (ru_maxrss): {gb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}")


if __name__ == "__main__":
    main()
