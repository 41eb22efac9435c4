"""Image embedders from transformers checkpoints: DINOv2 (seed A) and CLIP / SigLIP image towers.

`HFImageEmbedder(model=...)` loads a hub id or a local folder with `AutoModel` +
`AutoImageProcessor` (the checkpoint's own preprocessing, as the seed used it). What a feature is
depends on the checkpoint:

- a plain vision backbone (DINOv2, ViT): `pooling="cls"` takes the CLS token
  `last_hidden_state[:, 0]` (seed A; for DINOv2 the same as `pooler_output`), `pooling="mean"`
  the mean of the patch tokens (register tokens excluded);
- a dual-encoder (CLIP, SigLIP: its config has a `vision_config`): the projected image features
  of `get_image_features`.

`embed(images) -> [N, D]` float32, L2-normalised, computed in batches of `batch_size`;
`similarity(a, b) -> [N]` is the raw cosine of a[i] and b[i] (the cycle reward maps it). The
originals of a run are a small fixed set (75 CharXiv charts), so embeddings of the `a` side are
cached by a hash of the image's pixels (an LRU of `cache_size` entries) and each is computed once.

Not covered: text features, multi-crop / sliding-window embeddings, any training of the embedder.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlmgrpo.errors import ConfigError, ModelLoadError
from vlmgrpo.placement import OffloadableModels
from vlmgrpo.sources import is_local_path

DEFAULT_MODEL = "facebook/dinov2-large"
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"


def image_key(img: Image.Image) -> str:
    """A hash of the image's mode, size and pixel bytes (two equal images share the key)."""
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{img.mode}:{img.size[0]}x{img.size[1]}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def resolve_dtype(dtype: str, device: str) -> Any:
    """ "auto" -> bfloat16 on CUDA, float32 elsewhere; or a torch dtype name."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"embedder_kwargs.dtype: {dtype!r} is not one of auto, float32, bfloat16, float16")
    return getattr(torch, dtype)


def check_local_source(name: str, what: str, how: str) -> None:
    """One-line `ModelLoadError` for a local path that does not exist (a hub id passes)."""
    p = Path(name).expanduser()
    if p.exists():
        if p.is_file():
            raise ModelLoadError(f"{name}: is a file; {what} expects a model folder")
        return
    if is_local_path(name):  # not a Hub id (vlmgrpo/sources.py), and not there
        raise ModelLoadError(f"{name}: {what} weights folder not found; get the weights with `{how}`")


class HFImageEmbedder(OffloadableModels):
    """See the module docstring. Registered as `dinov2` and `clip` (`embedder_kwargs` go here)."""

    name = "hf"
    default_model = DEFAULT_MODEL

    def __init__(
        self,
        model: str = "",
        pooling: str = "cls",
        batch_size: int = 32,
        device: str = "auto",
        dtype: str = "auto",
        cache_size: int = 4096,
    ) -> None:
        if pooling not in ("cls", "mean"):
            raise ConfigError(f"embedder_kwargs.pooling: {pooling!r} is not 'cls' or 'mean'")
        if batch_size < 1:
            raise ConfigError("embedder_kwargs.batch_size: must be at least 1")
        self.model_name = str(model or self.default_model)
        self.pooling = pooling
        self.batch_size = int(batch_size)
        from vlmgrpo.dist import resolve_device

        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.cache_hits = 0
        self.model, self.processor = self._load()
        cfg = self.model.config
        self.dual_encoder = hasattr(self.model, "get_image_features") and hasattr(cfg, "vision_config")
        self.num_register_tokens = int(getattr(cfg, "num_register_tokens", 0) or 0)

    def _load(self) -> tuple[Any, Any]:
        import transformers

        how = f"hf download {self.default_model} --local-dir {self.model_name}"
        check_local_source(self.model_name, "the image embedder's", how)
        try:
            processor = transformers.AutoImageProcessor.from_pretrained(self.model_name)
            model = transformers.AutoModel.from_pretrained(self.model_name, dtype=self.dtype)
        except (OSError, ValueError) as e:  # not cached and no hub access, or an incomplete folder
            raise load_error(
                self.model_name, "the image embedder", self.default_model, "embedder_kwargs", e
            ) from None
        model.to(self.device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model, processor

    # ------------------------------------------------------------------ features
    def _features(self, images: list[Image.Image]) -> np.ndarray:
        """[n, D] L2-normalised float32 features of one batch."""
        import torch

        inputs = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, self.dtype)
        with torch.inference_mode():
            if self.dual_encoder:
                out = self.model.get_image_features(pixel_values=pixels)
                feats = out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5
            else:
                hidden = self.model(pixel_values=pixels).last_hidden_state  # [n, 1 + R + P, D]
                if self.pooling == "cls":
                    feats = hidden[:, 0]
                else:
                    feats = hidden[:, 1 + self.num_register_tokens :].mean(1)
            feats = torch.nn.functional.normalize(feats.float(), dim=-1)
        return feats.cpu().numpy().astype(np.float32)

    def embed(self, images: Sequence[Image.Image], cache: bool = False) -> np.ndarray:
        """[N, D] float32, L2-normalised, in batches of `batch_size`. With `cache`, images seen
        before (same pixels) are looked up instead of recomputed."""
        images = list(images)
        if not images:
            return np.zeros((0, 0), np.float32)
        keys = [image_key(im) for im in images] if cache and self.cache_size > 0 else None
        out: list[np.ndarray | None] = [None] * len(images)
        todo: list[int] = []
        for i in range(len(images)):
            hit = self._cache.get(keys[i]) if keys is not None else None
            if hit is not None:
                self._cache.move_to_end(keys[i])
                self.cache_hits += 1
                out[i] = hit
            else:
                todo.append(i)
        # equal images inside one call are computed once too
        first: dict[str, int] = {}
        compute = [i for i in todo if keys is None or first.setdefault(keys[i], i) == i]
        for s in range(0, len(compute), self.batch_size):
            idx = compute[s : s + self.batch_size]
            for i, f in zip(idx, self._features([images[i] for i in idx])):
                out[i] = f
                if keys is not None:
                    self._remember(keys[i], f)
        for i in todo:
            if out[i] is None:  # a duplicate of an image computed above
                out[i] = out[first[keys[i]]]  # type: ignore[index]
        return np.stack(out)  # type: ignore[arg-type]

    def _remember(self, key: str, feat: np.ndarray) -> None:
        self._cache[key] = feat
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def offload_modules(self) -> list[Any]:
        return [self.model]

    def similarity(self, a: Sequence[Image.Image], b: Sequence[Image.Image]) -> np.ndarray:
        """[N] raw cosine of a[i] and b[i], in [-1, 1]. `a` (the originals) goes through the cache."""
        if len(a) != len(b):
            raise ValueError(f"similarity needs pairs: got {len(a)} and {len(b)} images")
        if len(a) == 0:
            return np.zeros(0)
        fa, fb = self.embed(a, cache=True), self.embed(b)
        return np.clip((fa * fb).sum(1), -1.0, 1.0).astype(np.float64)


class CLIPEmbedder(HFImageEmbedder):
    """`HFImageEmbedder` whose default checkpoint is a CLIP model (features: `get_image_features`)."""

    default_model = DEFAULT_CLIP_MODEL


def load_error(name: str, what: str, default: str, section: str, e: BaseException) -> ModelLoadError:
    """A one-line `ModelLoadError` for a failed `from_pretrained`, with how to get the weights."""
    if is_local_path(name):
        how = f"hf download {default} --local-dir {name}"
        return ModelLoadError(
            f"{name}: cannot load {what} from this folder ({_first_line(e)}); get the weights with `{how}`"
        )
    return ModelLoadError(
        f"{name}: cannot load {what} ({_first_line(e)}); download it with `hf download {name}` "
        f"on a machine with hub access, or set {section}.model to a local folder"
    )


def _first_line(e: BaseException, limit: int = 120) -> str:
    """The first line of an exception's message, shortened for a one-line error."""
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."
