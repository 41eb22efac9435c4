"""The adversary's reward (seed B): how badly the policy reconstructs the image of the adversary's prompt.

One record per adversary completion (an image prompt). For each:

    prompt --generator--> image --policy describes it (no grad)--> description --generator--> regenerated
    similarity = embedder similarity(image, regenerated)          (raw: cosine for DINOv2)
    fool       = 1 - similarity                                    (the seed's adversary reward)

`image` is the generator's output thumbnailed to the policy's `data.image_max_side`: that one
object is what the policy sees, what the similarity is computed on and what is logged
(`extras["image"]`). The seed generated a second, different image for its reward than the one it
logged. The policy is reached through `ctx.policy` (a `sampling.PolicyHandle`), whose config gives
its prompt template and sampling settings.

Anti-degeneration controls, each off unless configured, each logged as a sub-score. Seed B's
adversary collapsed into exploits (foliage in every prompt); these are the levers against that:

- `solvability: {min: m}`: the generator draws the prompt a second time with another seed;
  `solvability` = similarity of the two draws, `discount` = min(1, solvability / m), and everything
  the image earns (fool, diversity, realism) is multiplied by `discount`. An image the generator
  cannot reproduce from its own prompt (noise, a blank canvas) is not a fair challenge: nobody
  could describe it back. Costs one more generation per sample.
- `diversity: {weight: w, over: images | prompts}`: each sample's mean dissimilarity to the other
  members of its group: 1 - embedding cosine of the images, or 1 - word Jaccard of the prompts.
  Per sample, not the group's mean: a bonus that is the same for the whole group cancels in the
  group-normalised advantage. A collapsed group (one prompt repeated) earns 0.
- `realism: {weight: w, dataset, kwargs, split, n}`: similarity of the image to its nearest image
  in a reference set of real images (the first `n` samples of a dataset; the adversarial trainer
  fills in the policy's training set when `dataset` is empty).
- `length: {max_words: L, penalty: p}`: a prompt of more than L words loses p x min(1, excess / L).

    score = discount * (fool + w_div * diversity + w_real * realism) - length term

Sub-scores (logged as `adversary/<name>/mean` by the adversarial trainer): `similarity`, `fool`,
`words`, and `solvability`/`discount`, `diversity`, `realism`, `over_length` when enabled. A
sample whose generation failed is skipped (None).
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from typing import Any

import numpy as np

from vlmgrpo.data.images import thumbnail
from vlmgrpo.embed import get_embedder
from vlmgrpo.errors import ConfigError
from vlmgrpo.imagegen import get_generator
from vlmgrpo.rewards.base import RewardContext, RewardRecord, batched
from vlmgrpo.rewards.cycle import _map, _similarities, cycle_prepare

# seed streams of the adversary's image and of its solvability redraw: apart from each other and
# from the regeneration seeds (ctx.seed * 1009 + i), so that no two draws share their noise
IMAGE_SEED_OFFSET = 500_000
REDRAW_SEED_OFFSET = 1_000_000
_WORD = re.compile(r"[a-z0-9]+")

CONTROLS = ("solvability", "diversity", "realism", "length")


def _seeds(ctx: RewardContext, n: int, offset: int) -> list[int]:
    return [(ctx.seed * 1009 + i + offset) % 2**31 for i in range(n)]


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def prompt_dissimilarity(prompts: list[str]) -> np.ndarray:
    """[N, N] 1 - Jaccard similarity of the prompts' word sets (two empty prompts are identical)."""
    sets = [set(words(p)) for p in prompts]
    n = len(sets)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            union = sets[i] | sets[j]
            d = 1.0 - len(sets[i] & sets[j]) / len(union) if union else 0.0
            out[i, j] = out[j, i] = d
    return out


def image_dissimilarity(feats: np.ndarray) -> np.ndarray:
    """[N, N] 1 - cosine of L2-normalised features [N, D]. A zero row (the pixel embedder's blank
    canvas) is identical to another zero row and unlike everything else."""
    sim = feats @ feats.T
    blank = np.linalg.norm(feats, axis=1) < 1e-6
    sim[np.ix_(blank, blank)] = 1.0
    return 1.0 - np.clip(sim, -1.0, 1.0)


def mean_to_others(dissim: np.ndarray, groups: list[int]) -> np.ndarray:
    """[N] each row's mean dissimilarity to the other rows of its group (0 for a group of one)."""
    groups_arr = np.asarray(groups)
    out = np.zeros(len(groups_arr))
    for g in np.unique(groups_arr):
        idx = np.flatnonzero(groups_arr == g)
        if len(idx) > 1:
            sub = dissim[np.ix_(idx, idx)]
            out[idx] = sub.sum(1) / (len(idx) - 1)
    return out


