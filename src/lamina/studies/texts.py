"""Texts the project writes itself, and the offline corpus loader."""

from __future__ import annotations

__all__ = ["COFFEE_PARAGRAPH", "corpus_text"]

#: An encyclopedia-style paragraph with the word "coffee" exactly 7 times (first at the second word).
COFFEE_PARAGRAPH = (
    "Turkish coffee is a style of coffee prepared in a small pot called a cezve, using very finely ground "
    "beans that are never filtered. The grounds stay in the cup, and the coffee is served with a glass of "
    "water. Sugar is added while the coffee brews rather than afterwards, and a thick foam on top is taken "
    "as a sign of skill. Coffee houses spread from Istanbul across the region, where people met to talk, "
    "play games and drink coffee. Reading the grounds left in the cup is still a popular way to finish a "
    "cup of coffee."
)


def corpus_text(user_corpus: str | None = None) -> tuple[str, str]:
    """The corpus a study reads: the user's (``--corpus``) or real English prose that ships with Python
    (``pydoc_data.topics``). Returns (text, description)."""
    if user_corpus:
        return user_corpus, "user corpus (--corpus)"
    from ..testing import offline_text

    return offline_text(), "pydoc_data.topics (Python's help topics, ships with Python)"
