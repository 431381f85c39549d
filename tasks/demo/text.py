"""Generated short texts on a few topics, shared by the demo text dataset and the demo text-embedding module.

Two uses are drawn from the same generator:

* ``TARGET_CLASSES``: the topics that the demo text dataset labels and the pipeline learns to classify.
* ``corpus``: unlabelled sentences on those topics and on ``OTHER_TOPICS`` (sometimes two topics mixed in one
  sentence) that the demo text module is pre-trained on, self-supervised: it never sees a label.

A sentence is made of clauses from a few templates whose slots are filled with topic words (nouns, verbs,
adjectives), shared filler words and the odd noise word. The topics are learnable but not trivially so: some
words belong to several topics ("record", "heat", "market", "season"...), a slot sometimes takes another topic's
word, short sentences carry only two or three topic words, and case, punctuation, typos, numbers, quotes and
accented letters vary.
"""

from __future__ import annotations

import numpy as np

TARGET_CLASSES = ("sports", "weather", "cooking", "finance")
OTHER_TOPICS = ("travel", "music", "health", "technology")
CORPUS_TOPICS = TARGET_CLASSES + OTHER_TOPICS
"""Every topic ``sentence`` can write about; ``corpus`` draws from all of them."""

MIN_WORDS = 5
MAX_WORDS = 40
CONFUSION = 0.12
"""Chance that a topic slot takes a word of a random topic instead."""
AMBIGUOUS_RATE = 0.25
"""Chance that a topic slot takes a word shared with other topics."""
VAGUE_RATE = 0.15
"""Chance that a topic slot takes a filler word."""

# Per topic: nouns, verbs, adjectives that mostly belong to it.
_POOLS: dict[str, dict[str, tuple[str, ...]]] = {
    "sports": {
        "N": ("team", "coach", "player", "match", "goal", "league", "stadium", "referee", "striker", "keeper",
              "championship", "tournament", "fans", "penalty", "trophy", "midfielder", "defender", "captain",
              "innings", "racket", "marathon", "athlete", "sprint", "semifinal", "derby", "halftime", "overtime",
              "playoffs", "umpire", "jersey"),
        "V": ("scored", "defended", "tackled", "won", "trained", "kicked", "passed", "equalised", "substituted",
              "sprinted", "celebrated", "cheered", "qualified", "relegated", "dribbled"),
        "A": ("unbeaten", "offside", "defensive", "athletic", "injured", "decisive", "thrilling", "undefeated",
              "tactical", "competitive"),
    },
    "weather": {
        "N": ("forecast", "rain", "storm", "clouds", "thunder", "snow", "wind", "humidity", "temperature",
              "sunshine", "fog", "hail", "frost", "breeze", "showers", "degrees", "hurricane", "flood", "drought",
              "lightning", "umbrella", "meteorologist", "gusts", "sleet", "monsoon", "heatwave", "blizzard",
              "tornado", "rainfall", "barometer"),
        "V": ("poured", "blew", "cleared", "froze", "flooded", "warmed", "cooled", "gusted", "thawed", "rained",
              "snowed", "drizzled", "howled", "brightened", "clouded"),
        "A": ("cloudy", "sunny", "humid", "windy", "chilly", "stormy", "foggy", "overcast", "icy", "muggy"),
    },
    "cooking": {
        "N": ("recipe", "oven", "pan", "skillet", "garlic", "onion", "butter", "flour", "dough", "sauce", "broth",
              "whisk", "spoon", "salt", "pepper", "chef", "kitchen", "ingredients", "pasta", "basil", "oregano",
              "cumin", "stew", "jalapeño", "crème", "soufflé", "casserole", "batter", "saucepan", "lasagna"),
        "V": ("chopped", "stirred", "baked", "fried", "sautéed", "simmered", "whisked", "seasoned", "roasted",
              "grilled", "kneaded", "boiled", "tasted", "drizzled", "marinated"),
        "A": ("crispy", "tender", "savory", "spicy", "golden", "creamy", "juicy", "caramelized", "delicious",
              "flaky"),
    },
    "finance": {
        "N": ("stocks", "shares", "investors", "bonds", "dividend", "portfolio", "inflation", "interest", "bank",
              "earnings", "revenue", "profit", "index", "trader", "currency", "budget", "debt", "equity", "fund",
              "analyst", "quarter", "yield", "valuation", "merger", "ipo", "tax", "mortgage", "broker", "payroll",
              "treasury"),
        "V": ("rallied", "plunged", "invested", "traded", "borrowed", "lent", "audited", "hedged", "surged",
              "slumped", "declined", "rebounded", "priced", "refinanced", "diversified"),
        "A": ("bullish", "bearish", "volatile", "fiscal", "quarterly", "annual", "liquid", "profitable", "risky",
              "monetary"),
    },
    "travel": {
        "N": ("flight", "airport", "passport", "hotel", "luggage", "beach", "tourist", "journey", "train",
              "ticket", "suitcase", "island", "museum", "itinerary", "visa", "cruise", "backpack", "hostel",
              "resort", "sightseeing"),
        "V": ("flew", "booked", "boarded", "explored", "visited", "landed", "packed", "toured", "hiked"),
        "A": ("scenic", "exotic", "crowded", "delayed", "coastal", "remote"),
    },
    "music": {
        "N": ("guitar", "concert", "band", "album", "song", "melody", "drummer", "singer", "piano", "chorus",
              "lyrics", "orchestra", "festival", "rhythm", "violin", "stage", "track", "tour"),
        "V": ("played", "sang", "recorded", "strummed", "composed", "performed", "rehearsed"),
        "A": ("acoustic", "loud", "catchy", "live", "harmonic"),
    },
    "health": {
        "N": ("doctor", "patient", "clinic", "vaccine", "symptoms", "fever", "therapy", "nurse", "hospital",
              "diet", "exercise", "vitamins", "sleep", "stress", "injury", "medicine", "blood", "pulse"),
        "V": ("recovered", "diagnosed", "prescribed", "treated", "healed", "rested"),
        "A": ("healthy", "chronic", "sick", "fit", "clinical"),
    },
    "technology": {
        "N": ("software", "laptop", "server", "code", "network", "app", "update", "battery", "data", "algorithm",
              "robot", "chip", "startup", "phone", "screen", "browser", "bug", "cloud"),
        "V": ("installed", "coded", "crashed", "debugged", "deployed", "rebooted", "streamed"),
        "A": ("digital", "wireless", "smart", "online", "fast"),
    },
}