@functools.lru_cache(maxsize=4)
def _reference_features(spec_json: str) -> np.ndarray:
    """[n, D] embeddings of the first `n` images of a dataset split (cached per process)."""
    from vlmgrpo.data import build_dataset

    spec = json.loads(spec_json)
    ds = build_dataset(spec["dataset"], spec["kwargs"], spec["split"], spec["seed"])
    n = min(int(spec["n"]), len(ds)) if hasattr(ds, "__len__") else int(spec["n"])
    if hasattr(ds, "__len__"):
        samples = [ds[i] for i in range(n)]
    else:
        rng = np.random.default_rng(spec["seed"])
        samples = [ds.sample(rng) for _ in range(n)]
    images = [thumbnail(s["images"][0], spec["resize"]) for s in samples if s.get("images")]
    if not images:
        raise ConfigError(f"realism: the reference set {spec['dataset']} has no images")
    return _embed(spec["embedder"], spec["embedder_kwargs"], images)


def _embed(embedder: str, embedder_kwargs: dict, images: list[Any]) -> np.ndarray:
    emb = get_embedder(embedder, embedder_kwargs)
    if not hasattr(emb, "embed"):
        raise ConfigError(f"embedder {embedder}: has no embed(); the diversity and realism controls need one")
    return np.asarray(emb.embed(images), dtype=np.float64)


def _describe(
    ctx: RewardContext, images: list[Any], prompts: list[str], describe: dict[str, Any]
) -> list[str]:
    """The policy's description of each image (one sample each, no grad), with its own prompt
    template. Evaluations sample with a fixed seed so that their curves reflect the models."""
    import torch

    from vlmgrpo.sampling import build_prompt

    policy = ctx.policy
    if policy is None:
        raise ConfigError(
            "the adversary reward needs the policy (ctx.policy); run it from the adversarial trainer"
        )
    cfg = policy.cfg
    samples = [
        {"id": f"adversary-{i}", "images": [im], "description": p}
        for i, (im, p) in enumerate(zip(images, prompts))
    ]
    built = [build_prompt(s, cfg) for s in samples]
    temperature = describe.get("temperature")
    if temperature is None:
        temperature = cfg.eval.temperature if ctx.phase == "eval" else cfg.rollout.temperature
    kw = {"temperature": float(temperature)}
    if describe.get("max_new_tokens"):
        kw["max_new_tokens"] = int(describe["max_new_tokens"])
    fixed = contextlib.nullcontext()
    if ctx.phase == "eval":
        fixed = torch.random.fork_rng(
            devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []
        )
    with fixed:
        if ctx.phase == "eval":
            torch.manual_seed(ctx.seed)
        return policy.generate(
            [b.messages for b in built], [b.images for b in built], prefill=cfg.prompt.prefill, **kw
        )


def _check_controls(controls: dict[str, Any]) -> None:
    known = {
        "solvability": {"min"},
        "diversity": {"weight", "over"},
        "realism": {"weight", "dataset", "kwargs", "split", "n", "seed"},
        "length": {"max_words", "penalty"},
    }
    for name, value in controls.items():
        if value is None:
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"adversary reward: '{name}' must be a mapping, got {value!r}")
        bad = set(value) - known[name]
        if bad:
            raise ConfigError(
                f"adversary reward: unknown key(s) {sorted(bad)} in '{name}' (known: {sorted(known[name])})"
            )
    over = (controls.get("diversity") or {}).get("over", "images")
    if over not in ("images", "prompts"):
        raise ConfigError(f"adversary reward: diversity.over must be 'images' or 'prompts', got {over!r}")


