"""Image similarity of a generated figure to its reference, as seed E scored it (and fixed).

Both images become RGB (transparent pixels composited on white, as matplotlib shows them) and are
resized to `size` x `size` (seed: 224, bilinear) before any metric. Each metric gives 1 for
identical images:

- `ssim`: structural similarity (scikit-image, channel axis 2, data range 255), in [-1, 1];
- `mse`: 1 / (1 + MSE / 10000), MSE over the 0-255 values as floats (the seed computed it on uint8,
  which wraps around: a defect), in (0, 1];
- `cosine`: cosine of the flattened images scaled to [0, 1] (1 when both are black), in [0, 1];
- `histogram`: correlation of 8x8x8-bin colour histograms (OpenCV's calcHist), in [-1, 1];
- `edge`: IoU of Canny(50, 150) edge maps (OpenCV; 1 when both have no edges), in [0, 1];
- `combined`: the seed's 0.3 ssim + 0.2 mse + 0.2 cosine + 0.15 histogram + 0.15 edge;
- `dinov2`: (cos + 1) / 2 of DINOv2 features (seed E's later version: dinov2-base, mean-pooled),
  through `vlmgrpo.embed.get_embedder("dinov2", kwargs)`; loaded only when selected.

`similarity(refs, gens, weights)` scores pairs in a batch and combines the selected metrics with
weights normalised to sum 1. Non-goals: perceptual metrics beyond these, alignment or cropping of
figures before comparison.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from vlmgrpo.errors import ConfigError

SEED_WEIGHTS: dict[str, float] = {"ssim": 0.3, "mse": 0.2, "cosine": 0.2, "histogram": 0.15, "edge": 0.15}
DINOV2_DEFAULTS: dict[str, Any] = {"model": "facebook/dinov2-base", "pooling": "mean"}


def to_rgb(img: Image.Image | np.ndarray, size: int | None = 224) -> np.ndarray:
    """[size, size, 3] uint8 RGB from a PIL image of any mode (alpha composited on white) or an
    array ([H, W], [H, W, 3] or [H, W, 4], uint8 or floats in [0, 1]); `size=None` keeps the size."""
    if isinstance(img, np.ndarray):
        arr = img if img.dtype == np.uint8 else (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
        img = Image.fromarray(arr)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.new("RGB", rgba.size, (255, 255, 255))
        img.paste(rgba, mask=rgba.getchannel("A"))
    else:
        img = img.convert("RGB")
    if size and img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two [H, W, 3] uint8 images (scikit-image defaults: 7x7 window, uniform filter)."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=2, data_range=255))


def mse_score(a: np.ndarray, b: np.ndarray) -> float:
    """1 / (1 + MSE / 10000), the MSE taken on floats in 0-255."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 1.0 / (1.0 + mse / 10000.0)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of the flattened images / 255 (non-negative, so in [0, 1]); both black -> 1."""
    x, y = a.reshape(-1).astype(np.float64) / 255.0, b.reshape(-1).astype(np.float64) / 255.0
    # sums, not BLAS (np.dot, norm): OpenBLAS's threads made each pair ~15 ms on a loaded 2-core box
    nx, ny = float(np.sqrt((x * x).sum())), float(np.sqrt((y * y).sum()))
    if nx == 0.0 or ny == 0.0:
        return 1.0 if nx == ny else 0.0
    return float((x * y).sum() / (nx * ny))


def histogram(a: np.ndarray, b: np.ndarray, bins: int = 8) -> float:
    """Pearson correlation of the bins^3 colour histograms (OpenCV calcHist), computed two-pass in
    float64: cv2.compareHist(HISTCMP_CORREL) in OpenCV 5.0.0 miscounts the bins of a 3-D histogram
    and loses precision (returns -1 for identical histograms: opencv/opencv#29706,
    opencv/opencv-python#1257). A histogram without variance correlates only with itself."""
    import cv2

    ha, hb = (
        cv2.calcHist([x], [0, 1, 2], None, [bins] * 3, [0, 256] * 3).ravel().astype(np.float64)
        for x in (a, b)
    )
    da, db = ha - ha.mean(), hb - hb.mean()
    denom = float(np.sqrt((da * da).sum() * (db * db).sum()))
    if denom == 0.0:
        return 1.0 if np.array_equal(ha, hb) else 0.0
    return float((da * db).sum() / denom)


