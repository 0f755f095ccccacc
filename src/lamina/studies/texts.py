"""Texts the project writes itself, and the offline corpus loader."""

from __future__ import annotations

__all__ = ["COFFEE_PARAGRAPH", "PHILOSOPHER_PARAGRAPH", "HER_SENTENCES", "corpus_text", "default_text"]

#: An encyclopedia-style paragraph with the word "coffee" exactly 7 times (first at the second word).
COFFEE_PARAGRAPH = (
    "Turkish coffee is a style of coffee prepared in a small pot called a cezve, using very finely ground "
    "beans that are never filtered. The grounds stay in the cup, and the coffee is served with a glass of "
    "water. Sugar is added while the coffee brews rather than afterwards, and a thick foam on top is taken "
    "as a sign of skill. Coffee houses spread from Istanbul across the region, where people met to talk, "
    "play games and drink coffee. Reading the grounds left in the cup is still a popular way to finish a "
    "cup of coffee."
)


def default_text(model, user_text: str | None, default: str) -> tuple[str, dict]:
    """The user's text as given (a text longer than the context is their error, reported by capture), or the
    study's own default text cut at a token boundary to fit the model's context.

    Returns:
        (text, info) where info records the source and, if the default was cut, how many tokens remain.
    """
    if user_text:
        return user_text, {"text_source": "user text (--text-file)"}
    limit = model.context_length
    enc = model.tokenizer(default, return_offsets_mapping=True, verbose=False)
    n = len(enc["input_ids"])
    if limit is None or n <= limit:
        return default, {"text_source": "built-in text"}
    special = sum(1 for a, b in enc["offset_mapping"] if a == b == 0)  # BOS/CLS/SEP the tokenizer adds
    ends = [b for a, b in enc["offset_mapping"] if b > 0]
    cut = ends[max(0, limit - special) - 1]
    return default[:cut], {"text_source": f"built-in text, cut to the model's {limit}-token context "
                                          f"({n} tokens in full)"}


def corpus_text(user_corpus: str | None = None) -> tuple[str, str]:
    """The corpus a study reads: the user's (``--corpus``) or real English prose that ships with Python
    (``pydoc_data.topics``). Returns (text, description)."""
    if user_corpus:
        return user_corpus, "user corpus (--corpus)"
    from ..testing import offline_text

    return offline_text(), "pydoc_data.topics (Python's help topics, ships with Python)"

#: An encyclopedia-style paragraph of ~300+ tokens about a philosopher, written for lamina.
PHILOSOPHER_PARAGRAPH = (
    "Baruch Spinoza was a Dutch philosopher of Portuguese Jewish origin, born in Amsterdam in 1632. Raised in "
    "the Jewish community of the city, he was educated in Hebrew and in the commentaries on scripture, and he "
    "worked for some years in the family trading business. As a young man he came to doubt many of the "
    "doctrines he had been taught, and in 1656 the leaders of the synagogue expelled him with a severe "
    "writ of exclusion. He left the city, earned a modest living by grinding lenses for microscopes and "
    "telescopes, and kept up a wide correspondence with scientists and scholars across Europe. His most "
    "famous work, the Ethics, was written in the manner of a geometry book, with definitions, axioms and "
    "propositions followed by proofs. In it he argued that there is only one substance, which he called God "
    "or Nature, and that minds and bodies are two aspects of that single reality rather than separate "
    "things. Human freedom, on this view, does not mean escaping the chain of causes; it means understanding "
    "that chain clearly, so that reason can govern the passions. His Theological-Political Treatise defended "
    "the freedom to think and to speak, and it read the Bible as a historical document written by many "
    "hands. The book caused a scandal and was banned, and the Ethics appeared only after his death in 1677, "
    "when he was forty-four. Later thinkers of the Enlightenment, and poets and scientists of the following "
    "centuries, found in his work a bold picture of a world governed by necessary laws, and he is now counted "
    "among the great rationalists of the early modern period."
)

#: 54 short sentences, each with the word "her" exactly once and never first (the qkv-similarity target).
HER_SENTENCES = (
    "I saw her at the market this morning.",
    "We gave her a book on Friday.",
    "The teacher asked her to read the poem aloud.",
    "Nobody told her about the change of plans.",
    "He wrote her a long letter from the coast.",
    "The dog followed her all the way home.",
    "They invited her to join the choir.",
    "Did you call her after the meeting?",
    "The rain caught her without an umbrella.",
    "My brother met her at the train station.",
    "The judge thanked her for the clear answer.",
    "A stranger handed her a folded map.",
    "The noise woke her just before dawn.",
    "Please remind her to lock the door.",
    "The committee chose her as the new leader.",
    "Everyone in the village knew her by name.",
    "The old photograph reminded her of summer.",
    "The coach pushed her to run one more lap.",
    "I will show her the garden tomorrow.",
    "The doctor told her to rest for a week.",
    "Their answer surprised her more than anyone.",
    "The captain sent her a message by radio.",
    "We found her reading under the oak tree.",
    "The crowd cheered her as she crossed the line.",
    "The letter made her laugh out loud.",
    "His silence worried her during the long drive.",
    "The manager promoted her after one year.",
    "A small boat carried her across the lake.",
    "The cold wind pushed her back toward the house.",
    "The children drew her a picture of a horse.",
    "Music always helped her fall asleep.",
    "The museum hired her to restore old maps.",
    "Nothing could stop her from finishing the race.",
    "The smell of bread led her into the bakery.",
    "The professor praised her careful work.",
    "The cat watched her every evening.",
    "The storm kept her indoors all weekend.",
    "An old friend visited her in the spring.",
    "The town gave her a medal for courage.",
    "The phone call left her speechless.",
    "The guide led her through the narrow streets.",
    "A loud bell called her back to class.",
    "The clerk helped her with the heavy boxes.",
    "The news reached her late at night.",
    "The film moved her to tears.",
    "We asked her what she wanted for dinner.",
    "The kitten climbed onto her lap and slept.",
    "Sunlight warmed her face through the window.",
    "The baker saved her the last loaf.",
    "The long journey tired her more than she expected.",
    "The puzzle kept her busy for hours.",
    "The river carried her small paper boat away.",
    "The band played her favourite song twice.",
    "The question gave her a moment to think.",
)
