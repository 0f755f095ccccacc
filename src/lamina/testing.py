"""Tiny randomly initialised models of every supported architecture, with real tokenizers, built offline.

Used by the test suite, the benchmarks and as random-weight null baselines: a model built here is saved with
``save_pretrained`` and loaded back through :func:`lamina.load_model` (the same path users take).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["offline_text", "train_tokenizer", "tiny_config", "make_tiny_model", "single_token_words", "is_masked",
           "TINY_ARCHS", "ALL_TINY_TYPES", "TINY_VARIANTS", "MASKED_TYPES"]

#: Architectures :func:`make_tiny_model` builds (lamina adapter names).
TINY_ARCHS = ("gpt2", "gpt-neo", "gpt-neox", "llama", "bert")


def offline_text(max_chars: int | None = None) -> str:
    """Real English prose that ships with Python: the help topics of ``pydoc_data.topics``."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))
    return text[:max_chars] if max_chars else text


def train_tokenizer(kind: str = "bpe", vocab_size: int = 512):
    """Train a small fast tokenizer on :func:`offline_text`.

    Args:
        kind: ``"bpe"`` (byte-level BPE like GPT-2) or ``"wordpiece"`` (lower-cased, BERT-style with
            [CLS]/[SEP] added around every text).
        vocab_size: target vocabulary size.

    Returns:
        A ``transformers.PreTrainedTokenizerFast``.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = offline_text(400_000).split("\n")
    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(corpus, trainer)
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                       eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    if kind == "wordpiece":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                       cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    raise ValueError(f"kind must be 'bpe' or 'wordpiece', not {kind!r}")


#: Masked LMs among the tiny types (built with ``AutoModelForMaskedLM`` and a WordPiece tokenizer).
MASKED_TYPES = ("bert", "roberta", "electra", "distilbert", "modernbert")

_IDS = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}


def _llama_like(v, n, d, h, p, **extra):
    """Llama-style config fields: GQA with half as many key/value heads, a 2x MLP."""
    return {"vocab_size": v, "num_hidden_layers": n, "hidden_size": d, "num_attention_heads": h,
            "num_key_value_heads": max(1, h // 2), "intermediate_size": 2 * d, "max_position_embeddings": p,
            **_IDS, **extra}


def _bert_like(v, n, d, h, p, **extra):
    return {"vocab_size": v, "num_hidden_layers": n, "hidden_size": d, "num_attention_heads": h,
            "intermediate_size": 2 * d, "max_position_embeddings": p, "pad_token_id": 0, **extra}


#: HF model type -> ``(vocab, n_layers, d_model, n_heads, n_positions) -> config kwargs`` of a tiny model.
_TINY = {
    "qwen2": _llama_like, "mistral": _llama_like, "olmo": _llama_like, "olmo2": _llama_like,
    "cohere": _llama_like, "starcoder2": _llama_like, "phi3": _llama_like, "phi": _llama_like,
    "stablelm": _llama_like, "olmo3": _llama_like, "exaone4": _llama_like, "cohere2": _llama_like,
    "qwen3": lambda v, n, d, h, p: _llama_like(v, n, d, h, p, head_dim=d // h),
    "gemma": lambda v, n, d, h, p: _llama_like(v, n, d, h, p, head_dim=d // h),
    "gemma2": lambda v, n, d, h, p: _llama_like(v, n, d, h, p, head_dim=d // h, final_logit_softcapping=3.0),
    "gemma3_text": lambda v, n, d, h, p: _llama_like(v, n, d, h, p, head_dim=d // h, sliding_window=8),
    "mixtral": lambda v, n, d, h, p: _llama_like(v, n, d, h, p, num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": lambda v, n, d, h, p: _llama_like(v, n, d, h, p, num_experts=4, num_experts_per_tok=2,
                                                   moe_intermediate_size=d, shared_expert_intermediate_size=d),
    "qwen3_moe": lambda v, n, d, h, p: _llama_like(v, n, d, h, p, num_experts=4, num_experts_per_tok=2,
                                                   moe_intermediate_size=d, head_dim=d // h),
    "opt": lambda v, n, d, h, p: {"vocab_size": v, "num_hidden_layers": n, "hidden_size": d,
                                  "num_attention_heads": h, "ffn_dim": 2 * d, "word_embed_proj_dim": d,
                                  "max_position_embeddings": p, **_IDS},
    "gptj": lambda v, n, d, h, p: {"vocab_size": v, "n_layer": n, "n_embd": d, "n_head": h, "n_positions": p,
                                   "rotary_dim": d // h // 2, **_IDS},
    "bloom": lambda v, n, d, h, p: {"vocab_size": v, "n_layer": n, "hidden_size": d, "n_head": h, **_IDS},
    "falcon": lambda v, n, d, h, p: {"vocab_size": v, "num_hidden_layers": n, "hidden_size": d,
                                     "num_attention_heads": h, "max_position_embeddings": p, **_IDS},
    "gpt_bigcode": lambda v, n, d, h, p: {"vocab_size": v, "n_layer": n, "n_embd": d, "n_head": h,
                                          "n_positions": p, **_IDS},
    "roberta": _bert_like,
    "electra": lambda v, n, d, h, p: _bert_like(v, n, d, h, p, embedding_size=d // 2),
    "distilbert": lambda v, n, d, h, p: {"vocab_size": v, "n_layers": n, "dim": d, "n_heads": h,
                                         "hidden_dim": 2 * d, "max_position_embeddings": p, "pad_token_id": 0},
    "modernbert": lambda v, n, d, h, p: {**_bert_like(v, n, d, h, p), "bos_token_id": 2, "eos_token_id": 3,
                                         "cls_token_id": 2, "sep_token_id": 3},
}

#: Config variants that exercise other layouts of a family: name -> (model type, config overrides).
TINY_VARIANTS = {
    "falcon-new-decoder": ("falcon", {"new_decoder_architecture": True, "num_kv_heads": 2}),
    "falcon-per-head": ("falcon", {"multi_query": False, "parallel_attn": False}),
    "gpt_bigcode-multi-head": ("gpt_bigcode", {"multi_query": False}),
    "opt-post-norm": ("opt", {"do_layer_norm_before": False, "word_embed_proj_dim": 16}),
    "qwen2_moe-dense-layer": ("qwen2_moe", {"mlp_only_layers": [1]}),
}

#: Every HF model type with an adapter that :func:`make_tiny_model` builds (the five of TINY_ARCHS included).
ALL_TINY_TYPES = ("gpt2", "gpt_neo", "gpt_neox", "llama", "bert", *_TINY)

_ARCH_TYPES = {"gpt-neo": "gpt_neo", "gpt-neox": "gpt_neox"}  # lamina family names of TINY_ARCHS -> model types


def tiny_config(arch: str, vocab_size: int, *, n_layers: int = 2, d_model: int = 32, n_heads: int = 4,
                n_positions: int = 512):
    """An HF config of a tiny model: ``arch`` is a name of :data:`TINY_ARCHS`, :data:`ALL_TINY_TYPES` (an HF
    model type) or :data:`TINY_VARIANTS`."""
    from transformers import CONFIG_MAPPING, BertConfig, GPT2Config, GPTNeoConfig, GPTNeoXConfig, LlamaConfig

    arch = _ARCH_TYPES.get(arch, arch)
    model_type, overrides = TINY_VARIANTS.get(arch, (arch, {}))
    if model_type in _TINY:
        fields = _TINY[model_type](vocab_size, n_layers, d_model, n_heads, n_positions)
        return CONFIG_MAPPING[model_type](**{**fields, **overrides})
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_layer=n_layers, n_embd=d_model, n_head=n_heads,
                          n_positions=n_positions, bos_token_id=0, eos_token_id=0)
    if arch == "gpt_neo":
        return GPTNeoConfig(vocab_size=vocab_size, num_layers=n_layers, hidden_size=d_model, num_heads=n_heads,
                            attention_types=[[["global", "local"], max(1, n_layers // 2)]]
                            if n_layers % 2 == 0 else [[["global"], n_layers]],
                            max_position_embeddings=n_positions, window_size=8, intermediate_size=4 * d_model,
                            bos_token_id=0, eos_token_id=0)
    if arch == "gpt_neox":
        return GPTNeoXConfig(vocab_size=vocab_size, num_hidden_layers=n_layers, hidden_size=d_model,
                             num_attention_heads=n_heads, intermediate_size=4 * d_model,
                             max_position_embeddings=n_positions, bos_token_id=0, eos_token_id=0)
    if arch == "llama":
        return LlamaConfig(vocab_size=vocab_size, num_hidden_layers=n_layers, hidden_size=d_model,
                           num_attention_heads=n_heads, num_key_value_heads=max(1, n_heads // 2),
                           intermediate_size=3 * d_model, max_position_embeddings=n_positions,
                           bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if arch == "bert":
        return BertConfig(vocab_size=vocab_size, num_hidden_layers=n_layers, hidden_size=d_model,
                          num_attention_heads=n_heads, intermediate_size=4 * d_model,
                          max_position_embeddings=n_positions, pad_token_id=0)
    raise ValueError(f"unknown tiny architecture {arch!r}; choose from "
                     f"{', '.join((*TINY_ARCHS, *ALL_TINY_TYPES, *TINY_VARIANTS))}")


def is_masked(arch: str) -> bool:
    """True when a tiny ``arch`` (any name :func:`tiny_config` takes) is a masked LM."""
    return TINY_VARIANTS.get(arch, (arch,))[0] in MASKED_TYPES


def make_tiny_model(arch: str, path: str | Path, *, seed: int = 0, tokenizer=None, **config_kwargs) -> Path:
    """Build a randomly initialised tiny model with a trained tokenizer and save both to ``path``.

    Args:
        arch: a name of :data:`TINY_ARCHS`, :data:`ALL_TINY_TYPES` or :data:`TINY_VARIANTS`.
        path: output folder (created).
        seed: torch seed for the random weights.
        tokenizer: reuse a tokenizer (else one is trained: WordPiece for masked LMs, byte-level BPE otherwise).
        **config_kwargs: passed to :func:`tiny_config` (n_layers, d_model, n_heads, n_positions).

    Returns:
        The folder, loadable with ``lamina.load_model(path)``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    if tokenizer is None:
        tokenizer = train_tokenizer("wordpiece" if is_masked(arch) else "bpe")
    config = tiny_config(arch, len(tokenizer), **config_kwargs)
    torch.manual_seed(seed)
    auto = AutoModelForMaskedLM if is_masked(arch) else AutoModelForCausalLM
    model = auto.from_config(config)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def single_token_words(model, n: int, *, source: str | None = None) -> list[str]:
    """The first ``n`` distinct alphabetic words of ``source`` (default: the offline prose) that the model's
    tokenizer keeps as one token after a space (tiny vocabularies split most nouns)."""
    words = []
    for w in dict.fromkeys((source or offline_text(40000)).lower().split()):
        if w.isalpha() and len(model.tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1:
            words.append(w)
            if len(words) == n:
                return words
    raise ValueError(f"only {len(words)} single-token words found; pass a longer source")