def edges(a: np.ndarray, low: int = 50, high: int = 150) -> np.ndarray:
    """[H, W] bool Canny edge map of an RGB uint8 image (OpenCV, thresholds as in seed E)."""
    import cv2

    return cv2.Canny(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), low, high) > 0


def edge_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of the Canny edge maps; 1 when neither image has an edge."""
    ea, eb = edges(a), edges(b)
    union = int(np.logical_or(ea, eb).sum())
    return 1.0 if union == 0 else float(np.logical_and(ea, eb).sum()) / union


PAIR_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "ssim": ssim,
    "mse": mse_score,
    "cosine": cosine,
    "histogram": histogram,
    "edge": edge_iou,
}
METRICS = (*PAIR_METRICS, "combined", "dinov2")


def compare(
    a: Image.Image | np.ndarray,
    b: Image.Image | np.ndarray,
    metrics: Sequence[str] = tuple(PAIR_METRICS),
    size: int = 224,
) -> dict[str, float]:
    """Named pixel metrics (and `combined`) of one pair; see the module docstring."""
    unknown = [m for m in metrics if m not in METRICS or m == "dinov2"]
    if unknown:
        raise ConfigError(
            f"imagemetrics.compare: unknown pixel metric(s) {unknown}; known: {list(PAIR_METRICS)}"
        )
    x, y = to_rgb(a, size), to_rgb(b, size)
    need = set(metrics) | (set(SEED_WEIGHTS) if "combined" in metrics else set())
    out = {m: fn(x, y) for m, fn in PAIR_METRICS.items() if m in need}
    if "combined" in metrics:
        out["combined"] = sum(w * out[m] for m, w in SEED_WEIGHTS.items())
    return {m: out[m] for m in metrics}


def check_weights(weights: Mapping[str, float], where: str = "metrics") -> dict[str, float]:
    """Validated {metric: weight} (known names, non-negative, not all zero)."""
    out = {str(k): float(v) for k, v in dict(weights).items()}
    for name, w in out.items():
        if name not in METRICS:
            raise ConfigError(f"{where}.{name}: unknown image metric; choose from {', '.join(METRICS)}")
        if w < 0:
            raise ConfigError(f"{where}.{name}: weight must be >= 0, got {w}")
    if not out or sum(out.values()) <= 0:
        raise ConfigError(f"{where}: give at least one metric a positive weight")
    return out


def dinov2_similarity(
    refs: Sequence[Image.Image],
    gens: Sequence[Image.Image],
    size: int = 224,
    embedder_kwargs: Mapping | None = None,
) -> np.ndarray:
    """[N] (cos + 1) / 2 of DINOv2 features of refs[i] and gens[i] (both made RGB at `size`)."""
    from vlmgrpo.embed import get_embedder

    emb = get_embedder("dinov2", {**DINOV2_DEFAULTS, **dict(embedder_kwargs or {})})
    ra = [Image.fromarray(to_rgb(r, size)) for r in refs]
    ga = [Image.fromarray(to_rgb(g, size)) for g in gens]
    return (np.asarray(emb.similarity(ra, ga), dtype=np.float64) + 1.0) / 2.0


def similarity(
    refs: Sequence[Image.Image | np.ndarray],
    gens: Sequence[Image.Image | np.ndarray],
    weights: Mapping[str, float] | None = None,
    size: int = 224,
    dinov2_kwargs: Mapping | None = None,
) -> list[dict[str, float]]:
    """Per pair: every selected metric plus `similarity`, their weighted mean (weights normalised
    to sum 1; default `SEED_WEIGHTS`, i.e. seed E's combination). Pixel metrics run per pair on the
    CPU; DINOv2 runs once over the batch."""
    if len(refs) != len(gens):
        raise ValueError(f"similarity needs pairs: got {len(refs)} references and {len(gens)} images")
    w = check_weights(weights if weights is not None else SEED_WEIGHTS)
    pixel = [m for m in w if m != "dinov2"]
    rows = [compare(r, g, pixel, size) for r, g in zip(refs, gens)]
    if "dinov2" in w and len(refs):
        for row, s in zip(rows, dinov2_similarity(refs, gens, size, dinov2_kwargs)):
            row["dinov2"] = float(s)
    total = sum(w.values())
    for row in rows:
        row["similarity"] = sum(wt * row[m] for m, wt in w.items()) / total
    return rows
