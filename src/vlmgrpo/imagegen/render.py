"""The offline "text-to-image model" of the embedded demo: parse a description, draw it.

`parse_description` is keyword based and never fails: the text is split into chunks on "and",
"with", commas, periods and the like; in each chunk the first colour, shape, size and position
words are taken (synonyms and plurals accepted, case and punctuation ignored). A chunk with a
colour or a shape starts a new object; a chunk with only a size or a position ("..., located at
the top left") completes the previous object, or the next one when the previous already has it.
Missing attributes stay `None` and draw neutrally (grey, soft blob, medium size; centre cell), so a
partial description draws partial content. At most `MAX_OBJECTS` objects; text with no colour or
shape word draws a blank canvas.

`render` draws with `vlmgrpo.data.scenes.draw`, the code that drew the dataset, so a scene's own
description redraws it exactly except for the jitter. `RenderGenerator` wraps it behind the
interface every generator shares (FLUX via diffusers, Replicate): `generate(prompts, seeds)` ->
list of PIL images, and a `size` attribute.
"""

from __future__ import annotations

import re
from dataclasses import replace

from PIL import Image

from vlmgrpo.data.scenes import COLORS, DEFAULT_SIZE, SceneObject, draw

MAX_OBJECTS = 3

COLOR_WORDS = {c: c for c in COLORS} | {"violet": "purple", "magenta": "purple", "lilac": "purple"}
SHAPE_WORDS = {
    **dict.fromkeys(
        ("circle", "circles", "disc", "disk", "discs", "disks", "dot", "dots", "round"), "circle"
    ),
    **dict.fromkeys(("ball", "balls", "oval", "ovals", "ring", "rings", "ellipse"), "circle"),
    **dict.fromkeys(("square", "squares", "box", "boxes", "rectangle", "rectangles", "block"), "square"),
    **dict.fromkeys(("blocks", "cube", "cubes"), "square"),
    **dict.fromkeys(("triangle", "triangles", "triangular", "pyramid", "cone", "wedge"), "triangle"),
}
SIZE_WORDS = {
    **dict.fromkeys(("small", "smaller", "smallest", "little", "tiny", "mini"), "small"),
    **dict.fromkeys(("large", "larger", "largest", "big", "bigger", "biggest", "huge", "giant"), "large"),
    **dict.fromkeys(("medium", "mid", "moderate"), "medium"),
}
ROW_WORDS = {"top": 0, "upper": 0, "bottom": 2, "lower": 2}
COL_WORDS = {"left": 0, "right": 2}
CENTER_WORDS = {"center", "centre", "middle", "central", "centered", "centred"}

_SPLIT = re.compile(r"[,.;:!?\n&+]|\b(?:and|with|plus|also|then|while|but)\b")
_WORD = re.compile(r"[a-z]+")


def _chunk_attrs(words: list[str]) -> dict:
    """First colour / shape / size word and any position words of one chunk."""
    attrs: dict = {}
    for w in words:
        if w in COLOR_WORDS:
            attrs.setdefault("color", COLOR_WORDS[w])
        elif w in SHAPE_WORDS:
            attrs.setdefault("shape", SHAPE_WORDS[w])
        elif w in SIZE_WORDS:
            attrs.setdefault("size", SIZE_WORDS[w])
        elif w in ROW_WORDS:
            attrs.setdefault("row", ROW_WORDS[w])
        elif w in COL_WORDS:
            attrs.setdefault("col", COL_WORDS[w])
        elif w in CENTER_WORDS:
            attrs.setdefault("center", True)
    if {"row", "col", "center"} & attrs.keys():  # "top" = top middle; "center" alone = (1, 1)
        attrs["row"], attrs["col"] = attrs.get("row", 1), attrs.get("col", 1)
        attrs["pos"] = True
    attrs.pop("center", None)
    return attrs


def parse_description(text: str) -> list[SceneObject]:
    """Objects named in `text` (see the module docstring), jitter 0, unspecified attributes `None`."""
    objects: list[SceneObject] = []
    has_pos: list[bool] = []  # whether objects[i] got an explicit position
    pending: dict = {}  # size / position seen before any object that could take it
    text = str(text).lower().replace("-", " ").replace("_", " ")
    for chunk in _SPLIT.split(text):
        attrs = _chunk_attrs(_WORD.findall(chunk or ""))
        if "color" in attrs or "shape" in attrs:
            if len(objects) >= MAX_OBJECTS:
                break
            fields = {**pending, **attrs}
            pending = {}
            objects.append(
                SceneObject(
                    shape=fields.get("shape"),
                    color=fields.get("color"),
                    size=fields.get("size"),
                    row=fields.get("row", 1),
                    col=fields.get("col", 1),
                )
            )
            has_pos.append(bool(fields.get("pos")))
            continue
        # a chunk of modifiers only: complete the previous object, else keep for the next one
        if "size" in attrs:
            if objects and objects[-1].size is None:
                objects[-1] = replace(objects[-1], size=attrs["size"])
            else:
                pending["size"] = attrs["size"]
        if attrs.get("pos"):
            if objects and not has_pos[-1]:
                objects[-1] = replace(objects[-1], row=attrs["row"], col=attrs["col"])
                has_pos[-1] = True
            else:
                pending.update(row=attrs["row"], col=attrs["col"], pos=True)
    return objects


def render(text: str, size: int = DEFAULT_SIZE) -> Image.Image:
    """Draw the objects `text` names (blank white canvas if none) with the dataset's drawing code."""
    return draw(parse_description(text), size)


class RenderGenerator:
    """Offline generator: a batch of prompts in, one PIL RGB image (size x size) per prompt out.

    Deterministic: `seeds` is accepted for interface parity with the diffusion generators and
    ignored (the renderer has no randomness to seed).
    """

    name = "render"

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.size = int(size)

    def generate(self, prompts: list[str], seeds: list[int] | None = None) -> list[Image.Image]:
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        return [render(p, self.size) for p in prompts]
