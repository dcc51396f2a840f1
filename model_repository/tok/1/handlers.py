"""Handlers of the bundled example: small numpy models that compute a whole batch at once.

Each class follows the compound handler contract: ``Handler(parameters, device)`` and
``handler(**inputs) -> {output: array}``, every array batched on axis 0.

The sentiment and topic models are naive Bayes over the tokenizer's hashed word ids, fitted in
their constructors from the small labelled corpus below (deterministic, a few milliseconds, numpy
only): the first thing a user sees answers "I love this product" with a positive label and needs
neither downloads nor weight files. Words the corpus never saw weigh nothing.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

# Obvious sentences, each with its mood and its topic: enough to label plain sentences sensibly.
CORPUS: tuple[tuple[str, str, str], ...] = (
    ("I love this product", "positive", "tech"),
    ("this phone is great and the battery is amazing", "positive", "tech"),
    ("the new laptop is fast and I really like it", "positive", "tech"),
    ("excellent software, it works perfectly", "positive", "tech"),
    ("the app is brilliant, easy and useful", "positive", "tech"),
    ("a wonderful computer with a superb screen", "positive", "tech"),
    ("I am happy with this device, highly recommended", "positive", "tech"),
    ("the update is good and the code runs smoothly", "positive", "tech"),
    ("what a fantastic match, the team played beautifully", "positive", "sport"),
    ("a great win for the club, the fans are delighted", "positive", "sport"),
    ("she won the race, an amazing and inspiring athlete", "positive", "sport"),
    ("the players were brilliant and scored a perfect goal", "positive", "sport"),
    ("an excellent season for the league champions", "positive", "sport"),
    ("we enjoyed the game, the coach did a wonderful job", "positive", "sport"),
    ("a beautiful film with a lovely story", "positive", "arts"),
    ("the concert was wonderful and the music delightful", "positive", "arts"),
    ("I loved the painting, a masterpiece of art", "positive", "arts"),
    ("a brilliant novel, the author writes beautifully", "positive", "arts"),
    ("the museum exhibition is superb, I enjoyed it", "positive", "arts"),
    ("great actors and an excellent theatre play", "positive", "arts"),
    ("good news, the economy is growing and jobs are up", "positive", "news"),
    ("the government agreed a welcome peace deal", "positive", "news"),
    ("the city celebrates a happy success for its people", "positive", "news"),
    ("voters praised the president for an excellent speech", "positive", "news"),
    ("a hopeful report, the minister promised better schools", "positive", "news"),
    ("the election was fair and the result is good", "positive", "news"),
    ("the best purchase I made, so happy with it", "positive", "tech"),
    ("our team won the championship, a great victory", "positive", "sport"),
    ("a great movie, I loved the cinema tonight", "positive", "arts"),
    ("friendly service and a fair price, I like it", "positive", "news"),
    ("this is terrible, I hate it", "negative", "tech"),
    ("the phone is broken and the battery is awful", "negative", "tech"),
    ("the laptop is slow and keeps crashing, I hate it", "negative", "tech"),
    ("horrible software, it never works", "negative", "tech"),
    ("the app is useless, buggy and annoying", "negative", "tech"),
    ("a bad computer with a poor screen", "negative", "tech"),
    ("I am disappointed with this device, a waste of money", "negative", "tech"),
    ("the worst update ever, the code fails", "negative", "tech"),
    ("what an awful match, the team played terribly", "negative", "sport"),
    ("a bad loss for the club, the fans are angry", "negative", "sport"),
    ("he lost the race, a painful and sad defeat", "negative", "sport"),
    ("the players were terrible and missed an easy goal", "negative", "sport"),
    ("a horrible season for the league, the worst ever", "negative", "sport"),
    ("we hated the game, the coach did a poor job", "negative", "sport"),
    ("a boring film with a stupid story", "negative", "arts"),
    ("the concert was awful and the music dreadful", "negative", "arts"),
    ("I hated the painting, an ugly piece of art", "negative", "arts"),
    ("a dull novel, the author writes badly", "negative", "arts"),
    ("the museum exhibition is disappointing and boring", "negative", "arts"),
    ("bad actors and a terrible theatre play", "negative", "arts"),
    ("bad news, the economy is shrinking and jobs are lost", "negative", "news"),
    ("the government faces an angry protest over the crisis", "negative", "news"),
    ("the city mourns a sad tragedy, many people died", "negative", "news"),
    ("voters blamed the president for a horrible scandal", "negative", "news"),
    ("a grim report, the minister admitted worse schools", "negative", "news"),
    ("the election was corrupt and the result is awful", "negative", "news"),
    ("I don't like it, it is not good and it crashed", "negative", "tech"),
    ("our team lost the championship, a shameful defeat", "negative", "sport"),
    ("an awful movie, I hated the cinema tonight", "negative", "arts"),
    ("rude service and an unfair price, I dislike it", "negative", "news"),
)

_WORD = re.compile(r"\w+(?:'\w+)*")


def word_ids(text: str, vocab: int) -> list[int]:
    """Hashed ids of the text's words (lower case, punctuation dropped), 1..vocab-1: 0 pads."""
    return [1 + zlib.crc32(w.encode()) % (vocab - 1) for w in _WORD.findall(text.lower())]


