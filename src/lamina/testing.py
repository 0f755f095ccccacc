"""Tiny randomly initialised models of every supported architecture, with real tokenizers, built offline.

Used by the test suite, the benchmarks and as random-weight null baselines: a model built here is saved with
``save_pretrained`` and loaded back through :func:`lamina.load_model` (the same path users take).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["offline_text", "train_tokenizer", "tiny_config", "make_tiny_model", "single_token_words", "TINY_ARCHS"]

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


def tiny_config(arch: str, vocab_size: int, *, n_layers: int = 2, d_model: int = 32, n_heads: int = 4,
                n_positions: int = 512):
    """An HF config of a tiny model of one architecture (lamina adapter name)."""
    from transformers import BertConfig, GPT2Config, GPTNeoConfig, GPTNeoXConfig, LlamaConfig

    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_layer=n_layers, n_embd=d_model, n_head=n_heads,
                          n_positions=n_positions, bos_token_id=0, eos_token_id=0)
    if arch == "gpt-neo":
        return GPTNeoConfig(vocab_size=vocab_size, num_layers=n_layers, hidden_size=d_model, num_heads=n_heads,
                            attention_types=[[["global", "local"], max(1, n_layers // 2)]]
                            if n_layers % 2 == 0 else [[["global"], n_layers]],
                            max_position_embeddings=n_positions, window_size=8, intermediate_size=4 * d_model,
                            bos_token_id=0, eos_token_id=0)
    if arch == "gpt-neox":
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
    raise ValueError(f"unknown tiny architecture {arch!r}; choose from {', '.join(TINY_ARCHS)}")


def make_tiny_model(arch: str, path: str | Path, *, seed: int = 0, tokenizer=None, **config_kwargs) -> Path:
    """Build a randomly initialised tiny model with a trained tokenizer and save both to ``path``.

    Args:
        arch: one of :data:`TINY_ARCHS`.
        path: output folder (created).
        seed: torch seed for the random weights.
        tokenizer: reuse a tokenizer (else one is trained: WordPiece for BERT, byte-level BPE otherwise).
        **config_kwargs: passed to :func:`tiny_config` (n_layers, d_model, n_heads, n_positions).

    Returns:
        The folder, loadable with ``lamina.load_model(path)``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    if tokenizer is None:
        tokenizer = train_tokenizer("wordpiece" if arch == "bert" else "bpe")
    config = tiny_config(arch, len(tokenizer), **config_kwargs)
    torch.manual_seed(seed)
    auto = AutoModelForMaskedLM if arch == "bert" else AutoModelForCausalLM
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
