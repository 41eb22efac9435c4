"""An offline image similarity for the embedded demo's flat-shape scenes, shaped like DINOv2's.

`PixelEmbedder.embed(images)` returns L2-normalised feature vectors [N, D] and
`similarity(a, b)` is the row-wise dot product, so it drops in where a DINOv2 embedder goes. All
features are non-negative, so the similarity lies in [0, 1]: identical images score 1, and a blank
(white) canvas has the zero vector and scores 0 against anything, itself included.

Each pixel's ink (1 - min of RGB, 0 on white) goes to channels that stay linear in coverage when
anti-aliasing blends a colour with white: coloured ink is shared among the palette hues by a soft
hue assignment, and grey ink has its own channel (blending with white keeps both the hue and the
ratio chroma / ink, which decides coloured versus grey).
The feature concatenates weighted, separately normalised blocks, so the similarity is the weighted
mean of the blocks' cosines, each crediting one attribute (`DEFAULT_WEIGHTS`):

- color:    ink mass per channel                         -> right colour, anywhere, any shape
- shape:    per-channel histogram of edge orientations   -> right colour and shape, anywhere
            (circle: uniform; square: 0/90 deg; triangle: 27/90/153 deg), sharp and soft edges
            apart so that a blurred blob (unspecified shape) does not pass for a circle
- size:     per-channel mass binned by radius of gyration -> right colour and size, anywhere
- layout_fine / layout_coarse: per-channel maps blurred at two scales -> right colour at the
            right place (the fine scale absorbs the jitter, the coarse one credits neighbour cells)
- ink_layout / ink_shape: total ink, channel-blind      -> something there, of that shape

Most blocks are keyed by colour, so a wrong colour loses most of the credit: colour is the
easiest attribute to see, and the rest is credited once the colour is right; the channel-blind
blocks keep some signal for position and shape when it is not.

Blur + downsampling is one matrix product each side (B X B^T with a Gaussian matrix B) and
gradients are Scharr differences, batched in numpy, so the base install suffices (OpenCV and
scikit-image are optional extras; the tests check these filters against them).

Scope: flat colours on white. On photographs or FLUX images it still gives a deterministic colour-
layout similarity, but no semantics: use DINOv2 there. Not a metric (no triangle inequality).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from vlmgrpo.data.scenes import COLORS

# The similarity is sum_b weight_b * cosine_b (weights sum to 1).
DEFAULT_WEIGHTS: dict[str, float] = {
    "color": 0.20,
    "shape": 0.20,
    "size": 0.15,
    "layout_fine": 0.15,
    "layout_coarse": 0.10,
    "ink_layout": 0.15,
    "ink_shape": 0.05,
}
_HUE_STEPS = 720  # hue lookup table resolution (0.5 degree)
_CHUNK = 16  # images per numpy pass in `embed`


def _hue(rgb: np.ndarray) -> np.ndarray:
    """Opponent-colour hue angle in degrees [0, 360) of [..., 3] floats (0 for greys)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.degrees(np.arctan2(np.sqrt(3.0) * (g - b), 2.0 * r - g - b)) % 360.0


def gaussian_matrix(n_out: int, n_in: int, sigma: float) -> np.ndarray:
    """[n_out, n_in] Gaussian weights (std `sigma` input pixels, unit mass) centred on an evenly
    spaced output grid: `B @ X @ B.T` blurs and resamples an [n_in, n_in] map, zero outside."""
    centres = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    x = np.arange(n_in)
    m = np.exp(-0.5 * ((x[None, :] - centres[:, None]) / sigma) ** 2)
    return (m / (sigma * np.sqrt(2 * np.pi))).astype(np.float32)


def scharr(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(d/dx, d/dy) of [..., H, W] maps with Scharr 3x3 kernels scaled to unit gain on a ramp
    (OpenCV's Scharr / 32), zero padding: the canvas is white outside."""
    p = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)])
    sx = p[..., :, 2:] - p[..., :, :-2]  # central differences along x, [..., H + 2, W]
    sy = p[..., 2:, :] - p[..., :-2, :]  # along y, [..., H, W + 2]
    gx = (3 * sx[..., :-2, :] + 10 * sx[..., 1:-1, :] + 3 * sx[..., 2:, :]) / 32.0
    gy = (3 * sy[..., :, :-2] + 10 * sy[..., :, 1:-1] + 3 * sy[..., :, 2:]) / 32.0
    return gx, gy


