"""Text-to-image generators behind one interface.

A generator has `generate(prompts: list[str], seeds: list[int] | None) -> list[PIL.Image | None]`
(None = that prompt failed; the sample is skipped, not scored zero). Backends are imported only
when selected: `render` (offline procedural renderer), `diffusers` (FLUX and any diffusers
text-to-image pipeline), `replicate` (Replicate's HTTP prediction API).
"""

from __future__ import annotations

import functools
import json
from typing import Any

from vlmgrpo.registry import Registry

GENERATORS: Registry = Registry("generator")
GENERATORS.register("render", "vlmgrpo.imagegen.render:RenderGenerator")
GENERATORS.register("diffusers", "vlmgrpo.imagegen.diffusers_gen:DiffusersGenerator")
GENERATORS.register("replicate", "vlmgrpo.imagegen.replicate:ReplicateGenerator")


@functools.lru_cache(maxsize=8)
def _cached(name: str, kwargs_json: str) -> Any:
    return GENERATORS.get(name)(**json.loads(kwargs_json))


def get_generator(name: str, kwargs: dict[str, Any] | None = None) -> Any:
    """One instance per (name, kwargs) per process: pipelines are loaded once."""
    return _cached(name, json.dumps(kwargs or {}, sort_keys=True))
