"""An offline image similarity for the embedded demo's flat-shape scenes, shaped like DINOv2's.

`PixelEmbedder.embed(images)` returns L2-normalised feature vectors [N, D] and
`similarity(a, b)` is the row-wise dot product, so it drops in where a DINOv2 embedder goes. All
features are non-negative, so the similarity lies in [0, 1]: identical images score 1, and a blank
(white) canvas has the zero vector and scores 0 against anything, itself included.

Every pixel is split into inks that are linear in coverage under anti-aliasing against white:
chroma (max - min of RGB) shared among the palette hues by a soft hue assignment (hue survives
blending with white exactly), and total ink (1 - min of RGB: chroma plus darkness). The feature is
a concatenation of weighted, separately normalised blocks, so the similarity is the weighted mean
of the blocks' cosines, each giving credit for one attribute:

- colour:   ink mass per hue                        -> right colour, wherever and whatever shape
- shape:    per-hue histogram of edge orientations  -> right shape of that colour, anywhere
            (circle: uniform; square: 0/90 deg; triangle: 27/90/153 deg), split into sharp and
            soft edges so that a blurred blob (unspecified shape) does not pass for a circle
- layout:   per-hue ink maps blurred at two scales  -> right colour at the right place and size
            (the fine scale tolerates the jitter, the coarse one credits neighbouring cells)
- ink:      the same maps and edge histogram of total ink, hue-blind -> something of that shape
            at that place, whatever its colour

Blurs and downsampling are one matrix product each side (B X B^T with a Gaussian matrix B),
gradients are Scharr differences, all batched in numpy: the base install suffices (OpenCV and
scikit-image are optional extras of vlmgrpo; tests check these filters against them).

Scope: synthetic flat colours on white. On photographs or FLUX images it still returns a stable
colour-layout similarity, but it is no semantic embedder; use DINOv2 there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from vlmgrpo.data.scenes import COLORS

# Block weights (they sum to 1): the similarity is sum_b weight_b * cosine_b.
DEFAULT_WEIGHTS: dict[str, float] = {
    "color": 0.20,
    "shape": 0.20,
    "layout_fine": 0.20,
    "layout_coarse": 0.15,
    "ink_layout": 0.15,
    "ink_shape": 0.10,
}
_HUE_STEPS = 720


def _hue(rgb: np.ndarray) -> np.ndarray:
    """Opponent-colour hue angle in degrees [0, 360) of [..., 3] floats; undefined (0) for greys."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.degrees(np.arctan2(np.sqrt(3.0) * (g - b), 2.0 * r - g - b)) % 360.0


def gaussian_matrix(n_out: int, n_in: int, sigma: float) -> np.ndarray:
    """[n_out, n_in] rows = Gaussian weights (std `sigma` input pixels) centred on an evenly spaced
    output grid; `B @ X @ B.T` blurs and resamples a [n_in, n_in] map (zero outside the canvas)."""
    centres = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    x = np.arange(n_in)
    m = np.exp(-0.5 * ((x[None, :] - centres[:, None]) / sigma) ** 2)
    return (m / (sigma * np.sqrt(2 * np.pi))).astype(np.float32)


