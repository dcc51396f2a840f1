"""Compare the RAG example's two MiniLM encoders in-process: plain torch vs sentence-transformers.

It checks they agree (cosine of the two embeddings of each text; the shipped index against both) before it
times them, so a speed-up never comes from computing something else. Timing: one `encode` call per batch of
the benchmark queries at each batch size, one torch thread, the two encoders interleaved call by call so
noise from other work on the machine hits both alike; medians are what to compare.

Run: python examples/rag/compare_encoders.py [--reps 50] [--batches 1,8,32]   (needs `pip install .[rag]`)
Exits 1 if the encoders disagree (a cosine under --min-cosine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from rag_handlers import INDEX, MiniLM, SentenceMiniLM, load_corpus  # noqa: E402


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def timed(make: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    value = make()
    return value, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=50, help="timed calls per encoder and batch size")
    parser.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes")
    parser.add_argument("--max-length", type=int, default=64, help="token limit, as in pipeline.yaml")
    parser.add_argument("--min-cosine", type=float, default=0.9999)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    plain, plain_load = timed(lambda: MiniLM(threads=1, max_length=args.max_length))
    library, library_load = timed(lambda: SentenceMiniLM(threads=1, max_length=args.max_length))
    torch.set_num_threads(1)  # both constructors set it; say so once more after every import ran
    encoders = {"torch": plain.encode, "sentence-transformers": library.encode}
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}; load, torch already imported: "
        f"torch {plain_load:.2f} s, sentence-transformers {library_load:.2f} s"
    )

    queries = json.loads((HERE / "bench_inputs.json").read_text())["rag"]["query"]
    passages = [f"{p['title']}. {p['text']}" for p in load_corpus()]
    worst = 1.0
    for label, texts in (("queries", queries), ("corpus", passages)):
        a, b = plain.encode(texts), library.encode(texts)
        cos = cosines(a, b)
        worst = min(worst, float(cos.min()))
        print(
            f"{label:8s} ({len(texts)} texts): cosine min {cos.min():.7f} mean {cos.mean():.7f}, "
            f"max |diff| {np.abs(a - b).max():.1e}"
        )
        if label == "corpus" and INDEX.is_file():
            index = np.load(INDEX)["vectors"]
            print(
                f"index.npz vs torch: cosine min {cosines(index, a).min():.7f}; "
                f"vs sentence-transformers: cosine min {cosines(index, b).min():.7f}"
            )
    if worst < args.min_cosine:
        print(f"encoders disagree: cosine {worst:.7f} < {args.min_cosine}")
        return 1

    print(f"per-call encode time, ms ({args.reps} calls each; median [p10, p90])")
    for size in (int(s) for s in args.batches.split(",")):
        texts = (queries * (size // len(queries) + 1))[:size]
        for encode in encoders.values():  # warm up: first calls allocate
            encode(texts)
            encode(texts)
        times: dict[str, list[float]] = {name: [] for name in encoders}
        for _ in range(args.reps):
            for name, encode in encoders.items():
                start = time.perf_counter()
                encode(texts)
                times[name].append((time.perf_counter() - start) * 1e3)
        cells = []
        for name, values in times.items():
            deciles = statistics.quantiles(values, n=10)
            cells.append(f"{name} {statistics.median(values):7.2f} [{deciles[0]:6.2f}, {deciles[-1]:6.2f}]")
        ratio = statistics.median(times["sentence-transformers"]) / statistics.median(times["torch"])
        print(f"batch {size:3d}: " + "   ".join(cells) + f"   sentence-transformers / torch {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
