"""Local text-to-image generation with any diffusers pipeline; FLUX.1-schnell by default.

`DiffusersGenerator(model=...)` loads a hub id or a local folder with
`DiffusionPipeline.from_pretrained` (falling back to `AutoPipelineForText2Image` for checkpoints
that name no pipeline class), once per process (`get_generator` caches instances). Defaults are
seed A's: `black-forest-labs/FLUX.1-schnell`, 4 steps, guidance 0, 1024x1024 (1 megapixel, 1:1).

`generate(prompts, seeds)` runs all prompts of a step in batches of `batch_size` with one
`torch.Generator` per prompt, seeded with that prompt's seed: the image of a (prompt, seed) pair
does not depend on which batch it lands in (up to float rounding; checked on CPU and on an H100
in bf16). The generators live on the CPU, so the initial noise of a seed is the same on every
device (the images still differ with the precision: bf16 on CUDA, float32 on CPU). A batch that
fails (out of memory, a NaN decode) is retried prompt by prompt; a prompt that still fails gives
`None` (its sample is skipped) and is counted in `failures`.

Speed (issue #10, measured in bench/RESULTS.md):
- `memory_budget_gib`: on CUDA the first call measures the activation memory of one image at this
  resolution and sizes later batches to fit the budget (capped by `batch_size`); a batch that runs
  out of memory halves the size for the rest of the run.
- Prompt embeddings are cached (LRU of `embed_cache` prompts) for pipelines with FLUX's
  `encode_prompt` (T5 + CLIP): GRPO groups repeat descriptions, and the controls re-score the same
  texts. The pipeline then gets `prompt_embeds` instead of text: same images, no re-encoding.
- `compile: true` runs `torch.compile` on the denoiser (first batch slower, later ones faster).
- `offload()` / `onload()` move the pipeline's weights to pinned host memory and back
  (`vlmgrpo.placement`); the trainer calls them around the reward phase with
  `train.offload_reward_models`.

Not covered: LoRA / IP-adapter loading, negative prompts (set them up in your own subclass; the
pipeline is `self.pipe`).
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict
from typing import Any

from PIL import Image

from vlmgrpo.dist import resolve_device
from vlmgrpo.embed.hf import check_local_source, load_error, resolve_dtype
from vlmgrpo.errors import ConfigError
from vlmgrpo.placement import OffloadableModels

log = logging.getLogger(__name__)

DEFAULT_MODEL = "black-forest-labs/FLUX.1-schnell"


class DiffusersGenerator(OffloadableModels):
    """Text -> image with a diffusers pipeline; see the module docstring.

    Args:
        model: hub id or local folder of a diffusers text-to-image pipeline.
        num_inference_steps, guidance_scale, height, width: passed to the pipeline call.
        batch_size: prompts per pipeline call.
        device: "auto" (CUDA when available), "cuda", "cuda:1", "cpu".
        dtype: "auto" (bfloat16 on CUDA, float32 on CPU), "bfloat16", "float16", "float32".
        max_sequence_length: T5 prompt length for FLUX (schnell's maximum is 256).
        call_kwargs: any further keyword arguments for the pipeline call.
    """

    name = "diffusers"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        num_inference_steps: int = 4,
        guidance_scale: float = 0.0,
        height: int = 1024,
        width: int = 1024,
        batch_size: int = 8,
        device: str = "auto",
        dtype: str = "auto",
        max_sequence_length: int | None = 256,
        call_kwargs: dict[str, Any] | None = None,
        memory_budget_gib: float | None = None,
        embed_cache: int = 1024,
        compile: bool = False,
        pipeline: Any = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError("generator_kwargs.batch_size: must be at least 1")
        if memory_budget_gib is not None and memory_budget_gib <= 0:
            raise ConfigError("generator_kwargs.memory_budget_gib: must be positive (or null for no budget)")
        self.model_name = str(model)
        self.num_inference_steps = int(num_inference_steps)
        self.guidance_scale = float(guidance_scale)
        self.height, self.width = int(height), int(width)
        self.size = max(self.height, self.width)
        self.batch_size = int(batch_size)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.max_sequence_length = max_sequence_length
        self.call_kwargs = dict(call_kwargs or {})
        self.failures = 0
        self.memory_budget_gib = memory_budget_gib
        self.per_image_gib: float | None = None  # measured activation memory of one image
        self.embed_cache_size = int(embed_cache)
        self._embeds: OrderedDict[str, tuple[Any, Any]] = OrderedDict()
        self.embed_hits = self.embed_misses = 0
        # `pipeline`: an already built pipeline object (benchmarks, notebooks); `model` is then a label
        self.pipe = pipeline if pipeline is not None else self._load()
        if pipeline is not None:
            self.pipe.set_progress_bar_config(disable=True)
        if compile:
            self._compile()

    @classmethod
    def from_pipeline(cls, pipe: Any, **kwargs: Any) -> DiffusersGenerator:
        """Wrap a pipeline built in code (e.g. without text encoders, see `encode`)."""
        return cls(model=type(pipe).__name__, device=str(pipe.device), pipeline=pipe, **kwargs)

    def _compile(self) -> None:
        import torch

        denoiser = getattr(self.pipe, "transformer", None) or getattr(self.pipe, "unet", None)
        if denoiser is None:
            raise ConfigError("generator_kwargs.compile: this pipeline has no transformer or unet to compile")
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 32)
        if getattr(denoiser, "_repeated_blocks", None) and hasattr(denoiser, "compile_repeated_blocks"):
            # regional compilation: each block type is compiled once and reused (FLUX: 2 types, 57
            # blocks), minutes less than compiling the whole transformer
            denoiser.compile_repeated_blocks(fullgraph=True)
        else:
            denoiser.compile()

    def _load(self) -> Any:
        import diffusers

        how = f"hf download {DEFAULT_MODEL} --local-dir {self.model_name}"
        check_local_source(self.model_name, "the diffusers pipeline's", how)
        try:
            try:
                pipe = diffusers.DiffusionPipeline.from_pretrained(self.model_name, dtype=self.dtype)
            except ValueError:  # no pipeline class recorded: let diffusers pick a text-to-image one
                pipe = diffusers.AutoPipelineForText2Image.from_pretrained(self.model_name, dtype=self.dtype)
        except (OSError, ValueError) as e:  # not cached and no hub access, missing files, gated repo
            raise load_error(
                self.model_name, "the diffusers pipeline", DEFAULT_MODEL, "generator_kwargs", e
            ) from None
        pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    # ------------------------------------------------------------------ prompt embeddings
    def can_cache_embeddings(self) -> bool:
        """FLUX-style pipelines: `encode_prompt` gives (prompt_embeds, pooled_prompt_embeds, ids)."""
        params = _call_params(self.pipe)
        return (
            self.embed_cache_size > 0
            and hasattr(self.pipe, "encode_prompt")
            and {"prompt_embeds", "pooled_prompt_embeds"} <= params
        )

    def encode(self, prompts: list[str]) -> tuple[Any, Any]:
        """(prompt_embeds [n, L, D], pooled [n, P]) from the pipeline's text encoders. Override
        this to feed embeddings directly where no tokenizer is available (bench/bench_reward.py)."""
        kw: dict[str, Any] = dict(
            prompt=prompts, prompt_2=None, device=self.pipe.device, num_images_per_prompt=1
        )
        if self.max_sequence_length is not None:
            kw["max_sequence_length"] = int(self.max_sequence_length)
        emb, pooled, _ = self.pipe.encode_prompt(**kw)
        return emb, pooled

    def _embeddings(self, prompts: list[str]) -> tuple[Any, Any]:
        """Stacked embeddings of `prompts`, each distinct uncached prompt encoded once."""
        import torch

        todo = list(dict.fromkeys(p for p in prompts if p not in self._embeds))
        self.embed_misses += len(todo)
        self.embed_hits += len(prompts) - len(todo)
        fresh: dict[str, tuple[Any, Any]] = {}
        if todo:
            with torch.inference_mode():
                emb, pooled = self.encode(todo)
            fresh = {p: (emb[i : i + 1], pooled[i : i + 1]) for i, p in enumerate(todo)}
        parts = [fresh.get(p) or self._embeds[p] for p in prompts]
        for p, e in fresh.items():  # remember after use: a batch larger than the cache still works
            self._embeds[p] = e
        for p in prompts:
            if p in self._embeds:
                self._embeds.move_to_end(p)
        while len(self._embeds) > self.embed_cache_size:
            self._embeds.popitem(last=False)
        return torch.cat([e for e, _ in parts]), torch.cat([q for _, q in parts])

    # ------------------------------------------------------------------ generation
    def _call(self, prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        import torch

        kwargs: dict[str, Any] = dict(
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            height=self.height,
            width=self.width,
            output_type="pil",
            **self.call_kwargs,
        )
        if self.can_cache_embeddings():
            kwargs["prompt_embeds"], kwargs["pooled_prompt_embeds"] = self._embeddings(prompts)
        else:
            kwargs["prompt"] = prompts
            if self.max_sequence_length is not None and "max_sequence_length" in _call_params(self.pipe):
                kwargs["max_sequence_length"] = int(self.max_sequence_length)
        # one CPU generator per prompt: each image depends on its own seed only
        generators = [torch.Generator("cpu").manual_seed(int(s) % 2**63) for s in seeds]
        with torch.inference_mode():
            images = self.pipe(generator=generators, **kwargs).images
        if len(images) != len(prompts):
            raise RuntimeError(f"pipeline returned {len(images)} images for {len(prompts)} prompts")
        return [im.convert("RGB") for im in images]

    def _measure_one(self, prompt: str, seed: int) -> Image.Image:
        """Generate one image and record its peak activation memory (CUDA)."""
        import torch

        torch.cuda.synchronize(self.pipe.device)
        base = torch.cuda.memory_allocated(self.pipe.device)
        torch.cuda.reset_peak_memory_stats(self.pipe.device)
        im = self._call([prompt], [seed])[0]
        peak = torch.cuda.max_memory_allocated(self.pipe.device)
        self.per_image_gib = max(1e-3, (peak - base) / 2**30)
        return im

    def batch_for_budget(self) -> int:
        """Prompts per call: `batch_size`, lowered to what `memory_budget_gib` allows."""
        if self.memory_budget_gib is None or self.per_image_gib is None:
            return self.batch_size
        return max(1, min(self.batch_size, int(self.memory_budget_gib // self.per_image_gib)))

    def generate(self, prompts: list[str], seeds: list[int] | None = None) -> list[Image.Image | None]:
        """One image per prompt (None where generation failed), in order."""
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        if seeds is None:  # unseeded: fresh noise on every call
            seeds = [random.getrandbits(63) for _ in prompts]
        out: list[Image.Image | None] = [None] * len(prompts)
        s = 0
        if (
            self.memory_budget_gib is not None
            and self.per_image_gib is None
            and prompts
            and str(self.pipe.device).startswith("cuda")
        ):
            out[0] = self._one(prompts[0], seeds[0], measure=True)
            s = 1
        while s < len(prompts):
            idx = list(range(s, min(len(prompts), s + self.batch_for_budget())))
            s = idx[-1] + 1
            try:
                images = self._call([prompts[i] for i in idx], [seeds[i] for i in idx])
            except Exception as e:
                log.warning("diffusers batch of %d failed (%s); retrying one prompt at a time", len(idx), e)
                if _is_oom(e) and len(idx) > 1:  # later batches: half the size
                    self.batch_size = max(1, len(idx) // 2)
                _free_memory()
                images = [self._one(prompts[i], seeds[i]) for i in idx] if len(idx) > 1 else [None]
                if len(idx) == 1:
                    self.failures += 1
            for i, im in zip(idx, images):
                out[i] = im
        return out

    def _one(self, prompt: str, seed: int, measure: bool = False) -> Image.Image | None:
        try:
            return self._measure_one(prompt, seed) if measure else self._call([prompt], [seed])[0]
        except Exception as e:
            log.warning("diffusers generation failed for one prompt: %s", e)
            _free_memory()
            self.failures += 1
            return None

    # ------------------------------------------------------------------ placement
    def offload_modules(self) -> list[Any]:
        import torch

        return [m for m in self.pipe.components.values() if isinstance(m, torch.nn.Module)]


def _call_params(pipe: Any) -> set[str]:
    import inspect

    return set(inspect.signature(type(pipe).__call__).parameters)


def _is_oom(e: BaseException) -> bool:
    return "out of memory" in str(e).lower() or type(e).__name__ == "OutOfMemoryError"


def _free_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
