"""The cycle-consistency reward (seed A): describe -> generate -> embed -> similarity.

The policy's description of an image is turned back into an image by a text-to-image generator,
and the similarity of the two images is the reward. Generator and embedder are chosen in the
reward's kwargs, so the offline demo (`render` + `pixel`) and the seed (`diffusers` FLUX or
`replicate` + `dinov2`) share this code. A generation that fails skips its sample.

Mapping: `raw` keeps the embedder's similarity (cosine for DINOv2); `01` maps it to (s + 1) / 2,
the seed's training reward. The raw value is always logged as the `raw` sub-score.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vlmgrpo.data.images import thumbnail
from vlmgrpo.embed import get_embedder
from vlmgrpo.imagegen import get_generator
from vlmgrpo.rewards.base import RewardContext, RewardRecord, batched


def _similarities(
    originals: list[Any],
    texts: list[str],
    ctx: RewardContext,
    generator: str,
    generator_kwargs: dict,
    embedder: str,
    embedder_kwargs: dict,
    resize: int,
) -> tuple[np.ndarray, list[Any]]:
    """[N] similarity (NaN where generation failed) and the regenerated images."""
    gen = get_generator(generator, generator_kwargs)
    emb = get_embedder(embedder, embedder_kwargs)
    # one seed per sample: distinct within the step (ctx.seed differs per micro-batch) and < 2**31
    seeds = [(ctx.seed * 1009 + i) % 2**31 for i in range(len(texts))]
    images = gen.generate(texts, seeds=seeds)
    sims = np.full(len(texts), np.nan)
    ok = [i for i, im in enumerate(images) if im is not None]
    # keep the thumbnails that were embedded, not the generator's full-size output (disk, memory)
    small: list[Any] = [None] * len(texts)
    if ok:
        for i in ok:
            small[i] = thumbnail(images[i].convert("RGB"), resize)
        orig = [thumbnail(originals[i], resize) for i in ok]
        sims[ok] = emb.similarity(orig, [small[i] for i in ok])
    return sims, small


def _map(s: np.ndarray, mapping: str) -> np.ndarray:
    return (s + 1) / 2 if mapping == "01" else s


@batched
def cycle_reward(
    records: list[RewardRecord],
    ctx: RewardContext,
    generator: str = "render",
    generator_kwargs: dict | None = None,
    embedder: str = "pixel",
    embedder_kwargs: dict | None = None,
    mapping: str = "raw",
    resize: int = 224,
) -> list[dict[str, float] | None]:
    sims, images = _similarities(
        [r.images[0] for r in records],
        [r.completion for r in records],
        ctx,
        generator,
        generator_kwargs or {},
        embedder,
        embedder_kwargs or {},
        resize,
    )
    out: list[dict[str, float] | None] = []
    for rec, s, img in zip(records, sims, images):
        if img is not None:
            rec.extras["regenerated"] = img
        out.append(None if np.isnan(s) else {"score": float(_map(np.array(s), mapping)), "raw": float(s)})
    return out


def cycle_controls(
    records: list[RewardRecord], ctx: RewardContext, truth_field: str = "description", **kwargs: Any
) -> dict[str, float]:
    """Reference points for an evaluation: `ceiling` = the images' ground-truth descriptions
    regenerated and scored; `shuffled` = the policy's descriptions scored against the wrong images
    (each group's completions paired with the next group's image)."""
    gen_args = (
        kwargs.get("generator", "render"),
        kwargs.get("generator_kwargs") or {},
        kwargs.get("embedder", "pixel"),
        kwargs.get("embedder_kwargs") or {},
        kwargs.get("resize", 224),
    )
    mapping = kwargs.get("mapping", "raw")
    out: dict[str, float] = {}
    firsts = {}
    for r in records:
        firsts.setdefault(r.group, r)
    groups = sorted(firsts)
    if truth_field and all(truth_field in firsts[g].sample for g in groups):
        s, _ = _similarities(
            [firsts[g].images[0] for g in groups],
            [firsts[g].sample[truth_field] for g in groups],
            ctx,
            *gen_args,
        )
        out["ceiling"] = float(np.nanmean(_map(s, mapping)))
    if len(groups) > 1:
        nxt = {g: firsts[groups[(k + 1) % len(groups)]].images[0] for k, g in enumerate(groups)}
        s, _ = _similarities([nxt[r.group] for r in records], [r.completion for r in records], ctx, *gen_args)
        out["shuffled"] = float(np.nanmean(_map(s, mapping)))
    return out


def cycle_prepare(
    generator: str = "render",
    generator_kwargs: dict | None = None,
    embedder: str = "pixel",
    embedder_kwargs: dict | None = None,
    **_: Any,
) -> None:
    """Load generator and embedder before training starts, so a missing token or weights folder
    stops the run at once with its one-line error instead of skipping every step."""
    get_generator(generator, generator_kwargs or {})
    get_embedder(embedder, embedder_kwargs or {})


cycle_reward.controls = cycle_controls  # type: ignore[attr-defined]
cycle_reward.prepare = cycle_prepare  # type: ignore[attr-defined]