def fit_naive_bayes(labels: list[str], vocab: int, column: int) -> np.ndarray:
    """Per word id, each class's Laplace-smoothed log likelihood minus their mean: summed over a
    text's ids, the log posterior up to a constant with the class prior left out, so that a text of
    only unseen words (or none) leans nowhere. Ids the corpus never saw, and the padding id, weigh 0."""
    counts = np.zeros((vocab, len(labels)), dtype=np.float64)
    for entry in CORPUS:
        if entry[column] in labels:
            np.add.at(counts, (word_ids(entry[0], vocab), labels.index(entry[column])), 1.0)
    seen = counts.sum(axis=1) > 0
    loglik = np.log((counts + 1.0) / (counts.sum(axis=0) + seen.sum()))
    weights = loglik - loglik.mean(axis=1, keepdims=True)
    weights[~seen] = 0.0
    weights[0] = 0.0
    return weights.astype(np.float32)


class Tokenizer:
    """Hashes words into a fixed-width id vector (0 pads)."""

    def __init__(self, parameters: dict, device: str) -> None:
        self.width = int(parameters.get("width", 16))
        self.vocab = int(parameters.get("vocab", 4096))

    def __call__(self, text: np.ndarray) -> dict[str, np.ndarray]:
        ids = np.zeros((text.shape[0], self.width), dtype=np.int64)
        for row, raw in enumerate(text[:, 0]):
            words = word_ids(raw.decode("utf-8", errors="replace"), self.vocab)[: self.width]
            ids[row, : len(words)] = words
        return {"ids": ids}


class Sentiment:
    """A sentiment score in (-1, 1): P(positive) - P(negative) under naive Bayes, i.e. tanh of half
    the log odds (0 for a text of unseen words)."""

    def __init__(self, parameters: dict, device: str) -> None:
        vocab = int(parameters.get("vocab", 4096))
        self.weights = fit_naive_bayes(["positive", "negative"], vocab, column=1)[:, 0] * 2.0  # log odds

    def __call__(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        log_odds = self.weights[ids].sum(axis=1, keepdims=True)
        return {"score": np.tanh(log_odds / 2.0).astype(np.float32)}


class Topic:
    """A softmax over a few topics: the naive Bayes posterior of each."""

    def __init__(self, parameters: dict, device: str) -> None:
        topics = [str(t) for t in parameters.get("topics", ["news", "sport", "tech", "arts"])]
        known = sorted({entry[2] for entry in CORPUS})
        unknown = [t for t in topics if t not in known]
        if unknown:
            raise ValueError(f"topics {unknown} are not in the corpus of examples/textdemo/handlers.py ({known})")
        self.weights = fit_naive_bayes(topics, int(parameters.get("vocab", 4096)), column=2)

    def __call__(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        logits = self.weights[ids].sum(axis=1)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return {"topics": (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)}


class Verdict:
    """Joins both branches: '<positive|negative>/<topic>' and a confidence."""

    def __init__(self, parameters: dict, device: str) -> None:
        self.topics = np.array(parameters.get("topics", ["news", "sport", "tech", "arts"]), dtype=object)

    def __call__(self, score: np.ndarray, topics: np.ndarray) -> dict[str, np.ndarray]:
        best = topics.argmax(axis=1)
        mood = np.where(score[:, 0] >= 0, "positive", "negative")
        labels = np.array([f"{m}/{t}".encode() for m, t in zip(mood, self.topics[best])], dtype=object)
        confidence = (np.abs(score[:, 0]) * topics.max(axis=1)).astype(np.float32)
        return {"label": labels.reshape(-1, 1), "confidence": confidence.reshape(-1, 1)}
