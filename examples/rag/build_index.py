"""Embed the RAG example's corpus once (build time) into rag_handlers/index.npz.

Run: python examples/rag/build_index.py   (needs `pip install .[rag]`; the handlers put Hugging Face offline)
It embeds with the default (plain-torch) encoder; sentence-transformers gives the same vectors.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rag_handlers import INDEX, build_index  # noqa: E402

if __name__ == "__main__":
    vectors = build_index()
    print(f"wrote {INDEX} ({vectors.shape[0]} passages x {vectors.shape[1]})")
