"""Image embedders / similarities behind one interface.

An embedder has `similarity(a: list[PIL], b: list[PIL]) -> np.ndarray[N]` (pairwise a[i] vs b[i]);
feature embedders (DINOv2, CLIP) also have `embed(images) -> np.ndarray[N, D]` (L2-normalised), and
their similarity is the raw cosine. Backends are imported only when selected.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from vlmgrpo.registry import Registry

EMBEDDERS: Registry = Registry("embedder")
EMBEDDERS.register("pixel", "vlmgrpo.embed.pixel:PixelEmbedder")
EMBEDDERS.register("dinov2", "vlmgrpo.embed.hf:HFImageEmbedder")
EMBEDDERS.register("clip", "vlmgrpo.embed.hf:CLIPEmbedder")


@functools.lru_cache(maxsize=8)
def _cached(name: str, kwargs_json: str) -> Any:
    return EMBEDDERS.get(name)(**json.loads(kwargs_json))


def get_embedder(name: str, kwargs: dict[str, Any] | None = None) -> Any:
    return _cached(name, json.dumps(kwargs or {}, sort_keys=True))
