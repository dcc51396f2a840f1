"""The bundled example's handlers in-process, built from the spec's own parameters: the first
answer a user sees (the README's `compound infer classify`) must make sense."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from toolkit.plan import plan_spec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "textdemo" / "pipeline.yaml"

# Obvious sentences, none of them in the corpus verbatim except the README's.
MOODS = {
    "I love this product": "positive",
    "This laptop is amazing": "positive",
    "What a great game!": "positive",
    "I really enjoyed the film": "positive",
    "Best purchase ever, I'm so happy": "positive",
    "This is terrible, I hate it": "negative",
    "The movie was awful.": "negative",
    "The worst service, really bad": "negative",
    "The team lost the match": "negative",
    "It is bad": "negative",
}
TOPICS = {
    "What a great game!": "sport",
    "The team lost the match": "sport",
    "This laptop is amazing": "tech",
    "I really enjoyed the film": "arts",
    "The concert was boring": "arts",
    "The election was a scandal": "news",
}


def load_handlers() -> ModuleType:
    module_spec = importlib.util.spec_from_file_location("_textdemo_handlers", EXAMPLE.parent / "handlers.py")
    assert module_spec and module_spec.loader
    handlers = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(handlers)
    return handlers


def classify(texts: list[str]) -> dict[str, np.ndarray]:
    """The `classify` pipeline's steps in order, each handler built from its model's parameters."""
    spec = plan_spec(EXAMPLE).spec
    handlers = load_handlers()
    tensors: dict[str, Any] = {"text": np.array([[t.encode()] for t in texts], dtype=object)}
    for step in spec.pipelines["classify"].steps:
        model = spec.models[step.model]
        handler = getattr(handlers, model.handler.split(":")[1])(model.parameters, "cpu")
        result = handler(**{name: tensors[source] for name, source in step.inputs.items()})
        tensors.update({target: result[name] for name, target in step.outputs.items()})
    return tensors


def test_obvious_sentences_get_the_obvious_mood() -> None:
    out = classify(list(MOODS))
    moods = [label.decode().split("/")[0] for label in out["label"][:, 0]]
    assert dict(zip(MOODS, moods)) == MOODS
    assert (np.sign(out["score"][:, 0]) == [1 if m == "positive" else -1 for m in MOODS.values()]).all()


def test_obvious_sentences_get_the_obvious_topic() -> None:
    out = classify(list(TOPICS))
    topics = [label.decode().split("/")[1] for label in out["label"][:, 0]]
    assert dict(zip(TOPICS, topics)) == TOPICS


def test_the_readme_answer() -> None:
    out = classify(["I love this product"])
    assert out["label"][0, 0] == b"positive/tech"
    assert 0.5 < out["confidence"][0, 0] <= 1.0


def test_unknown_words_and_empty_text_lean_nowhere() -> None:
    out = classify(["", "héllo wörld — ünïcode ✓", "zzqx vbnm"])
    assert (out["score"] == 0.0).all()
    np.testing.assert_allclose(out["topics"], 0.25)
    assert (out["confidence"] == 0.0).all()


def test_punctuation_and_case_do_not_change_the_words() -> None:
    tok = load_handlers().Tokenizer({"width": 16, "vocab": 4096}, "cpu")
    ids = tok(text=np.array([[b"This is TERRIBLE, I hate it!"], [b"this is terrible i hate it"]], dtype=object))["ids"]
    np.testing.assert_array_equal(ids[0], ids[1])
    assert ids.shape == (2, 16) and ids.dtype == np.int64 and (ids[:, 6:] == 0).all()


def test_fitting_is_deterministic_and_fast() -> None:
    """Every model instance fits at load: it must cost nothing and give the same weights each time."""
    handlers = load_handlers()
    started = time.perf_counter()
    first = handlers.Topic({"vocab": 4096, "topics": ["news", "sport", "tech", "arts"]}, "cpu")
    sentiment = handlers.Sentiment({"vocab": 4096}, "cpu")
    assert time.perf_counter() - started < 1.0  # a few ms; generous for a loaded machine
    np.testing.assert_array_equal(
        first.weights, handlers.Topic({"vocab": 4096, "topics": ["news", "sport", "tech", "arts"]}, "cpu").weights
    )
    np.testing.assert_array_equal(sentiment.weights, handlers.Sentiment({"vocab": 4096}, "cpu").weights)


def test_a_topic_outside_the_corpus_is_named() -> None:
    with pytest.raises(ValueError, match=r"\['weather'\]"):
        load_handlers().Topic({"vocab": 4096, "topics": ["news", "weather"]}, "cpu")
