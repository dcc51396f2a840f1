"""What a component's tiered cache (spec `cache: {...}`) needs at run time, decided at generation.

The identity folds in everything that decides a component's answer: its name, handler, the bytes
of its handler code, its parameters, its declared outputs and the compound version whose wrapper
converts them. A changed component therefore looks up different keys, and never answers from an
entry an old version wrote, even in a Redis that outlives deployments.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Optional

from toolkit import __version__
from toolkit.plan.graph import ModelPlan

CACHE_FORMAT = 1  # the runtime's key and entry layout (templates/cache.py)


def component_identity(model: ModelPlan) -> str:
    spec = model.spec
    digest = hashlib.sha256()
    for rel, path in model.handler.code_files().items():
        digest.update(rel.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    identity = {
        "component": model.name,
        "handler": f"{model.handler.module}:{model.handler.cls}",
        "code": digest.hexdigest(),
        "parameters": spec.parameters,
        "outputs": {n: [t.numpy_dtype, list(t.dims)] for n, t in sorted(spec.outputs.items())},
        "version": 1,
        "compound": __version__,
        "format": CACHE_FORMAT,
    }
    text = json.dumps(identity, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def cache_settings(model: ModelPlan) -> Optional[dict[str, Any]]:
    """The runtime cache's settings for one component, or None when it has no tiered cache."""
    cache = model.spec.tiered_cache
    if cache is None:
        return None
    return {
        "identity": component_identity(model),
        "memory_bytes": int(cache.memory_mb * 1024 * 1024),
        "redis": cache.redis,
        "ttl_s": cache.ttl_s,
    }