@batched
def adversary_reward(
    records: list[RewardRecord],
    ctx: RewardContext,
    generator: str = "render",
    generator_kwargs: dict | None = None,
    embedder: str = "pixel",
    embedder_kwargs: dict | None = None,
    mapping: str = "raw",
    resize: int = 224,
    describe: dict | None = None,
    solvability: dict | None = None,
    diversity: dict | None = None,
    realism: dict | None = None,
    length: dict | None = None,
) -> list[dict[str, float] | None]:
    """See the module docstring. `describe`: the policy's sampling for its descriptions
    ({temperature, max_new_tokens}; default: its rollout settings, its eval temperature in evals)."""
    _check_controls(
        {"solvability": solvability, "diversity": diversity, "realism": realism, "length": length}
    )
    gen_kwargs, emb_kwargs = generator_kwargs or {}, embedder_kwargs or {}
    gen = get_generator(generator, gen_kwargs)
    prompts = [r.completion for r in records]
    n = len(records)
    side = int(ctx.policy.cfg.data.image_max_side) if ctx.policy is not None else resize
    raw = gen.generate(prompts, seeds=_seeds(ctx, n, IMAGE_SEED_OFFSET))
    images: list[Any] = [None if im is None else thumbnail(im.convert("RGB"), side) for im in raw]
    ok = [i for i in range(n) if images[i] is not None]
    sims = np.full(n, np.nan)
    regenerated: list[Any] = [None] * n
    descriptions: list[str | None] = [None] * n
    if ok:
        described = _describe(ctx, [images[i] for i in ok], [prompts[i] for i in ok], describe or {})
        s, regen = _similarities(
            [images[i] for i in ok], described, ctx, generator, gen_kwargs, embedder, emb_kwargs, resize
        )
        for k, i in enumerate(ok):
            sims[i], regenerated[i], descriptions[i] = s[k], regen[k], described[k]
    valid = [i for i in ok if not np.isnan(sims[i])]
    subs: dict[str, np.ndarray] = {"similarity": sims, "fool": 1.0 - _map(sims, mapping)}
    gain = subs["fool"].copy()
    discount = np.ones(n)

    if solvability is not None and valid:
        redraw = gen.generate([prompts[i] for i in valid], seeds=_seeds(ctx, len(valid), REDRAW_SEED_OFFSET))
        pairs = [(k, i) for k, i in enumerate(valid) if redraw[k] is not None]
        solv = np.full(n, np.nan)
        if pairs:
            emb = get_embedder(embedder, emb_kwargs)
            a = [thumbnail(images[i], resize) for _, i in pairs]
            b = [thumbnail(thumbnail(redraw[k].convert("RGB"), side), resize) for k, _ in pairs]
            solv[[i for _, i in pairs]] = emb.similarity(a, b)
        floor = float(solvability.get("min", 0.5))
        discount = np.clip(np.nan_to_num(solv, nan=0.0) / max(floor, 1e-9), 0.0, 1.0)
        subs["solvability"], subs["discount"] = solv, discount

    if diversity is not None and valid:
        w = float(diversity.get("weight", 0.0))
        if diversity.get("over", "images") == "prompts":
            dis = prompt_dissimilarity([prompts[i] for i in valid])
        else:
            dis = image_dissimilarity(
                _embed(embedder, emb_kwargs, [thumbnail(images[i], resize) for i in valid])
            )
        div = np.full(n, np.nan)
        div[valid] = mean_to_others(dis, [records[i].group for i in valid])
        subs["diversity"] = div
        gain = gain + w * np.nan_to_num(div)

    if realism is not None and valid:
        w = float(realism.get("weight", 0.0))
        if not realism.get("dataset"):
            raise ConfigError("adversary reward: realism.dataset is empty (name the reference dataset)")
        spec = {
            "dataset": realism["dataset"],
            "kwargs": realism.get("kwargs") or {},
            "split": realism.get("split", "train"),
            "n": int(realism.get("n", 64)),
            "seed": int(realism.get("seed", 0)),
            "resize": resize,
            "embedder": embedder,
            "embedder_kwargs": emb_kwargs,
        }
        ref = _reference_features(json.dumps(spec, sort_keys=True))
        feats = _embed(embedder, emb_kwargs, [thumbnail(images[i], resize) for i in valid])
        real = np.full(n, np.nan)
        real[valid] = (feats @ ref.T).max(1)
        subs["realism"] = real
        gain = gain + w * np.nan_to_num(real)

    n_words = np.array([len(words(p)) for p in prompts], dtype=float)
    subs["words"] = n_words
    penalty = np.zeros(n)
    if length is not None and int(length.get("max_words", 0)) > 0:
        limit = int(length["max_words"])
        excess = np.maximum(0.0, n_words - limit) / limit
        penalty = float(length.get("penalty", 1.0)) * np.minimum(1.0, excess)
        subs["over_length"] = (n_words > limit).astype(float)

    score = discount * gain - penalty
    out: list[dict[str, float] | None] = []
    for i, rec in enumerate(records):
        if images[i] is not None:
            rec.extras["image"] = images[i]  # the very image that was described and scored
        if regenerated[i] is not None:
            rec.extras["regenerated"] = regenerated[i]
        if descriptions[i] is not None:
            rec.extras["description"] = descriptions[i]
        if np.isnan(sims[i]):
            out.append(None)
            continue
        row = {"score": float(score[i])}
        row.update({k: float(v[i]) for k, v in subs.items() if not np.isnan(v[i])})
        out.append(row)
    return out


def adversary_prepare(
    generator: str = "render",
    generator_kwargs: dict | None = None,
    embedder: str = "pixel",
    embedder_kwargs: dict | None = None,
    solvability: dict | None = None,
    diversity: dict | None = None,
    realism: dict | None = None,
    length: dict | None = None,
    **_: Any,
) -> None:
    """Check the controls and load generator and embedder before training starts (one-line errors now)."""
    _check_controls(
        {"solvability": solvability, "diversity": diversity, "realism": realism, "length": length}
    )
    cycle_prepare(generator, generator_kwargs, embedder, embedder_kwargs)


adversary_reward.prepare = adversary_prepare  # type: ignore[attr-defined]
