"""Benchmark: plain HF forward vs lamina.capture of every site, same GPT-2-small-shaped random model, same run.

8 texts x 256 tokens (the issue's setting). Plain and capture runs alternate; the best (min) and the median
of the repeats are reported, as wall time and as process CPU time (user + system: page faults show up there).
On a shared machine the best-of ratio is the steadier one. First with glibc's default allocator settings (what a Python user gets:
the target is capture <= 1.10x the plain forward), then after lamina.tune_malloc() (what the CLI uses). Not a
test.

    nice -n 10 .venv/bin/python bench/capture.py [repeats]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

import torch

import lamina
from lamina.testing import make_tiny_model, offline_text, train_tokenizer


def measure(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = make_tiny_model("gpt2", tmp, tokenizer=train_tokenizer("bpe", 8000), n_layers=12, d_model=768,
                               n_heads=12, n_positions=1024)
        model = lamina.load_model(path)
    words = offline_text(200_000).split()
    texts = [" ".join(words[i * 180:(i + 1) * 180]) for i in range(8)]
    tok = model.tokenizer
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=256)
    texts = [tok.decode(ids[mask.bool()]) for ids, mask in zip(enc["input_ids"], enc["attention_mask"])]
    n_tokens = int(enc["attention_mask"].sum())
    print(f"GPT-2-small-shaped random model (12 x 768, vocab 8000), {len(texts)} texts, {n_tokens} tokens, "
          f"{torch.get_num_threads()} threads, {repeats} alternating repeats")

    def plain_full():
        with torch.no_grad():
            model.hf(**enc)

    def plain_base():
        with torch.no_grad():
            model.hf.transformer(**enc)

    cases = (
        ("every site + logits", "blocks.*.*,ln_final.*,logits", plain_full),
        ("every block site (no logits: base model)", "blocks.*.*", plain_base),
        ("resid_post only", "blocks.*.hook_resid_post", plain_base),
    )
    for allocator in ("glibc defaults (no tune_malloc)", "lamina.tune_malloc()"):
        if allocator.startswith("lamina"):
            print(f"tune_malloc accepted: {lamina.tune_malloc()}")
        print(f"-- allocator: {allocator}")
        for label, sites, baseline in cases:
            lamina.capture(model, texts[:2], sites)  # warm-up
            baseline()
            p, c = [], []
            for _ in range(repeats):
                p.append(measure(baseline))
                c.append(measure(lambda: lamina.capture(model, texts, sites, batch_size=8)))
            for stat in (min, statistics.median):
                pw, pc = stat(t[0] for t in p), stat(t[1] for t in p)
                cw, cc = stat(t[0] for t in c), stat(t[1] for t in c)
                print(f"{label:42s} {stat.__name__:6s} plain {pw:6.2f} s ({pc:6.2f} cpu)  capture {cw:6.2f} s "
                      f"({cc:6.2f} cpu)  ratio {cw / pw:.3f}x wall, {cc / pc:.3f}x cpu  ({baseline.__name__})")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
