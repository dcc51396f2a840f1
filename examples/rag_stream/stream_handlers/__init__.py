"""Handlers of the streaming RAG example: retrieve a passage of a shipped knowledge base, then
generate an answer token by token with a small language model trained on that knowledge base.

Everything trains when a handler is built, from ``knowledge.txt`` next to this file, in about a
second on one CPU core, deterministically (fixed seeds, greedy decoding): the same question always
gets the same answer.

* ``Retrieve``: TF-IDF over the knowledge base's paragraphs; a batch of questions is one matrix
  product against the passage matrix.
* ``Generate``: a word-level trigram model with backoff to bigrams, whose candidates are re-scored by
  a small recurrent network (an echo-state network: a fixed random recurrent layer and a readout
  trained by ridge regression) and by the retrieved passage (its words are preferred, so the answer
  follows the passage). ``start`` runs the network over the question and the passage (the prefill),
  ``step`` advances every stream in flight by one token with one batched matrix product per layer,
  so N streams cost about what one does. ``__call__`` is the same model as a plain generator, one
  stream at a time.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

KNOWLEDGE = Path(__file__).with_name("knowledge.txt")
BOS, DOT, COMMA = "<s>", ".", ","
_TOKEN = re.compile(r"[a-z]+|[.,]")


def tokenize(text: str) -> list[str]:
    """Lower-case words, full stops and commas: the vocabulary of both models."""
    return _TOKEN.findall(text.lower())


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class Corpus:
    """The knowledge base: its paragraphs (the passages retrieved) and its sentences (the LM's training text)."""

    passages: tuple[str, ...]
    sentences: tuple[tuple[str, ...], ...]
    vocab: tuple[str, ...]
    index: dict[str, int] = field(hash=False, compare=False)


@functools.lru_cache(maxsize=4)
def load_corpus(path: str = str(KNOWLEDGE)) -> Corpus:
    """Paragraphs are separated by blank lines; every line is one sentence."""
    text = Path(path).read_text(encoding="utf-8")
    passages = tuple(" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip())
    sentences = tuple(tuple(tokenize(line)) for line in text.splitlines() if tokenize(line))
    words = sorted({w for s in sentences for w in s} - {DOT, COMMA})
    vocab = (BOS, DOT, COMMA, *words)
    return Corpus(passages, sentences, vocab, {w: i for i, w in enumerate(vocab)})


class Retrieve:
    """Question -> the most similar paragraph of the knowledge base (TF-IDF, cosine)."""

    def __init__(self, parameters: dict, device: str) -> None:
        self.corpus = load_corpus(str(parameters.get("knowledge", KNOWLEDGE)))
        index, size = self.corpus.index, len(self.corpus.vocab)
        counts = np.zeros((len(self.corpus.passages), size), dtype=np.float32)
        for row, passage in enumerate(self.corpus.passages):
            for word in tokenize(passage):
                counts[row, index[word]] += 1.0
        counts[:, : index[COMMA] + 1] = 0.0  # punctuation carries no topic
        self.idf = np.log((1.0 + counts.shape[0]) / (1.0 + (counts > 0).sum(axis=0))).astype(np.float32) + 1.0
        matrix = counts * self.idf
        self.matrix = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-9)

    def vectors(self, questions: list[str]) -> np.ndarray:
        """TF-IDF vectors of the questions (unknown words are dropped)."""
        out = np.zeros((len(questions), self.matrix.shape[1]), dtype=np.float32)
        for row, question in enumerate(questions):
            for word in tokenize(question):
                column = self.corpus.index.get(word)
                if column is not None and column > self.corpus.index[COMMA]:
                    out[row, column] += 1.0
        out *= self.idf
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)

    def __call__(self, query: np.ndarray) -> dict[str, np.ndarray]:
        scores = self.vectors([_text(q) for q in query[:, 0]]) @ self.matrix.T
        best = scores.argmax(axis=1)
        passages = np.array([self.corpus.passages[b].encode() for b in best], dtype=object)
        return {
            "passage": passages.reshape(-1, 1),
            "score": scores[np.arange(len(best)), best].astype(np.float32).reshape(-1, 1),
        }


@dataclass
class Stream:
    """One answer in progress: the model's whole per-stream state, fixed-size, so every step costs the same."""

    hidden: np.ndarray  # (H,) the recurrent layer's state
    in_passage: np.ndarray  # (V,) 1.0 for the words of the retrieved passage and the question
    prev2: int  # the trigram context
    prev1: int
    emitted: int = 0
    history: list[int] = field(default_factory=list)  # bigram keys already produced (no loops)
    capitalise: bool = True


