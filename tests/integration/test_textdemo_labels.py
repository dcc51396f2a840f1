"""The bundled example on a real tritonserver answers obvious sentences sensibly: the README's first
command (`compound infer classify --input "text=I love this product"`) must say positive."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from toolkit.cli.main import cli
from toolkit.client import infer
from toolkit.targets.local import LocalServer

POSITIVE = ["I love this product", "This laptop is amazing", "What a great game!", "I really enjoyed the film"]
NEGATIVE = ["This is terrible, I hate it", "The movie was awful.", "The worst service, really bad", "It is bad"]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_obvious_sentences_get_the_obvious_mood(textdemo_server: LocalServer, protocol: str) -> None:
    url = textdemo_server.http_url if protocol == "http" else textdemo_server.grpc_url
    texts = POSITIVE + NEGATIVE
    outputs = infer("classify", url, {"text": np.array([[t.encode()] for t in texts], dtype=object)}, protocol)  # type: ignore[arg-type]
    moods = [label.decode().split("/")[0] for label in outputs["label"][:, 0]]
    assert dict(zip(texts, moods)) == {**{t: "positive" for t in POSITIVE}, **{t: "negative" for t in NEGATIVE}}
    partial = infer("sentiment_only", url, {"text": np.array([[t.encode()] for t in texts], dtype=object)}, protocol)  # type: ignore[arg-type]
    assert (np.sign(partial["score"][:, 0]) == [1] * len(POSITIVE) + [-1] * len(NEGATIVE)).all()


def test_the_readme_command_says_positive(textdemo_server: LocalServer) -> None:
    out = CliRunner().invoke(
        cli, ["infer", "classify", "--url", textdemo_server.http_url, "--input", "text=I love this product"]
    )
    assert out.exit_code == 0, out.output
    answer = json.loads(out.output)
    assert answer["label"] == [["positive/tech"]], answer
    topics = dict(zip(["news", "sport", "tech", "arts"], answer["topics"][0]))
    assert max(topics, key=topics.__getitem__) == "tech"
