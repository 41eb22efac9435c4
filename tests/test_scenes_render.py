"""The embedded cycle demo's offline pieces: scenes, the keyword renderer, the pixel similarity."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from vlmgrpo.data.scenes import (
    COLORS,
    SHAPES,
    SIZES,
    Scene,
    SceneDataset,
    SceneObject,
    build,
    describe,
    draw,
    random_scene,
    scene_split,
)
from vlmgrpo.embed.pixel import PixelEmbedder, gaussian_matrix, scharr
from vlmgrpo.imagegen.render import MAX_OBJECTS, RenderGenerator, parse_description, render


@pytest.fixture(scope="module")
def emb() -> PixelEmbedder:
    return PixelEmbedder()


@pytest.fixture(scope="module")
def heldout() -> SceneDataset:
    return SceneDataset(60, seed=11, split="heldout")


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


# -- scenes --------------------------------------------------------------------------------------
def test_scenes_are_deterministic_per_seed():
    a, b, c = SceneDataset(20, seed=5), SceneDataset(20, seed=5), SceneDataset(20, seed=6)
    assert [s["description"] for s in a] == [s["description"] for s in b]
    assert all((_pixels(x["images"][0]) == _pixels(y["images"][0])).all() for x, y in zip(a, b))
    assert [s["description"] for s in a] != [s["description"] for s in c]
    assert len({s["id"] for s in a}) == 20


def test_train_and_heldout_share_no_scene():
    for train_seed, eval_seed in [(0, 0), (1, 2), (3, 0)]:
        train = {s["description"] for s in SceneDataset(500, seed=train_seed, split="train")}
        held = {s["description"] for s in SceneDataset(100, seed=eval_seed, split="heldout")}
        assert not train & held
    ds = SceneDataset(50, seed=0, split="heldout")
    assert all(scene_split(s) == "heldout" for s in ds.scenes)
    # the registry builder maps every non-train split to the held-out scenes
    assert build({"n": 10}, "eval", seed=0).split == "heldout"
    assert len(build({"n_train": 7}, "train", seed=0)) == 7


def test_sample_fields_and_scene_round_trip():
    s = SceneDataset(3, seed=1, size=64)[2]
    assert set(s) == {"id", "images", "description", "scene"}
    img = s["images"][0]
    assert img.mode == "RGB" and img.size == (64, 64)
    scene = Scene.from_dict(s["scene"])
    assert describe(scene) == s["description"]
    assert (_pixels(draw(scene, 64)) == _pixels(img)).all()


def test_random_scene_attributes_and_description():
    rng = np.random.default_rng(0)
    for _ in range(200):
        scene = random_scene(rng)
        assert 1 <= len(scene.objects) <= 2
        assert len({(o.row, o.col) for o in scene.objects}) == len(scene.objects)
        for o in scene.objects:
            assert o.shape in SHAPES and o.color in COLORS and o.size in SIZES
            assert f"{o.size} {o.color} {o.shape}" in describe(scene)
    one = Scene((SceneObject("circle", "red", "large", 0, 0), SceneObject("square", "blue", "small", 1, 1)))
    assert describe(one) == "a large red circle at the top left and a small blue square at the center"
    assert describe(Scene((SceneObject("triangle", "green", "small", 1, 2),))) == (
        "a small green triangle on the right"
    )


# -- parsing and rendering -----------------------------------------------------------------------
def test_parse_inverts_describe():
    ds = SceneDataset(100, seed=2)
    for scene in ds.scenes:
        parsed = parse_description(describe(scene))
        assert parsed == [replace(o, dx=0.0, dy=0.0) for o in scene.objects]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A LARGE RED CIRCLE AT THE TOP LEFT!!!", [("circle", "red", "large", 0, 0)]),
        (
            "The image shows a big, blue square in the upper-right corner.",
            [("square", "blue", "large", 0, 2)],
        ),
        ("There is a tiny yellow triangle located at the bottom.", [("triangle", "yellow", "small", 2, 1)]),
        ("a red circle, located at the top left", [("circle", "red", None, 0, 0)]),
        ("top left: a green square", [("square", "green", None, 0, 0)]),
        ("red", [(None, "red", None, 1, 1)]),
        ("a circle on the left", [("circle", None, None, 1, 0)]),
        ("two violet discs in the middle", [("circle", "purple", None, 1, 1)]),
        (
            "a small red circle at the top left and a large blue square at the bottom right",
            [("circle", "red", "small", 0, 0), ("square", "blue", "large", 2, 2)],
        ),
        (
            "red circle; green triangle. blue square",
            [
                ("circle", "red", None, 1, 1),
                ("triangle", "green", None, 1, 1),
                ("square", "blue", None, 1, 1),
            ],
        ),
        ("", []),
        ("lorem ipsum dolor sit amet", []),
        ("at the top left and large", []),
        ("<|im_end|> ### \n\n 12345 !!!", []),
    ],
)
def test_parse_phrasings(text, expected):
    got = [(o.shape, o.color, o.size, o.row, o.col) for o in parse_description(text)]
    assert got == expected


def test_parse_caps_objects_and_never_raises():
    text = " and ".join(f"a {c} circle" for c in COLORS)
    assert len(parse_description(text)) == MAX_OBJECTS
    for junk in [None, 123, "\x00\xff", "and and and ,,, ...", "red" * 1000]:
        parse_description(junk)  # type: ignore[arg-type]


def test_render_draws_like_the_dataset():
    scene = Scene((SceneObject("triangle", "orange", "large", 2, 0),))  # no jitter
    assert (_pixels(render(describe(scene))) == _pixels(draw(scene))).all()
    blank = _pixels(render("nothing to see here"))
    assert (blank == 255).all()
    partial = _pixels(render("something purple"))
    assert (partial != 255).any()


def test_render_generator_interface():
    gen = RenderGenerator(size=48)
    imgs = gen.generate(["a red circle", "garbage"], seeds=[0, 1])
    assert gen.size == 48 and len(imgs) == 2
    assert all(im.size == (48, 48) and im.mode == "RGB" for im in imgs)
    assert (_pixels(gen.generate(["a red circle"])[0]) == _pixels(imgs[0])).all()
    with pytest.raises(ValueError):
        gen.generate(["a", "b"], seeds=[0])


# -- similarity ----------------------------------------------------------------------------------
def test_embed_is_normalised_and_similarity_is_its_dot(emb, heldout):
    imgs = [s["images"][0] for s in heldout][:10] + [render("")]
    f = emb.embed(imgs)
    assert f.dtype == np.float32 and f.ndim == 2
    np.testing.assert_allclose(np.linalg.norm(f[:-1], axis=1), 1.0, atol=1e-5)
    assert not f[-1].any()  # a blank canvas has no features
    others = imgs[1:] + imgs[:1]
    np.testing.assert_allclose(
        emb.similarity(imgs, others), np.clip((f * emb.embed(others)).sum(1), 0, 1), atol=1e-5
    )


def test_identical_blank_and_resolution(emb, heldout):
    imgs = [s["images"][0] for s in heldout][:20]
    np.testing.assert_allclose(emb.similarity(imgs, imgs), 1.0, atol=1e-5)
    blank = [render("")] * len(imgs)
    assert emb.similarity(imgs, blank).max() == 0.0
    # a bigger rendering of the same scene is resized first and still matches
    big = [draw(scene, 168) for scene in heldout.scenes[:20]]
    assert emb.similarity(imgs, big).min() > 0.95


def _other(options, x, rng):
    return [o for o in options if o != x][int(rng.integers(len(options) - 1))]


def _variant(scene: Scene, rng, color=True, shape=True, size=True, pos=True) -> str:
    """Description of `scene` with the attributes flagged False changed to wrong values."""
    objs, taken = [], set()
    for o in scene.objects:
        row, col = o.row, o.col
        if not pos:
            cells = [
                (r, c) for r in range(3) for c in range(3) if (r, c) != (o.row, o.col) and (r, c) not in taken
            ]
            row, col = cells[int(rng.integers(len(cells)))]
        taken.add((row, col))
        objs.append(
            SceneObject(
                shape=o.shape if shape else _other(SHAPES, o.shape, rng),
                color=o.color if color else _other(list(COLORS), o.color, rng),
                size=o.size if size else _other(SIZES, o.size, rng),
                row=row,
                col=col,
            )
        )
    return describe(Scene(tuple(objs)))


def test_similarity_is_graded(emb, heldout):
    rng = np.random.default_rng(0)
    truth = [s["images"][0] for s in heldout]
    n = len(truth)
    levels = {
        "true": [describe(s) for s in heldout.scenes],
        "wrong_position": [_variant(s, rng, pos=False) for s in heldout.scenes],
        "color_only": [_variant(s, rng, shape=False, size=False, pos=False) for s in heldout.scenes],
        "wrong_all": [_variant(s, rng, False, False, False, False) for s in heldout.scenes],
        "shuffled": [describe(heldout.scenes[(i + 7) % n]) for i in range(n)],
        "blank": [""] * n,
    }
    sim = {k: emb.similarity([render(t) for t in texts], truth).mean() for k, texts in levels.items()}
    assert sim["true"] > 0.8
    assert sim["true"] > sim["wrong_position"] > sim["color_only"] > sim["wrong_all"] >= sim["blank"] == 0.0
    assert sim["true"] - sim["shuffled"] > 0.5
    # each single attribute counts: one wrong attribute scores below the truth on average
    for flag in ("color", "shape", "size", "pos"):
        wrong = [_variant(s, rng, **{flag: False}) for s in heldout.scenes]
        assert emb.similarity([render(t) for t in wrong], truth).mean() < sim["true"] - 0.1, flag


def test_ceiling_over_fifty_scenes(emb):
    ds = SceneDataset(50, seed=3, split="heldout")
    sims = emb.similarity([render(s["description"]) for s in ds], [s["images"][0] for s in ds])
    assert sims.mean() > 0.8 and sims.min() > 0.7


def test_similarity_rejects_unpaired_input(emb):
    with pytest.raises(ValueError):
        emb.similarity([render("red")], [])
    assert emb.similarity([], []).shape == (0,)


# -- the numpy filters match the maintained libraries -------------------------------------------
def test_scharr_matches_opencv():
    cv2 = pytest.importorskip("cv2")
    x = np.random.default_rng(0).random((32, 40)).astype(np.float32)
    gx, gy = scharr(x)
    ref_x = cv2.Scharr(x, cv2.CV_32F, 1, 0, borderType=cv2.BORDER_CONSTANT) / 32.0
    ref_y = cv2.Scharr(x, cv2.CV_32F, 0, 1, borderType=cv2.BORDER_CONSTANT) / 32.0
    np.testing.assert_allclose(gx, ref_x, atol=1e-5)
    np.testing.assert_allclose(gy, ref_y, atol=1e-5)


def test_gaussian_matrix_matches_scikit_image():
    filters = pytest.importorskip("skimage.filters")
    x = np.random.default_rng(0).random((40, 40))
    b = gaussian_matrix(40, 40, 2.5).astype(np.float64)
    ref = filters.gaussian(x, sigma=2.5, mode="constant", cval=0.0, truncate=8.0, preserve_range=True)
    np.testing.assert_allclose(b @ x @ b.T, ref, atol=1e-4)