class Generate:
    """Streams an answer to a question, conditioned on its retrieved passage, one word per response.

    Parameters: ``max_tokens`` (hard stop), ``min_tokens`` (the answer ends at the first full stop
    after these), ``hidden`` (width of the recurrent layer: the per-token cost), ``prefill_tokens``
    (the last tokens of passage and question the state is built from), ``top_k`` (n-gram candidates
    per context), ``seed``, and the score weights ``rnn_weight``, ``passage_weight``,
    ``repeat_penalty``."""

    def __init__(self, parameters: dict, device: str) -> None:
        self.corpus = load_corpus(str(parameters.get("knowledge", KNOWLEDGE)))
        self.max_tokens = int(parameters.get("max_tokens", 48))
        self.min_tokens = int(parameters.get("min_tokens", 16))
        self.top_k = int(parameters.get("top_k", 8))
        self.rnn_weight = float(parameters.get("rnn_weight", 2.0))
        self.passage_weight = float(parameters.get("passage_weight", 1.5))
        self.repeat_penalty = float(parameters.get("repeat_penalty", 6.0))
        self.prefill_tokens = int(parameters.get("prefill_tokens", 24))
        self.vocab = np.array(self.corpus.vocab, dtype=object)
        self.size = len(self.corpus.vocab)
        self._build_ngrams()
        self._build_rnn(int(parameters.get("hidden", 128)), int(parameters.get("seed", 0)))

    # --- training --------------------------------------------------------------------------------

    def _ids(self, tokens: list[str] | tuple[str, ...]) -> list[int]:
        return [self.corpus.index[t] for t in tokens if t in self.corpus.index]

    def _build_ngrams(self) -> None:
        """Top-k continuations per trigram and per bigram context, as log-probabilities in dense arrays,
        so a step looks all streams' candidates up at once (searchsorted over the trigram keys)."""
        bos, dot, size, k = self.corpus.index[BOS], self.corpus.index[DOT], self.size, self.top_k
        trigrams: dict[int, dict[int, int]] = {}
        bigrams: dict[int, dict[int, int]] = {}
        for sentence in self.corpus.sentences:
            ids = [dot, bos, *self._ids(sentence)]
            for a, b, c in zip(ids, ids[1:], ids[2:]):
                tri = trigrams.setdefault(a * size + b, {})
                tri[c] = tri.get(c, 0) + 1
                bi = bigrams.setdefault(b, {})
                bi[c] = bi.get(c, 0) + 1

        def table(counts: dict[int, int]) -> tuple[list[int], list[float]]:
            total = float(sum(counts.values()))
            best = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:k]
            ids = [c for c, _ in best] + [0] * (k - len(best))
            logp = [float(np.log(n / total)) for _, n in best] + [-np.inf] * (k - len(best))
            return ids, logp

        keys = sorted(trigrams)
        self.tri_keys = np.array(keys, dtype=np.int64)
        self.tri_ids = np.zeros((len(keys) + 1, k), dtype=np.int64)  # the last row: an unseen context
        self.tri_logp = np.full((len(keys) + 1, k), -np.inf, dtype=np.float32)
        for row, key in enumerate(keys):
            self.tri_ids[row], self.tri_logp[row] = table(trigrams[key])
        self.bi_ids = np.zeros((size, k), dtype=np.int64)
        self.bi_logp = np.full((size, k), -np.inf, dtype=np.float32)
        for word, counts in bigrams.items():
            self.bi_ids[word], self.bi_logp[word] = table(counts)
        self.bi_logp += np.log(0.4)  # stupid backoff: a bigram counts less than a trigram

    def _build_rnn(self, hidden: int, seed: int) -> None:
        """An echo-state network: fixed random input and recurrent weights (spectral radius ~0.9) and a
        readout to the next word fitted in closed form (ridge regression) on the knowledge base."""
        rng = np.random.default_rng(seed)
        self.embed = (rng.standard_normal((self.size, hidden)) * 0.5).astype(np.float32)
        self.recurrent = (rng.standard_normal((hidden, hidden)) * (0.9 / np.sqrt(hidden))).astype(np.float32)
        # the passages run side by side (each from a zero state, as a stream's prefill does): one
        # matrix product per position instead of one per token of the knowledge base
        passages = [self._ids(tokenize(p)) for p in self.corpus.passages]
        length = max(len(p) for p in passages)
        tokens = np.array([p + [-1] * (length - len(p)) for p in passages], dtype=np.int64)
        h = np.zeros((len(passages), hidden), dtype=np.float32)
        targets = np.zeros((self.size, hidden), dtype=np.float64)  # one_hot(next)^T @ states
        gram = np.eye(hidden, dtype=np.float64)  # states^T @ states + ridge
        for t in range(length - 1):
            h = np.tanh(h @ self.recurrent + self.embed[np.maximum(tokens[:, t], 0)])
            rows = tokens[:, t + 1] >= 0
            states = h[rows].astype(np.float64)
            gram += states.T @ states
            np.add.at(targets, tokens[rows, t + 1], states)
        targets = targets.T
        self.readout = np.linalg.solve(gram, targets).astype(np.float32)

    # --- the streaming protocol ------------------------------------------------------------------

    def start(self, query: np.ndarray, passage: np.ndarray) -> Stream:
        """A new stream for ONE request: prefill the recurrent state with its question and passage."""
        if query.shape[0] != 1 or passage.shape[0] != 1:
            raise ValueError(f"one question per request (a stream), got {query.shape[0]}")
        question, text = _text(query[0, 0]), _text(passage[0, 0])
        words = self._ids(tokenize(text) + tokenize(question))
        h = np.zeros(self.recurrent.shape[0], dtype=np.float32)
        # the state forgets at the spectral radius (0.9 a token): the last tokens make it all but whole
        for token in words[-self.prefill_tokens :]:
            h = np.tanh(h @ self.recurrent + self.embed[token])
        mask = np.zeros(self.size, dtype=np.float32)
        mask[[w for w in words if w > self.corpus.index[COMMA]]] = 1.0
        return Stream(h, mask, prev2=self.corpus.index[DOT], prev1=self.corpus.index[BOS])

    def step(self, states: list[Stream]) -> list[Optional[dict[str, np.ndarray]]]:
        """One token for every stream in flight, in one pass of array operations; None for a stream
        that had finished (its previous token ended the answer)."""
        live = [i for i, s in enumerate(states) if s.emitted >= 0]
        results: list[Optional[dict[str, np.ndarray]]] = [None] * len(states)
        if not live:
            return results
        streams = [states[i] for i in live]
        size, dot, bos = self.size, self.corpus.index[DOT], self.corpus.index[BOS]
        prev2 = np.array([s.prev2 for s in streams], dtype=np.int64)
        prev1 = np.array([s.prev1 for s in streams], dtype=np.int64)
        hidden = np.stack([s.hidden for s in streams])
        mask = np.stack([s.in_passage for s in streams])
        # n-gram candidates: the trigram context's, then the bigram's (backoff)
        keys = prev2 * size + prev1
        at = np.searchsorted(self.tri_keys, keys)
        found = (at < len(self.tri_keys)) & (self.tri_keys[np.minimum(at, len(self.tri_keys) - 1)] == keys)
        row = np.where(found, at, len(self.tri_keys))
        ids = np.concatenate([self.tri_ids[row], self.bi_ids[prev1]], axis=1)
        score = np.concatenate([self.tri_logp[row], self.bi_logp[prev1]], axis=1)
        # re-scored by the recurrent network and the passage; bigrams already produced are penalised
        rnn = hidden @ self.readout
        picked = np.arange(len(streams))[:, None]
        score = score + self.rnn_weight * rnn[picked, ids] + self.passage_weight * mask[picked, ids]
        width = max(len(s.history) for s in streams)
        if width:
            history = np.full((len(streams), width), -1, dtype=np.int64)
            for r, s in enumerate(streams):
                history[r, : len(s.history)] = s.history
            seen = (history[:, None, :] == (prev1[:, None] * size + ids)[:, :, None]).any(axis=2)
            score = score - self.repeat_penalty * seen
        score[ids == bos] = -np.inf
        chosen = ids[picked[:, 0], score.argmax(axis=1)]
        new_hidden = np.tanh(hidden @ self.recurrent + self.embed[chosen])
        for r, (i, s) in enumerate(zip(live, streams)):
            token = int(chosen[r])
            results[i] = {
                "token": np.array([[self._surface(s, token).encode()]], dtype=object),
                "index": np.array([[s.emitted]], dtype=np.int32),
            }
            s.history.append(s.prev1 * size + token)
            s.hidden = new_hidden[r]
            s.prev2, s.prev1 = (dot, bos) if token == dot else (s.prev1, token)
            s.emitted += 1
            if (token == dot and s.emitted >= self.min_tokens) or s.emitted >= self.max_tokens:
                s.emitted = -1  # done: the next step answers None
        return results

    def _surface(self, stream: Stream, token: int) -> str:
        """The token as text to append: a space before words, capitals at a sentence's start."""
        word = str(self.vocab[token])
        if token in (self.corpus.index[DOT], self.corpus.index[COMMA]):
            stream.capitalise = token == self.corpus.index[DOT]
            return word
        text = word.capitalize() if stream.capitalise else word
        stream.capitalise = False
        return text if stream.emitted == 0 else " " + text

    def __call__(self, query: np.ndarray, passage: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
        """The plain generator: the same model, one stream at a time."""
        state = self.start(query=query, passage=passage)
        while True:
            response = self.step([state])[0]
            if response is None:
                return
            yield response


def answer(generator: Generate, retriever: Retrieve, question: str) -> str:
    """The whole answer to one question as text (retrieve, then every streamed token joined)."""
    query = np.array([[question.encode()]], dtype=object)
    passage = retriever(query)["passage"]
    return "".join(_text(r["token"][0, 0]) for r in generator(query=query, passage=passage))
