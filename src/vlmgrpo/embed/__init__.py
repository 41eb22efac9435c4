"""Image embedders / similarities behind one interface.

An embedder has `similarity(a: list[PIL], b: list[PIL]) -> np.ndarray[N]` (pairwise a[i] vs b[i]);
feature embedders (DINOv2, CLIP) also have `embed(images) -> np.ndarray[N, D]` (L2-normalised), and
their similarity is the raw cosine. Backends are imported only when selected.
"""

from __future__ import annotations

from typing import Any

from vlmgrpo.registry import Registry

EMBEDDERS: Registry = Registry("embedder")
EMBEDDERS.register("pixel", "vlmgrpo.embed.pixel:PixelEmbedder")
EMBEDDERS.register("dinov2", "vlmgrpo.embed.hf:HFImageEmbedder")
EMBEDDERS.register("clip", "vlmgrpo.embed.hf:CLIPEmbedder")


def get_embedder(name: str, kwargs: dict[str, Any] | None = None) -> Any:
    """One instance per (name, kwargs) per process (loaded once, shared by every reward)."""
    return EMBEDDERS.instance(name, kwargs)
