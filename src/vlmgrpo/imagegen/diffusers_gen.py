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

Not covered: LoRA / IP-adapter loading, negative prompts, CPU offload (set them up in your own
subclass; the pipeline is `self.pipe`).
"""

from __future__ import annotations

import logging
import random
from typing import Any

from PIL import Image

from vlmgrpo.embed.hf import check_local_source, load_error, resolve_device, resolve_dtype
from vlmgrpo.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "black-forest-labs/FLUX.1-schnell"


class DiffusersGenerator:
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
    ) -> None:
        if batch_size < 1:
            raise ConfigError("generator_kwargs.batch_size: must be at least 1")
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
        self.pipe = self._load()

    def _load(self) -> Any:
        import diffusers

        how = f"huggingface-cli download {DEFAULT_MODEL} --local-dir {self.model_name}"
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
        if self.max_sequence_length is not None and "max_sequence_length" in _call_params(self.pipe):
            kwargs["max_sequence_length"] = int(self.max_sequence_length)
        # one CPU generator per prompt: each image depends on its own seed only
        generators = [torch.Generator("cpu").manual_seed(int(s) % 2**63) for s in seeds]
        with torch.inference_mode():
            images = self.pipe(prompt=prompts, generator=generators, **kwargs).images
        if len(images) != len(prompts):
            raise RuntimeError(f"pipeline returned {len(images)} images for {len(prompts)} prompts")
        return [im.convert("RGB") for im in images]

    def generate(self, prompts: list[str], seeds: list[int] | None = None) -> list[Image.Image | None]:
        """One image per prompt (None where generation failed), in order."""
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        if seeds is None:  # unseeded: fresh noise on every call
            seeds = [random.getrandbits(63) for _ in prompts]
        out: list[Image.Image | None] = [None] * len(prompts)
        for s in range(0, len(prompts), self.batch_size):
            idx = list(range(s, min(len(prompts), s + self.batch_size)))
            try:
                images = self._call([prompts[i] for i in idx], [seeds[i] for i in idx])
            except Exception as e:
                log.warning("diffusers batch of %d failed (%s); retrying one prompt at a time", len(idx), e)
                _free_memory()
                images = [self._one(prompts[i], seeds[i]) for i in idx] if len(idx) > 1 else [None]
                if len(idx) == 1:
                    self.failures += 1
            for i, im in zip(idx, images):
                out[i] = im
        return out

    def _one(self, prompt: str, seed: int) -> Image.Image | None:
        try:
            return self._call([prompt], [seed])[0]
        except Exception as e:
            log.warning("diffusers generation failed for one prompt: %s", e)
            _free_memory()
            self.failures += 1
            return None


def _call_params(pipe: Any) -> set[str]:
    import inspect

    return set(inspect.signature(type(pipe).__call__).parameters)


def _free_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
