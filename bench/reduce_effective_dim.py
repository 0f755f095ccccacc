"""Benchmark: the effective-dim study's own compute path at pythia-2.8b shape (random weights, baseline none).

Runs ``lamina.studies.effective_dim.compute`` (1000 corpus tokens and 4 seeded token-shuffled copies; per copy
the 33 residual sites, 2560 wide: fewer rows than the width, so the study keeps the rows (float32) and takes each
spectrum from the n x n Gram matrix; ``--method covariance`` forces a float64 ``Covariance`` per site instead;
stored with ``store=True``) and prints, measured in this one run: the plain forward over one copy,
the study's wall and CPU time and lamina's own time beside 5 plain forwards, peak RSS beside the weights, the
bytes the store wrote, and the components for 95% of the variance against a float64 reference (every row of the
text copy captured, numpy PCA). Not a test.

    nice -n 10 .venv/bin/python bench/reduce_effective_dim.py [--method covariance] [--tokens 1000] [--layers N]
        [--no-reference]
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _shapes import PeakRSS, gb, pythia_2_8b, random_model, tokenizer, weight_bytes  # noqa: E402
from reduce_token_length import Clock  # noqa: E402


def _bytes_under(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--layers", type=int, default=None, help="fewer blocks (a quick run at the same width)")
    ap.add_argument("--no-reference", action="store_true", help="skip the float64 all-rows reference")
    ap.add_argument("--method", default="auto", choices=["auto", "covariance"],
                    help="auto: the study's choice (rows when fewer tokens than the width); covariance: always a "
                         "Covariance per site")
    args = ap.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="lamina-bench-"))
    os.environ["LAMINA_CACHE_DIR"] = str(cache)

    from lamina.capture import capture, residual_sites
    from lamina.capture.run import _forward
    from lamina.stats import components_for_variance
    from lamina.studies.effective_dim import EffectiveDimConfig, _windows, compute, spectrum
    from lamina.studies import effective_dim_reduce
    from lamina.studies.texts import corpus_text

    effective_dim_reduce.ALWAYS_COVARIANCE = args.method == "covariance"

    cfg = pythia_2_8b()
    if args.layers:
        cfg.num_hidden_layers = args.layers
    tok = tokenizer()
    with Clock() as build:
        model = random_model(cfg, tok, "pythia-2.8b-shape")
    weights = weight_bytes(model)
    config = EffectiveDimConfig(n_tokens=args.tokens)
    print(f"pythia-2.8b shape: {model.n_layers} blocks, d_model {model.d_model}, weights {gb(weights)} (float32); "
          f"effective-dim, {args.tokens} tokens x (text + {config.n_shuffles} shuffles), method {args.method}; "
          f"{torch.get_num_threads()} threads; built in {build}")

    text, _ = corpus_text(None)
    ids = tok(text, add_special_tokens=False)["input_ids"][config.skip_tokens:config.skip_tokens + config.n_tokens]
    window = _windows(ids, min(config.n_tokens, model.context_length or config.n_tokens))
    runner = model.module(model.adapter.base)
    with torch.no_grad():
        _forward(model, runner, torch.tensor([window[0][:16]]), torch.ones(1, 16, dtype=torch.long))  # warm-up
        gc.collect()
        with PeakRSS() as rss_plain, Clock() as plain:
            x = torch.tensor(window[:1])
            _forward(model, runner, x, torch.ones_like(x))
    n_forwards = (1 + config.n_shuffles) * len(window)
    print(f"plain forward (one copy, the whole model): {plain}; peak RSS weights + {gb(rss_plain.peak - weights)}")

    gc.collect()
    with PeakRSS() as rss, Clock() as study:
        out = compute(model, config, {})
    own = study.wall - n_forwards * plain.wall
    own_cpu = study.cpu - n_forwards * plain.cpu
    print(f"effective-dim compute: {study}; lamina's own time {own:.1f} s = {own / (n_forwards * plain.wall):.1%} of "
          f"{n_forwards} plain forwards (cpu {own_cpu:.1f} s = {own_cpu / (n_forwards * plain.cpu):.1%})")
    print(f"RSS before {gb(rss.start)}; peak {gb(rss.peak)} = weights + {gb(rss.peak - weights)} "
          f"(+{gb(rss.peak - rss.start)} over the start); target weights + 1.50 GB: "
          f"{'met' if rss.peak - weights <= 1.5 * 1024**3 else 'NOT met'}")
    print(f"store: {gb(_bytes_under(cache / 'store'))} written; activation cache: "
          f"{gb(_bytes_under(cache / 'activations')) if (cache / 'activations').exists() else '0.00 GB'}")
    pl = out.results["per_layer"]
    n95 = [p["text"]["n95"] for p in pl]
    print(f"components for 95% (text): {n95[:4]} ... {n95[-3:]}; sinks dropped: {out.results['sinks_dropped']}")

    if not args.no_reference:
        with Clock() as ref_clock:
            acts = capture(model, window, residual_sites(model), add_special_tokens=False)
            keep = acts.rows.position != 0
            ref_n95, ref_spec = [], []
            for s in residual_sites(model):  # one float64 layer at a time
                spec = spectrum(acts[s].double().numpy()[keep])
                ref_n95.append(components_for_variance(spec, 0.95))
                ref_spec.append(spec)
            del acts
        got = out.arrays["spectrum_text"]
        diff = max(float(np.max(np.abs(g - r[:g.size]))) for g, r in zip(got, ref_spec))
        same = sum(a == b for a, b in zip(n95, ref_n95))
        print(f"float64 reference (all rows, numpy) in {ref_clock}: n95 equal at {same}/{len(n95)} layers; "
              f"largest |spectrum difference| {diff:.2e}"
              + ("" if not out.results["sinks_dropped"]["text"] else " (the text copy had sinks: not comparable)"))
    print(f"process peak RSS (ru_maxrss): {gb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}")


if __name__ == "__main__":
    main()