# Words that belong to more than one topic: they are what makes the classes overlap.
_AMBIGUOUS: dict[str, tuple[str, ...]] = {
    "record": ("sports", "weather", "finance", "music"),
    "high": ("weather", "finance"),
    "low": ("weather", "finance"),
    "heat": ("weather", "cooking", "sports"),
    "hot": ("weather", "cooking"),
    "cold": ("weather", "cooking", "health"),
    "season": ("sports", "weather", "cooking"),
    "score": ("sports", "finance", "music"),
    "points": ("sports", "finance"),
    "loss": ("sports", "finance"),
    "gains": ("finance", "sports"),
    "rise": ("weather", "finance"),
    "fall": ("weather", "finance", "sports"),
    "drop": ("weather", "finance"),
    "market": ("finance", "cooking"),
    "stock": ("finance", "cooking"),
    "beat": ("sports", "cooking", "music"),
    "serve": ("sports", "cooking"),
    "pitch": ("sports", "finance", "music"),
    "sharp": ("finance", "cooking"),
    "mild": ("weather", "cooking"),
    "fresh": ("cooking", "weather"),
    "bowl": ("cooking", "sports"),
    "crash": ("finance", "sports", "technology"),
    "return": ("sports", "finance", "travel"),
    "balance": ("finance", "cooking", "health"),
    "chill": ("weather", "cooking"),
    "pressure": ("weather", "sports", "finance", "health"),
    "storm": ("weather", "finance"),
    "recovery": ("finance", "health", "sports"),
    "trip": ("travel", "sports"),
    "warm": ("weather", "cooking"),
}
_AMBIGUOUS_BY_TOPIC = {t: tuple(w for w, ts in _AMBIGUOUS.items() if t in ts) for t in CORPUS_TOPICS}

_FILLER = (
    "the", "a", "an", "and", "of", "to", "in", "on", "at", "for", "with", "this", "that", "it", "was", "is",
    "were", "we", "they", "i", "you", "he", "she", "our", "my", "their", "very", "really", "quite", "just",
    "again", "today", "yesterday", "tomorrow", "morning", "evening", "week", "weekend", "after", "before",
    "during", "because", "but", "so", "then", "some", "many", "people", "everyone", "said", "says", "think",
    "thought", "about", "local", "new", "big", "little", "still", "more", "most", "almost", "over", "under",
    "around", "time", "day", "night", "year", "last", "next", "good", "bad", "great", "strong", "top", "lot",
)
_NOISE = (
    "lamp", "window", "banana", "purple", "bicycle", "pencil", "carpet", "mirror", "blanket", "ladder",
    "envelope", "giraffe", "teapot", "sock", "cactus", "doorknob", "velvet", "marble", "pigeon", "zebra",
)
# Clause templates: F filler, N noun, V verb, A adjective of the topic.
_TEMPLATES = (
    "F A N V F F N",
    "F N V F A N",
    "N and N V F",
    "F F A N",
    "F F V F N F N",
    "F N F V A",
    "A N V",
    "F F N V F F A N",
    "N F A F F V",
    "F V F N and F N",
)
_PUNCT = (", ", ". ", "! ", "? ", "; ", " - ", ", ", ". ")


