"""Position selectors: which token positions of each text a capture keeps.

A selector maps one tokenised text to a list of positions. Built-ins carry a ``key`` (a stable string) so
captures that use them can be cached; a plain callable has no key and is never cached.

>>> from lamina import select
>>> select.word("coffee")      # every occurrence of a word, its last token
>>> select.index(20)           # one position (negative counts from the end)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

from ..errors import LaminaError

__all__ = ["TokenizedText", "Selector", "all_tokens", "word", "index", "indices", "where", "as_selector",
           "parse_positions", "find_word_spans"]


@dataclass(frozen=True)
class TokenizedText:
    """One tokenised text as selectors see it.

    Attributes:
        index: position of the text in the capture's list of texts.
        text: the text itself.
        ids: token ids (with the tokenizer's special tokens, if it adds any).
        offsets: (start, end) character span of each token in ``text``; special tokens have (0, 0).
        special: 1 for special tokens (BOS, CLS, SEP...), else 0.
    """

    index: int
    text: str
    ids: tuple[int, ...]
    offsets: tuple[tuple[int, int], ...] | None
    special: tuple[int, ...]


@dataclass(frozen=True)
class Selector:
    """A named position rule. ``fn(tokenized) -> positions``; ``key`` identifies it in cache keys."""

    fn: Callable[[TokenizedText], Sequence[int]]
    key: str | None
    description: str

    def __call__(self, tokenized: TokenizedText) -> list[int]:
        positions = [int(p) for p in self.fn(tokenized)]
        n = len(tokenized.ids)
        for p in positions:
            if not 0 <= p < n:
                raise LaminaError(f"position {p} is outside text {tokenized.index} ({n} tokens)")
        return positions


def all_tokens() -> Selector:
    """Every token of every text (padding is never included)."""
    return Selector(lambda t: range(len(t.ids)), "all", "all tokens")


def find_word_spans(text: str, target: str, *, case_sensitive: bool = False) -> list[tuple[int, int]]:
    """Character spans of whole-word occurrences of ``target`` in ``text``."""
    flags = 0 if case_sensitive else re.IGNORECASE
    pattern = re.compile(r"(?<!\w)" + re.escape(target.strip()) + r"(?!\w)", flags)
    return [m.span() for m in pattern.finditer(text)]


def word(target: str, *, token: str = "last", case_sensitive: bool = False) -> Selector:
    """Every whole-word occurrence of ``target`` (" coffee", "coffee", "Coffee" alike).

    Occurrences are found in the text, then mapped to the tokens overlapping them through the tokenizer's
    character offsets, so leading-space BPE variants and capitalisation do not matter.

    Args:
        target: the word (leading/trailing spaces are ignored).
        token: for a word split into several tokens, ``"last"`` (default), ``"first"`` or ``"all"``.
        case_sensitive: match case exactly.
    """
    if token not in ("last", "first", "all"):
        raise LaminaError(f"token={token!r} is not valid; use 'last', 'first' or 'all'")
    if not target.strip():
        raise LaminaError("the target word is empty; pass a word such as 'coffee'")

    def fn(t: TokenizedText) -> list[int]:
        if t.offsets is None:
            raise LaminaError("word positions need a fast tokenizer with character offsets")
        spans = find_word_spans(t.text, target, case_sensitive=case_sensitive)
        if not spans:
            raise LaminaError(f"word {target.strip()!r} not found in text {t.index} "
                              f"({t.text[:40]!r}...); check the spelling or choose another word")
        positions: list[int] = []
        for start, end in spans:
            toks = [i for i, (a, b) in enumerate(t.offsets) if not t.special[i] and a < end and b > start]
            if not toks:
                continue
            positions.extend(toks if token == "all" else [toks[-1] if token == "last" else toks[0]])
        return sorted(set(positions))

    key = f"word:{target.strip()}:{token}:{'cs' if case_sensitive else 'ci'}"
    return Selector(fn, key, f"word {target.strip()!r} ({token} token)")


def index(position: int) -> Selector:
    """One position in every text; negative values count from the end (-1 = last token)."""

    def fn(t: TokenizedText) -> list[int]:
        n = len(t.ids)
        p = position + n if position < 0 else position
        if not 0 <= p < n:
            raise LaminaError(f"position {position} is outside text {t.index}, which has {n} tokens")
        return [p]

    return Selector(fn, f"index:{position}", f"position {position}")


def indices(positions: Sequence[int] | Sequence[Sequence[int]]) -> Selector:
    """Explicit positions: one list for every text, or one list per text."""
    per_text = bool(positions) and not isinstance(positions[0], int)

    def fn(t: TokenizedText) -> Sequence[int]:
        return positions[t.index] if per_text else positions

    return Selector(fn, f"indices:{list(map(list, positions)) if per_text else list(positions)}",
                    "explicit positions")


def where(fn: Callable[[TokenizedText], Sequence[int]], key: str | None = None) -> Selector:
    """Any rule ``fn(tokenized_text) -> positions``; give a ``key`` to make captures with it cacheable."""
    return Selector(fn, key, key or getattr(fn, "__name__", "custom rule"))


def as_selector(positions) -> Selector:
    """Accept a :class:`Selector`, ``"all"``, ``"word:W"``, ``"index:N"`` or a callable."""
    if isinstance(positions, Selector):
        return positions
    if isinstance(positions, str):
        return parse_positions(positions)
    if callable(positions):
        return where(positions)
    raise LaminaError(f"positions={positions!r} is not valid; use 'all', 'word:WORD', 'index:N' or a selector")


def parse_positions(spec: str) -> Selector:
    """Parse the CLI form: ``all``, ``word:WORD``, ``index:N``."""
    kind, _, arg = spec.partition(":")
    if kind == "all" and not arg:
        return all_tokens()
    if kind == "word" and arg:
        return word(arg)
    if kind == "index" and arg.lstrip("-").isdigit():
        return index(int(arg))
    raise LaminaError(f"positions {spec!r} not understood; use all, word:WORD or index:N")