class PixelEmbedder:
    """Feature-vector similarity for flat-colour scenes; see the module docstring.

    Images of any size are resized (box filter) to `resolution` x `resolution` first. Sizes and
    blur widths are fractions of the canvas.
    """

    name = "pixel"

    def __init__(
        self,
        resolution: int = 84,
        weights: dict[str, float] | None = None,
        hue_sigma: float = 10.0,  # degrees; palette hues are >= 25 degrees apart
        fine_sigma: float = 0.035,  # ~ the jitter (0.025 per axis)
        coarse_sigma: float = 0.12,  # ~ a third of the grid spacing
        n_orient: int = 12,
        sharp_edge: float = 0.2,  # gradient (ink per pixel) from which an edge counts as sharp
        size_sigma: float = 0.1,  # log units: small/large differ by 0.46, shapes by <= 0.13
    ) -> None:
        self.resolution = r = int(resolution)
        self.weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        unknown = set(self.weights) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown block(s) {sorted(unknown)}; blocks are {sorted(DEFAULT_WEIGHTS)}")
        hues = _hue(np.array(list(COLORS.values()), dtype=np.float64) / 255.0)
        d = np.abs(np.arange(_HUE_STEPS)[:, None] * (360.0 / _HUE_STEPS) - hues)
        d = np.minimum(d, 360.0 - d)
        w = np.exp(-0.5 * (d / hue_sigma) ** 2) + 1e-12
        w /= w.sum(1, keepdims=True)
        w[w < 1e-3] = 0.0  # exact zeros keep absent hues' maps empty (and skipped)
        self._hue_table = (w / w.sum(1, keepdims=True)).astype(np.float32)  # [_HUE_STEPS, K], rows sum 1
        # fine grid spacing ~ its sigma, so sampling keeps what the blur keeps
        self.fine = gaussian_matrix(max(4, round(1.0 / fine_sigma)), r, fine_sigma * r)
        self.coarse = gaussian_matrix(6, r, coarse_sigma * r)
        self.n_orient = n_orient
        self.sharp_edge = sharp_edge
        self.size_sigma = size_sigma
        # log radius of gyration (fraction of the canvas) bins from 0.01 to 0.7, spaced sigma / 2
        self._size_centres = np.arange(np.log(0.01), np.log(0.7), size_sigma / 2).astype(np.float32)

    # -- pixels -> ink channels ----------------------------------------------------------------
    def _arrays(self, images: Sequence[Image.Image]) -> np.ndarray:
        r = self.resolution
        arrs = []
        for im in images:
            im = im.convert("RGB")
            if im.size != (r, r):
                im = im.resize((r, r), Image.Resampling.BOX)
            arrs.append(np.asarray(im))
        return np.stack(arrs).astype(np.float32) / 255.0  # [N, R, R, 3]

    def channels(self, rgb: np.ndarray) -> np.ndarray:
        """[N, R, R, 3] floats in [0, 1] -> ink channels [N, K + 1, R, R]: ink per palette hue,
        then grey ink. They sum to the total ink 1 - min(RGB) (0 on white)."""
        red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        mx = np.maximum(np.maximum(red, green), blue)
        mn = np.minimum(np.minimum(red, green), blue)
        ink = 1.0 - mn
        # colourfulness chroma / ink is unchanged by blending with white; a soft gate on it sends
        # a pixel's ink to the hue channels (all palette colours) or to the grey channel
        gate = np.clip(((mx - mn) / np.maximum(ink, 1e-6) - 0.15) / 0.2, 0.0, 1.0)
        n, r, k = rgb.shape[0], rgb.shape[1], self._hue_table.shape[1]
        out = np.zeros((n, k + 1, r, r), np.float32)
        ni, yi, xi = np.nonzero(gate * ink > 0)  # most pixels are white: skip their hue
        hue = _hue(rgb[ni, yi, xi])
        w = self._hue_table[np.rint(hue * (_HUE_STEPS / 360.0)).astype(np.int64) % _HUE_STEPS]
        out[ni, :k, yi, xi] = (ink * gate)[ni, yi, xi, None] * w
        out[:, k] = ink * (1.0 - gate)
        return out

    # -- block helpers ---------------------------------------------------------------------------
    def _edge_hist(self, maps: np.ndarray) -> np.ndarray:
        """[M, R, R] -> [M, 2 * n_orient]: gradient-magnitude-weighted histogram of edge
        orientations (mod 180 degrees, linear between bins), soft edges then sharp edges."""
        m, k = maps.shape[0], self.n_orient
        # only maps with some ink (most hues are absent from an image), only edge pixels
        active = np.flatnonzero(maps.reshape(m, -1).max(1) > 1e-3)
        gx, gy = scharr(maps[active])
        mag = np.hypot(gx, gy)
        idx = np.flatnonzero(mag > 1e-4)
        mag, gx, gy = mag.ravel()[idx], gx.ravel()[idx], gy.ravel()[idx]
        pos = (np.arctan2(gy, gx) % np.pi) * (k / np.pi)  # [0, k)
        lo = np.floor(pos)
        frac = pos - lo
        lo = lo.astype(np.int64) % k
        hi = (lo + 1) % k
        sharp = np.clip((mag - 0.5 * self.sharp_edge) / self.sharp_edge, 0.0, 1.0)
        soft_mag, sharp_mag = mag * (1 - sharp), mag * sharp
        base = active[idx // (maps.shape[-1] * maps.shape[-2])] * 2 * k  # bin = map * 2k + (k if sharp) + o
        bins = np.concatenate([base + lo, base + hi, base + k + lo, base + k + hi])
        vals = np.concatenate(
            [soft_mag * (1 - frac), soft_mag * frac, sharp_mag * (1 - frac), sharp_mag * frac]
        )
        return np.bincount(bins, vals, minlength=m * 2 * k).reshape(m, 2 * k)

    def _size_hist(self, maps: np.ndarray) -> np.ndarray:
        """[M, R, R] -> [M, n_size]: each map's mass, soft-binned by its radius of gyration (log).
        The radius of gyration is ~0.7 r for all three shapes (disc 0.71, square 0.69, triangle
        0.62), so it measures size almost independently of shape and of position."""
        r = maps.shape[-1]
        x = (np.arange(r, dtype=np.float32) + 0.5) / r  # pixel centres, fraction of the canvas
        rows, cols = maps.sum(-1), maps.sum(-2)  # marginals [M, R]
        mass = rows.sum(-1)
        m = np.maximum(mass, 1e-8)
        var = (rows @ x**2 + cols @ x**2) / m - ((rows @ x) / m) ** 2 - ((cols @ x) / m) ** 2
        log_rg = 0.5 * np.log(np.maximum(var, 1e-8))
        w = np.exp(-0.5 * ((log_rg[:, None] - self._size_centres) / self.size_sigma) ** 2)
        return mass[:, None] * w / np.maximum(w.sum(-1, keepdims=True), 1e-12)

    # -- features ------------------------------------------------------------------------------
    def blocks(self, images: Sequence[Image.Image]) -> dict[str, np.ndarray]:
        """Unnormalised feature blocks of the weighted names, name -> [N, D_block]."""
        ch = self.channels(self._arrays(images))  # [N, C, R, R]
        n, c, r = ch.shape[0], ch.shape[1], ch.shape[-1]
        ink = ch.sum(1)  # [N, R, R]
        fine, coarse = self.fine, self.coarse
        make = {
            "color": lambda: ch.sum((-1, -2)),
            "shape": lambda: self._edge_hist(ch.reshape(n * c, r, r)).reshape(n, -1),
            "size": lambda: self._size_hist(ch.reshape(n * c, r, r)).reshape(n, -1),
            "layout_fine": lambda: (fine @ ch @ fine.T).reshape(n, -1),
            "layout_coarse": lambda: (coarse @ ch @ coarse.T).reshape(n, -1),
            "ink_layout": lambda: np.concatenate(
                [(fine @ ink @ fine.T).reshape(n, -1), (coarse @ ink @ coarse.T).reshape(n, -1)], axis=1
            ),
            "ink_shape": lambda: self._edge_hist(ink),
        }
        return {name: make[name]() for name in self.weights}

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """[N, D] float32 features, L2-normalised; a blank (white) canvas gives a zero row."""
        if len(images) == 0:
            raise ValueError("embed needs at least one image")
        if len(images) > _CHUNK:  # small batches stay in cache: ~1.5x faster than one big batch
            return np.concatenate([self.embed(images[i : i + _CHUNK]) for i in range(0, len(images), _CHUNK)])
        parts = []
        for name, x in self.blocks(images).items():
            norm = np.linalg.norm(x, axis=1, keepdims=True)
            parts.append(np.sqrt(self.weights[name]) * x / np.maximum(norm, 1e-12))
        f = np.concatenate(parts, axis=1)
        # every block is non-empty as soon as there is ink; this only guards custom weights
        norm = np.linalg.norm(f, axis=1, keepdims=True)
        return (f / np.maximum(norm, 1e-12)).astype(np.float32)

    def similarity(self, a: Sequence[Image.Image], b: Sequence[Image.Image]) -> np.ndarray:
        """[N] float64 in [0, 1]: similarity of a[i] and b[i] (the dot product of their embeddings)."""
        if len(a) != len(b):
            raise ValueError(f"similarity needs pairs: got {len(a)} and {len(b)} images")
        if len(a) == 0:
            return np.zeros(0)
        fa, fb = self.embed(list(a)), self.embed(list(b))
        return np.clip((fa * fb).sum(1), 0.0, 1.0).astype(np.float64)
