"""Benchmark: plain HF forward vs lamina.capture of every site, same GPT-2-small-shaped random model, same run.

Prints tokens/s for each and the ratio (target: capture <= 1.05x the plain forward's time), with glibc's
default allocator settings and then with lamina.tune_malloc(). Not a test.
"""

from __future__ import annotations

import tempfile
import time

import torch

import lamina
from lamina.testing import make_tiny_model, offline_text, train_tokenizer


def best_of(fn, repeats=3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = make_tiny_model("gpt2", tmp, tokenizer=train_tokenizer("bpe", 8000), n_layers=12, d_model=768,
                               n_heads=12, n_positions=1024)
        model = lamina.load_model(path)
    words = offline_text(200_000).split()
    texts = [" ".join(words[i * 180:(i + 1) * 180]) for i in range(16)]
    enc = model.tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=256) \
        if model.tokenizer.pad_token else None
    if enc is None:
        model.tokenizer.pad_token = model.tokenizer.eos_token
        enc = model.tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=256)
    texts = [model.tokenizer.decode(ids[mask.bool()]) for ids, mask in zip(enc["input_ids"], enc["attention_mask"])]
    n_tokens = int(enc["attention_mask"].sum())
    print(f"GPT-2-small-shaped random model (12 x 768), {len(texts)} texts, {n_tokens} tokens, "
          f"{torch.get_num_threads()} threads")

    def plain_full():
        with torch.no_grad():
            model.hf(**enc)

    def plain_base():
        with torch.no_grad():
            model.hf.transformer(**enc)

    cases = (
        ("all sites + logits", "blocks.*.*,ln_final.hook_normalized,logits", plain_full),
        ("all block sites (no logits: base model only)", "blocks.*.*", plain_full),
        ("resid_post only", "blocks.*.hook_resid_post", plain_base),
    )
    # First with glibc's default allocator settings, then after lamina.tune_malloc() (what the CLI uses):
    # mallopt changes only later allocations, so both halves run in this one process, in this order.
    for allocator in ("glibc defaults", "lamina.tune_malloc()"):
        if allocator != "glibc defaults":
            print(f"tune_malloc accepted: {lamina.tune_malloc()}")
        print(f"-- allocator: {allocator}")
        for label, sites, baseline in cases:
            lamina.capture(model, texts[:2], sites)  # warm-up
            t_plain = best_of(baseline)
            t_cap = best_of(lambda: lamina.capture(model, texts, sites, batch_size=16))
            print(f"{label:48s} plain {n_tokens / t_plain:8.0f} tok/s  capture {n_tokens / t_cap:8.0f} tok/s  "
                  f"ratio {t_cap / t_plain:.3f}x  (baseline: {baseline.__name__})")

if __name__ == "__main__":
    main()
