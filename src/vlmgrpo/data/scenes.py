"""Synthetic scenes for the embedded cycle-consistency demo: flat shapes on a white canvas.

A scene holds 1-2 objects (`max_objects`), each a shape (circle, square, triangle), a colour (six
well-separated hues), a size (small, large) and a cell of a 3x3 grid, placed with a small jitter.
Everything is stored in fractions of the canvas, so one scene draws at any resolution.

`describe(scene)` is the canonical ground-truth text ("a large red circle at the top left and a
small blue square at the center"; objects in reading order). `draw(scene, size)` is the one
drawing routine: the offline generator (`vlmgrpo.imagegen.render`) parses a description into
objects and calls this same function, so the true description redraws the original up to jitter.

Objects may leave attributes unspecified (`None`), which happens only for parsed text: an unknown
colour draws in neutral grey (no hue), an unknown shape as a soft blob (no edges to match an
orientation), an unknown size at a medium radius between small and large. A partial description
therefore draws partial content and earns partial similarity.

Splits: the split of a scene is fixed by a hash of its canonical description (1 in 8 descriptions
are held out), so train and held-out never share a scene, for any seeds. Six colours are kept (the
reward gives credit per attribute, so fewer colours buy little learnability); the 84 px default
equals 3x3 Qwen-VL merged tokens of 28 px, one token per grid cell.

Non-goals: occlusion-free layouts beyond one object per cell, rotations, textures, counting.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle")
# Hues spread around the circle (orange and yellow are the closest pair, ~25 degrees apart).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "orange": (250, 130, 0),
    "yellow": (235, 220, 0),
    "green": (30, 170, 50),
    "blue": (30, 90, 230),
    "purple": (150, 50, 200),
}
UNSPECIFIED_COLOR = (110, 110, 110)  # grey: contributes ink but no hue
SIZES = ("small", "large")
# Radius as a fraction of the canvas side; "medium" is what an unspecified size draws.
RADIUS = {"small": 0.085, "medium": 0.11, "large": 0.135}
# (row, col) -> words; row 0 = top, col 0 = left.
POSITIONS: dict[tuple[int, int], str] = {
    (0, 0): "top left",
    (0, 1): "top",
    (0, 2): "top right",
    (1, 0): "left",
    (1, 1): "center",
    (1, 2): "right",
    (2, 0): "bottom left",
    (2, 1): "bottom",
    (2, 2): "bottom right",
}
JITTER = 0.025  # max offset of an object from its cell centre, fraction of the canvas per axis
SUPERSAMPLE = 4  # draw at 4x and box-downsample: cheap anti-aliasing that keeps hues exact
HELDOUT_BUCKETS = 8  # 1 in HELDOUT_BUCKETS canonical descriptions belongs to the held-out split
DEFAULT_SIZE = 84


@dataclass(frozen=True)
class SceneObject:
    """One shape. `None` attributes are unspecified (parsed text only); see the module docstring."""

    shape: str | None = None
    color: str | None = None
    size: str | None = None
    row: int = 1
    col: int = 1
    dx: float = 0.0  # jitter, fraction of the canvas
    dy: float = 0.0

    @property
    def position(self) -> str:
        return POSITIONS[(self.row, self.col)]


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (what dataset samples carry under "scene")."""
        return {"objects": [dataclasses.asdict(o) for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        return cls(tuple(SceneObject(**o) for o in d["objects"]))


def random_scene(rng: np.random.Generator, max_objects: int = 2) -> Scene:
    """1..max_objects objects in distinct cells, each attribute uniform, jitter uniform in +-JITTER."""
    n = int(rng.integers(1, max_objects + 1))
    cells = rng.choice(9, size=n, replace=False)
    objs = []
    for cell in sorted(int(c) for c in cells):  # reading order, so `objects` is canonical
        objs.append(
            SceneObject(
                shape=SHAPES[int(rng.integers(len(SHAPES)))],
                color=list(COLORS)[int(rng.integers(len(COLORS)))],
                size=SIZES[int(rng.integers(len(SIZES)))],
                row=cell // 3,
                col=cell % 3,
                dx=float(rng.uniform(-JITTER, JITTER)),
                dy=float(rng.uniform(-JITTER, JITTER)),
            )
        )
    return Scene(tuple(objs))


def _phrase(obj: SceneObject) -> str:
    words = [w for w in (obj.size, obj.color, obj.shape or "shape") if w]
    where = obj.position
    prep = "on the" if where in ("left", "right") else "at the"
    return f"a {' '.join(words)} {prep} {where}"


def describe(scene: Scene) -> str:
    """Canonical description: objects in reading order joined by "and"; jitter is not described."""
    objs = sorted(scene.objects, key=lambda o: (o.row, o.col))
    return " and ".join(_phrase(o) for o in objs)


def _object_mask(obj: SceneObject, size: int) -> Image.Image:
    """Coverage mask ("L", size x size) of one object, anti-aliased by supersampling."""
    big = size * SUPERSAMPLE
    r = RADIUS[obj.size or "medium"] * big
    cx = ((obj.col + 0.5) / 3 + obj.dx) * big
    cy = ((obj.row + 0.5) / 3 + obj.dy) * big
    mask = Image.new("L", (big, big), 0)
    d = ImageDraw.Draw(mask)
    if obj.shape == "square":
        h = 0.85 * r  # a little smaller than the circle's box, so areas are closer
        d.rectangle((cx - h, cy - h, cx + h, cy + h), fill=255)
    elif obj.shape == "triangle":  # upright isosceles, base 2r, height 2r, centred on its box
        d.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=255)
    else:  # circle, and the disc under an unspecified shape's blur
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    mask = mask.reduce(SUPERSAMPLE)
    if obj.shape is None:
        # a soft blob: right place and colour, but no shape edges to match any shape well
        mask = mask.filter(ImageFilter.GaussianBlur(RADIUS[obj.size or "medium"] * size * 0.5))
    return mask


def draw(scene: Scene | Sequence[SceneObject], size: int = DEFAULT_SIZE) -> Image.Image:
    """RGB image (size x size) of the objects on white, later objects on top."""
    objects = scene.objects if isinstance(scene, Scene) else scene
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    for obj in objects:
        color = COLORS[obj.color] if obj.color else UNSPECIFIED_COLOR
        canvas.paste(color, (0, 0, size, size), _object_mask(obj, size))
    return canvas


def scene_split(scene: Scene) -> str:
    """ "heldout" for 1 in HELDOUT_BUCKETS canonical descriptions, else "train" (stable across runs)."""
    bucket = zlib.crc32(describe(scene).encode()) % HELDOUT_BUCKETS
    return "heldout" if bucket == 0 else "train"


class SceneDataset(Sequence):
    """`n` scenes of one split, deterministic for (n, seed, split); images are drawn on access.

    Sample: {"id", "images": [PIL RGB], "description": canonical text, "scene": Scene.to_dict()}.
    Scenes are drawn from `seed` and kept only if their description hashes to `split`, so the
    splits are disjoint whatever the seeds; the same seed gives unrelated scenes in the two splits.
    """

    def __init__(
        self, n: int, seed: int = 0, size: int = DEFAULT_SIZE, split: str = "train", max_objects: int = 2
    ) -> None:
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
        self.size, self.split, self.seed = size, split, seed
        # the split name enters the seed so that seed 0 of each split starts from different scenes
        rng = np.random.default_rng([seed, 0 if split == "train" else 1])
        self.scenes: list[Scene] = []
        while len(self.scenes) < n:
            scene = random_scene(rng, max_objects)
            if scene_split(scene) == split:
                self.scenes.append(scene)

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]  # type: ignore[return-value]
        scene = self.scenes[i]
        return {
            "id": f"scenes-{self.split}-{self.seed}-{i}",
            "images": [draw(scene, self.size)],
            "description": describe(scene),
            "scene": scene.to_dict(),
        }


def build(kwargs: dict[str, Any], split: str, seed: int) -> SceneDataset:
    """Registry entry (`data.name: scenes`): kwargs n (default 2000 train / 200 held-out), size,
    max_objects. Any split other than "train" ("eval", "test", "heldout") gives the held-out scenes."""
    heldout = split != "train"
    n = int(kwargs.get(f"n_{split}", kwargs.get("n", 200 if heldout else 2000)))
    return SceneDataset(
        n,
        seed=seed,
        size=int(kwargs.get("size", DEFAULT_SIZE)),
        split="heldout" if heldout else "train",
        max_objects=int(kwargs.get("max_objects", 2)),
    )