def scharr(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(d/dx, d/dy) of [..., H, W] maps, Scharr 3x3 kernels normalised to unit gain on a ramp,
    zero padding (the canvas is white outside)."""
    p = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)])
    sx = p[..., :, 2:] - p[..., :, :-2]  # central difference along x, [.., H+2, W]
    sy = p[..., 2:, :] - p[..., :-2, :]
    gx = (3 * sx[..., :-2, :] + 10 * sx[..., 1:-1, :] + 3 * sx[..., 2:, :]) / 32.0
    gy = (3 * sy[..., :, :-2] + 10 * sy[..., :, 1:-1] + 3 * sy[..., :, 2:]) / 32.0
    return gx, gy


class PixelEmbedder:
    """Feature-vector similarity for flat-colour scenes; see the module docstring.

    Images of any size are resized (box filter) to `resolution` x `resolution` first.
    """

    name = "pixel"

    def __init__(
        self,
        resolution: int = 84,
        weights: dict[str, float] | None = None,
        hue_sigma: float = 10.0,
        fine_sigma: float = 0.035,
        coarse_sigma: float = 0.12,
        n_orient: int = 12,
        sharp_edge: float = 0.2,
    ) -> None:
        self.resolution = r = int(resolution)
        self.weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        unknown = set(self.weights) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown block(s) {sorted(unknown)}; blocks are {sorted(DEFAULT_WEIGHTS)}")
        self.hue_sigma = hue_sigma
        self.palette_hues = _hue(np.array(list(COLORS.values()), dtype=np.float64) / 255.0)
        # soft assignment of a hue to the palette hues (rows sum to 1), tabulated per 0.5 degree
        d = np.abs(np.arange(_HUE_STEPS)[:, None] * 360.0 / _HUE_STEPS - self.palette_hues)
        d = np.minimum(d, 360.0 - d)
        w = np.exp(-0.5 * (d / hue_sigma) ** 2) + 1e-12
        self._hue_table = (w / w.sum(1, keepdims=True)).astype(np.float32)  # [_HUE_STEPS, K]
        # Fine grid: spacing ~ sigma so the sampled map keeps what the blur keeps; coarse: 6x6.
        n_fine = max(4, int(round(1.0 / fine_sigma)))
        self.fine = gaussian_matrix(n_fine, r, fine_sigma * r)
        self.coarse = gaussian_matrix(6, r, coarse_sigma * r)
        self.n_orient = n_orient
        self.sharp_edge = sharp_edge  # gradient (ink per pixel) above which an edge counts as sharp

    # -- pixels -> inks ------------------------------------------------------------------------
    def _arrays(self, images: Sequence[Image.Image]) -> np.ndarray:
        r = self.resolution
        arrs = []
        for im in images:
            im = im.convert("RGB")
            if im.size != (r, r):
                im = im.resize((r, r), Image.Resampling.BOX)
            arrs.append(np.asarray(im))
        return np.stack(arrs).astype(np.float32) / 255.0  # [N, R, R, 3]

    def _inks(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[N,R,R,3] -> (per-hue chroma [N, K, R, R], total ink [N, R, R])."""
        r_, g_, b_ = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        mx, mn = np.maximum(np.maximum(r_, g_), b_), np.minimum(np.minimum(r_, g_), b_)
        chroma = mx - mn
        n, r = rgb.shape[:2]
        per_hue = np.zeros((n, len(self.palette_hues), r, r), np.float32)
        # most pixels are white: compute hues only where there is colour
        ni, yi, xi = np.nonzero(chroma > 0.5 / 255)
        hue = _hue(rgb[ni, yi, xi])
        w = self._hue_table[np.rint(hue * _HUE_STEPS / 360.0).astype(np.int64) % _HUE_STEPS]  # [M, K]
        per_hue[ni, :, yi, xi] = chroma[ni, yi, xi, None] * w
        return per_hue, 1.0 - mn

    def _edge_hist(self, maps: np.ndarray) -> np.ndarray:
        """[..., R, R] -> [..., 2 * n_orient] magnitude-weighted orientation histogram (mod 180
        degrees, linear interpolation between bins), soft edges first, then sharp edges."""
        lead = maps.shape[:-2]
        m, k = int(np.prod(lead)), self.n_orient
        flat = maps.reshape((m,) + maps.shape[-2:])
        # only maps with some ink (most hues are absent from a given image), only edge pixels
        active = np.flatnonzero(flat.reshape(m, -1).max(1) > 0)
        gx, gy = scharr(flat[active])
        mag = np.hypot(gx, gy)
        idx = np.flatnonzero(mag > 1e-4)
        mag, gx, gy = mag.ravel()[idx], gx.ravel()[idx], gy.ravel()[idx]
        pos = (np.arctan2(gy, gx) % np.pi) * (k / np.pi)  # [0, k)
        lo = np.floor(pos)
        frac = pos - lo
        lo = lo.astype(np.int64) % k
        sharp = np.clip((mag - 0.5 * self.sharp_edge) / self.sharp_edge, 0.0, 1.0)
        # bin index = map * 2k + (k if sharp) + orientation bin
        base = active[idx // (maps.shape[-1] * maps.shape[-2])] * 2 * k
        bins = np.concatenate([base + lo, base + (lo + 1) % k, base + k + lo, base + k + (lo + 1) % k])
        vals = np.concatenate(
            [
                mag * (1 - sharp) * (1 - frac),
                mag * (1 - sharp) * frac,
                mag * sharp * (1 - frac),
                mag * sharp * frac,
            ]
        )
        return np.bincount(bins, vals, minlength=m * 2 * k).reshape(lead + (2 * k,))

    # -- features ------------------------------------------------------------------------------
    def blocks(self, images: Sequence[Image.Image]) -> dict[str, np.ndarray]:
        """Unnormalised blocks, name -> [N, D_block]."""
        per_hue, ink = self._inks(self._arrays(images))
        n = per_hue.shape[0]
        fine, coarse = self.fine, self.coarse
        out = {
            "color": per_hue.sum((-1, -2)),
            "shape": self._edge_hist(per_hue).reshape(n, -1),
            "layout_fine": (fine @ per_hue @ fine.T).reshape(n, -1),
            "layout_coarse": (coarse @ per_hue @ coarse.T).reshape(n, -1),
            "ink_layout": np.concatenate(
                [(fine @ ink @ fine.T).reshape(n, -1), (coarse @ ink @ coarse.T).reshape(n, -1)], axis=1
            ),
            "ink_shape": self._edge_hist(ink),
        }
        return {k: out[k] for k in self.weights}

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """[N, D] float32 features, L2-normalised (zero rows for blank canvases)."""
        if len(images) == 0:
            return np.zeros((0, 0), np.float32)
        parts = []
        for name, x in self.blocks(images).items():
            norm = np.linalg.norm(x, axis=1, keepdims=True)
            parts.append(np.sqrt(self.weights[name]) * x / np.maximum(norm, 1e-8))
        f = np.concatenate(parts, axis=1)
        # renormalise: a block can be empty (e.g. no chroma in a grey drawing) while others are not
        norm = np.linalg.norm(f, axis=1, keepdims=True)
        return (f / np.maximum(norm, 1e-8)).astype(np.float32)

    def similarity(self, a: Sequence[Image.Image], b: Sequence[Image.Image]) -> np.ndarray:
        """[N] similarity in [0, 1] of a[i] and b[i]."""
        if len(a) != len(b):
            raise ValueError(f"similarity needs pairs: got {len(a)} and {len(b)} images")
        if len(a) == 0:
            return np.zeros(0)
        fa, fb = self.embed(a), self.embed(b)
        return np.clip((fa * fb).sum(1), 0.0, 1.0).astype(np.float64)
