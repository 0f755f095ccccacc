"""Benchmark: a token-length-like reduction at gpt-neo-1.3B shape (random weights), 8192 corpus tokens.

What the token-length study needs per layer -- per-neuron sums for Pearson r and partial r against token length
and log frequency (``Moments`` with two covariates), and one block's rows for its short/long histograms
(``KeepRows``) -- reduced on the fly by ``capture_reduced`` with the resumable store on. Printed, all measured in
this one run: the plain forward time over the same batches, the reduced capture's time, the statistics' time,
lamina's own time (capture - plain + statistics) as a fraction of the forward, the peak RSS beside the weights,
the bytes the store wrote, and the seeded random-init copy's build time and memory. Not a test.

    nice -n 10 .venv/bin/python bench/reduce_token_length.py [--shape gpt-neo-125m] [--tokens 81920]
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
import psutil
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _shapes import PeakRSS, corpus_ids, gb, gpt_neo_1_3b, random_model, tokenizer, weight_bytes  # noqa: E402


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
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch-windows", type=int, default=None,
                    help="windows per forward pass (default: lamina's ~4096-token budget)")
    ap.add_argument("--keep-rows", type=int, default=8192,
                    help="rows kept at the histogram block: a seeded subset when the corpus has more (bounded "
                         "memory at any corpus size)")
    args = ap.parse_args()
    os.environ["LAMINA_CACHE_DIR"] = tempfile.mkdtemp(prefix="lamina-bench-")  # the store goes here

    from lamina.capture import random_init_copy
    from lamina.capture.reduce import Histogram, KeepRows, Moments
    from lamina.capture.reduced import capture_reduced
    from lamina.capture.run import _batches, _forward
    from lamina.stats import fixed_histogram

    tok = tokenizer()
    with Clock() as build:
        model = random_model(shape(args.shape), tok, args.shape)
    weights = weight_bytes(model)
    L, n_neurons = model.n_layers, 4 * model.d_model
    print(f"{args.shape}: {L} blocks x {n_neurons} MLP neurons, weights {gb(weights)} (float32), "
          f"{args.tokens} tokens in windows of {args.seq}; {torch.get_num_threads()} threads; built in {build}")

    flat, counts = corpus_ids(tok, args.tokens)
    windows = [flat[i:i + args.seq].tolist() for i in range(0, flat.size, args.seq)]
    unique, inverse = np.unique(flat, return_inverse=True)
    lengths = np.array([len(tok.decode([int(i)])) for i in unique], dtype=np.float64)[inverse]
    log_freq = np.log10(counts[flat] / counts.sum())
    block = round(4 * L / 12)

    runner = model.module(model.adapter.base)
    batches = _batches([len(w) for w in windows], args.batch_windows)
    with torch.no_grad():
        _forward(model, runner, torch.tensor([windows[0][:16]]), torch.ones(1, 16, dtype=torch.long))  # warm-up
        gc.collect()
        with PeakRSS() as rss_plain, Clock() as plain:
            for b in batches:
                ids = torch.tensor([windows[i] for i in b])
                _forward(model, runner, ids, torch.ones_like(ids))
    print(f"plain forward, same {len(batches)} batches:            {plain}; RSS {gb(rss_plain.start)} -> peak "
          f"{gb(rss_plain.peak)} = weights + {gb(rss_plain.peak - weights)}")

    keep = None if flat.size <= args.keep_rows else \
        np.sort(np.random.default_rng(0).choice(flat.size, args.keep_rows, replace=False))
    reduce = {f"blocks.{l}.mlp.hook_pre": [Moments(np.stack([lengths, log_freq], axis=1))]
              + ([KeepRows(where=keep)] if l == block else []) for l in range(L)}
    gc.collect()
    with PeakRSS() as rss, Clock() as cap:
        red = capture_reduced(model, windows, reduce, add_special_tokens=False, store=True,
                              batch_size=args.batch_windows)
    with PeakRSS() as rss_stats, Clock() as stats:
        edges = np.linspace(-0.8, 0.8, 81)
        for l in range(L):
            mom = red[f"blocks.{l}.mlp.hook_pre"][0]
            r, partial = mom.correlations().numpy(), mom.partial_correlations().numpy()
            fixed_histogram(r[0], edges), fixed_histogram(partial[0], edges), mom.pooled()
        kept = red[f"blocks.{block}.mlp.hook_pre"][1]
        values = kept.rows()  # float32 as captured: no float64 copy of the block
        lo, hi = np.percentile(values.numpy(), [0.5, 99.5])
        median, kept_lengths = np.median(lengths), lengths[kept.index]
        labels = np.select([kept_lengths < median, kept_lengths == median], [0, 1], 2)  # short, equal, long
        block_hist = Histogram(np.linspace(lo, hi, 121), groups=labels)  # the reducer, run on the kept rows
        block_hist.update(values, slice(0, values.shape[0]))
        block_hist.density()
    own = cap.wall - plain.wall + stats.wall
    own_cpu = cap.cpu - plain.cpu + stats.cpu
    written = red.provenance["bytes_written"]
    print(f"capture_reduced (Moments x {L} + KeepRows x 1 of {len(kept.index)} rows, store): {cap}")
    print(f"statistics from the states (r, partial r, histograms): {stats}")
    print(f"lamina's own time: {own:.1f} s = {own / plain.wall:.1%} of the forward "
          f"(cpu: {own_cpu:.1f} s = {own_cpu / plain.cpu:.1%})")
    peak = max(rss.peak, rss_stats.peak)
    print(f"RSS before the capture {gb(rss.start)}; peak during capture + statistics {gb(peak)} = weights + "
          f"{gb(peak - weights)} (+{gb(peak - rss.start)} over the start; capture peak +{gb(rss.peak - rss.start)}, "
          f"statistics peak +{gb(rss_stats.peak - rss.start)})")
    print(f"store: {gb(written)} written ({written / 1e6:.0f} MB) to {red.provenance['store']}")

    del red
    runner = None
    gc.collect()
    base = psutil.Process().memory_info().rss
    with PeakRSS() as rss_rand, Clock() as rand:
        copy = random_init_copy(model, seed=0)
    print(f"random_init_copy: {rand}; RSS +{gb(rss_rand.peak - base)} at peak for {gb(weight_bytes(copy))} "
          f"of weights (init: {copy.provenance['init']})")
    print(f"process peak RSS (ru_maxrss): {gb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}")


if __name__ == "__main__":
    main()
