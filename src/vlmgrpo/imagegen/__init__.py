"""Text-to-image generators behind one interface.

A generator has `generate(prompts: list[str], seeds: list[int] | None) -> list[PIL.Image | None]`
(None = that prompt failed; the sample is skipped, not scored zero). Backends are imported only
when selected: `render` (offline procedural renderer), `diffusers` (FLUX and any diffusers
text-to-image pipeline), `replicate` (Replicate's HTTP prediction API).
"""

from __future__ import annotations

from typing import Any

from vlmgrpo.registry import Registry

GENERATORS: Registry = Registry("generator")
GENERATORS.register("render", "vlmgrpo.imagegen.render:RenderGenerator")
GENERATORS.register("diffusers", "vlmgrpo.imagegen.diffusers_gen:DiffusersGenerator")
GENERATORS.register("replicate", "vlmgrpo.imagegen.replicate:ReplicateGenerator")


def get_generator(name: str, kwargs: dict[str, Any] | None = None) -> Any:
    """One instance per (name, kwargs) per process (loaded once, shared by every reward)."""
    return GENERATORS.instance(name, kwargs)
