"""The cycle demo's tiny model: the hand-set shape filters tell the scenes' shapes apart (docs/demo.md)."""

from __future__ import annotations

import pytest
import torch

from vlmgrpo.commands.demo import SHAPE_FILTERS_MODEL, build_demo_model
from vlmgrpo.data.scenes import Scene, SceneObject, draw


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = build_demo_model(tmp_path_factory.mktemp("demo") / "model", SHAPE_FILTERS_MODEL)
    return AutoModelForImageTextToText.from_pretrained(str(path)).eval(), AutoProcessor.from_pretrained(
        str(path)
    )


def _centre_patches(model, proc, shape: str, color: str, size: str, dx: float = 0.0) -> torch.Tensor:
    """Patch embeddings [4, D] of the centre cell's merged token (patches TL, TR, BL, BR) of a
    one-object scene drawn at the demo's 84 px."""
    image = draw(Scene((SceneObject(shape, color, size, 1, 1, dx, -dx),)), 84)
    enc = proc.image_processor(images=[image], return_tensors="pt")
    assert enc["image_grid_thw"].tolist() == [[1, 6, 6]]  # 96 px: 3x3 merged tokens of 2x2 patches
    with torch.no_grad():
        emb = model.model.visual.patch_embed(enc["pixel_values"])  # [36, D], merge windows in order
    return emb[4 * 4 : 5 * 4]


@pytest.mark.parametrize("color", ["red", "yellow", "blue"])
@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("dx", [0.0, 0.02])
def test_shape_filters_tell_circle_square_and_triangle_apart(demo_model, color, size, dx):
    model, proc = demo_model
    start = SHAPE_FILTERS_MODEL["colour_filters"]
    # patch k of the merged token (TL, TR, BL, BR) holds the object's centre at its corner 3 - k
    sq = [start + 2 * (3 - k) for k in range(4)]
    tri = [start + 2 * (3 - k) + 1 for k in range(4)]
    score = {}
    for shape in ("circle", "square", "triangle"):
        e = _centre_patches(model, proc, shape, color, size, dx)
        score[shape] = (e[range(4), sq].sum().item(), e[range(4), tri].sum().item())
    # the triangle-vs-circle channels answer most to the triangle, and the square-vs-circle ones
    # more to the square than to the circle (a triangle's wide base also fills a quadrant's far
    # corner), whatever the colour (ink lowers different channels), size and jitter: two linear
    # reads of the merged token tell the three shapes apart
    assert max(score, key=lambda s: score[s][1]) == "triangle", score
    assert score["square"][0] > score["circle"][0] + 0.5, score


def test_scene_shapes_target_names_colour_and_shape():
    from vlmgrpo.data.scenes import SceneDataset
    from vlmgrpo.warmup import target_text

    sample = SceneDataset(1, seed=0, max_objects=1)[0]
    o = sample["scene"]["objects"][0]
    assert target_text(sample, "scene_shapes") == f"a {o['color']} {o['shape']}"