def _typo(word: str, rng: np.random.Generator) -> str:
    """Swaps two neighbouring letters, as a hurried writer does."""
    if len(word) < 4:
        return word
    k = int(rng.integers(1, len(word) - 2))
    return word[:k] + word[k + 1] + word[k] + word[k + 2:]


def _topic_word(topic: str, slot: str, rng: np.random.Generator, confusion: float) -> str:
    r = rng.random()
    if r < confusion:
        # A word of another topic: people digress.
        other = CORPUS_TOPICS[int(rng.integers(len(CORPUS_TOPICS)))]
        pool = _POOLS[other][slot]
    elif r < confusion + AMBIGUOUS_RATE and _AMBIGUOUS_BY_TOPIC[topic]:
        pool = _AMBIGUOUS_BY_TOPIC[topic]
    elif r < confusion + AMBIGUOUS_RATE + VAGUE_RATE:
        # Vague writing: a slot that could carry the topic carries nothing.
        pool = _FILLER
    else:
        pool = _POOLS[topic][slot]
    return pool[int(rng.integers(len(pool)))]


def _words(topics: tuple[str, ...], rng: np.random.Generator, n_words: int, confusion: float) -> list[tuple[str, bool]]:
    """``n_words`` words as (word, starts a clause), clause by clause, each clause on one of ``topics``."""
    out: list[tuple[str, bool]] = []
    while len(out) < n_words:
        topic = topics[int(rng.integers(len(topics)))]
        template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))].split()
        for i, slot in enumerate(template):
            if slot == "F":
                w = _FILLER[int(rng.integers(len(_FILLER)))]
            elif slot in ("N", "V", "A"):
                w = _topic_word(topic, slot, rng, confusion)
            else:
                w = slot
            out.append((w, i == 0))
            if rng.random() < 0.05:
                out.append((_NOISE[int(rng.integers(len(_NOISE)))], False))
            if rng.random() < 0.03:
                out.append((str(int(rng.integers(0, 100))) + ("%" if rng.random() < 0.3 else ""), False))
    return out[:n_words]


def _render(words: list[tuple[str, bool]], rng: np.random.Generator) -> str:
    """Joins words with spaces and clause punctuation, and varies case, quotes and spelling."""
    parts: list[str] = []
    for i, (w, starts) in enumerate(words):
        r = rng.random()
        if r < 0.02:
            w = _typo(w, rng)
        elif r < 0.04:
            w = w.upper()
        elif r < 0.08:
            w = w.capitalize()
        if rng.random() < 0.015:
            w = f'"{w}"'
        if i == 0:
            parts.append(w.capitalize() if rng.random() < 0.8 else w)
        elif starts and rng.random() < 0.7:
            sep = _PUNCT[int(rng.integers(len(_PUNCT)))]
            parts.append(sep.rstrip() if sep.startswith(" ") else sep[:-1])
            parts.append(" " + (w.capitalize() if sep[0] in ".!?" else w))
        else:
            parts.append(" " + w)
    end = ("", ".", ".", ".", "!", "?", "...")[int(rng.integers(7))]
    return "".join(parts) + end


def sentence(label: str, rng: np.random.Generator, min_words: int = MIN_WORDS, max_words: int = MAX_WORDS,
             confusion: float = CONFUSION) -> str:
    """Writes one text of ``min_words`` to ``max_words`` words about ``label``.

    Args:
        label: one of ``CORPUS_TOPICS`` (``TARGET_CLASSES`` for the labelled dataset).
        rng: the source of randomness; the same seed writes the same text.
        min_words: fewest words.
        max_words: most words; lengths are spread evenly in between.
        confusion: chance that a topic slot takes a word of a random topic instead.

    Returns:
        The text, on one line.

    Raises:
        ValueError: for an unknown topic.
    """
    if label not in _POOLS:
        raise ValueError(f"unknown topic {label!r}; expected one of {CORPUS_TOPICS}")
    n_words = int(rng.integers(min_words, max_words + 1))
    return _render(_words((label,), rng, n_words, confusion), rng)


def corpus(rng: np.random.Generator, n: int, mixed: float = 0.2) -> list[str]:
    """``n`` unlabelled sentences for pre-training, on all of ``CORPUS_TOPICS``.

    Args:
        rng: the source of randomness.
        n: number of sentences.
        mixed: fraction of sentences whose clauses alternate between two topics.

    Returns:
        The sentences; which topic each is about is not kept.
    """
    out = []
    for _ in range(n):
        topics = tuple(CORPUS_TOPICS[int(k)] for k in rng.choice(len(CORPUS_TOPICS), 2, replace=False))
        if rng.random() >= mixed:
            topics = topics[:1]
        out.append(_render(_words(topics, rng, int(rng.integers(MIN_WORDS, MAX_WORDS + 1)), CONFUSION), rng))
    return out
