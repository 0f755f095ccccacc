"""Benchmark: an effective-dim-like reduction at pythia-2.8b shape (random weights): the PCA spectrum of every
hidden state (33 residual sites x 2560) over 1000 corpus tokens.

``--method covariance`` (default): a ``Covariance`` reducer per site (float64 upper triangle, 26 MB each) and
the spectrum from its eigenvalues; ``--method rows``: the rows themselves (``Gram``, float32) and the spectrum
from the n x n centred Gram matrix (cheaper while n_tokens < d_model). Printed, measured in this one run: the
plain forward over the same batch, the reduced capture, the spectra, lamina's own time, peak RSS beside the
weights, bytes written by the store. Not a test.

    nice -n 10 .venv/bin/python bench/reduce_effective_dim.py [--method rows] [--tokens 1000] [--no-store]
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _shapes import PeakRSS, corpus_ids, gb, pythia_2_8b, random_model, tokenizer, weight_bytes  # noqa: E402
from reduce_token_length import Clock  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="covariance", choices=["covariance", "rows"])
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--layers", type=int, default=None, help="fewer blocks (a quick run at the same width)")
    ap.add_argument("--no-store", action="store_true")
    args = ap.parse_args()
    os.environ["LAMINA_CACHE_DIR"] = tempfile.mkdtemp(prefix="lamina-bench-")

    from lamina.capture import residual_sites
    from lamina.capture.reduce import Covariance, Gram
    from lamina.capture.reduced import capture_reduced
    from lamina.capture.run import _forward

    cfg = pythia_2_8b()
    if args.layers:
        cfg.num_hidden_layers = args.layers
    tok = tokenizer()
    with Clock() as build:
        model = random_model(cfg, tok, "pythia-2.8b-shape")
    weights = weight_bytes(model)
    print(f"pythia-2.8b shape: {model.n_layers} blocks, d_model {model.d_model}, weights {gb(weights)} (float32); "
          f"{args.tokens} tokens, method {args.method}; {torch.get_num_threads()} threads; built in {build}")
    ids, _ = corpus_ids(tok, args.tokens, skip=3000)
    window = [ids.tolist()]
    sites = residual_sites(model)

    runner = model.module(model.adapter.base)
    with torch.no_grad():
        _forward(model, runner, torch.tensor([window[0][:16]]), torch.ones(1, 16, dtype=torch.long))  # warm-up
        gc.collect()
        with PeakRSS() as rss_plain, Clock() as plain:
            x = torch.tensor(window)
            _forward(model, runner, x, torch.ones_like(x))
    print(f"plain forward:                        {plain}; peak RSS weights + {gb(rss_plain.peak - weights)}")

    template = Covariance() if args.method == "covariance" else Gram()
    gc.collect()
    with PeakRSS() as rss, Clock() as cap:
        red = capture_reduced(model, window, {s: template for s in sites}, add_special_tokens=False,
                              store=not args.no_store)
    with PeakRSS() as rss_stats, Clock() as stats:
        spectra = []
        for s in sites:
            r = red[s]
            if args.method == "covariance":
                spectra.append(r.spectrum().numpy())
            else:
                x = r.rows().double()
                x = x - x.mean(0)
                eig = torch.linalg.eigvalsh(x @ x.T).flip(0).clamp_min(0)
                spectra.append((eig / eig.sum()).numpy())
        n95 = [int(np.searchsorted(np.cumsum(s), 0.95) + 1) for s in spectra]
    own = cap.wall - plain.wall + stats.wall
    own_cpu = cap.cpu - plain.cpu + stats.cpu
    print(f"capture_reduced ({len(sites)} sites):        {cap}")
    print(f"spectra ({len(sites)}):                        {stats}  (components for 95%: {n95[:3]} ... {n95[-2:]})")
    print(f"lamina's own time: {own:.1f} s = {own / plain.wall:.1%} of the forward "
          f"(cpu: {own_cpu:.1f} s = {own_cpu / plain.cpu:.1%})")
    peak = max(rss.peak, rss_stats.peak)
    print(f"RSS before the capture {gb(rss.start)}; peak during capture + spectra {gb(peak)} = weights + "
          f"{gb(peak - weights)} (+{gb(peak - rss.start)} over the start; capture peak +{gb(rss.peak - rss.start)}, "
          f"spectra peak +{gb(rss_stats.peak - rss.start)})")
    if not args.no_store:
        print(f"store: {gb(red.provenance['bytes_written'])} written")
    print(f"process peak RSS (ru_maxrss): {gb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}")


if __name__ == "__main__":
    main()
