"""Image embedders from transformers checkpoints (tiny DINOv2 and CLIP built offline), their
cache, and the cycle reward's mapping of their cosine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_builders import chart_image, tiny_model_dir

from vlmgrpo.embed import get_embedder
from vlmgrpo.embed.hf import HFImageEmbedder, image_key
from vlmgrpo.errors import ModelLoadError


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    return tiny_model_dir("dinov2", tmp_path_factory)


@pytest.fixture(scope="module")
def dino(dino_dir):
    return HFImageEmbedder(model=str(dino_dir), device="cpu", batch_size=2)


def _images(n: int) -> list[Image.Image]:
    return [chart_image(i, (80 + 7 * i, 60)) for i in range(n)]


def test_dinov2_self_similarity_is_one(dino):
    imgs = _images(3)
    sim = dino.similarity(imgs, imgs)
    np.testing.assert_allclose(sim, 1.0, atol=1e-5)
    other = dino.similarity(imgs, imgs[1:] + imgs[:1])
    assert (other < 1 - 1e-4).all()
    assert sim.dtype == np.float64 and sim.shape == (3,)


def test_dinov2_cls_feature_is_the_normalised_cls_token(dino, dino_dir):
    from transformers import AutoImageProcessor, AutoModel

    imgs = _images(3)
    feats = dino.embed(imgs)
    assert feats.shape == (3, 32) and feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    model, proc = AutoModel.from_pretrained(dino_dir).eval(), AutoImageProcessor.from_pretrained(dino_dir)
    with torch.no_grad():
        out = model(**proc(images=imgs, return_tensors="pt"))
    cls = torch.nn.functional.normalize(out.last_hidden_state[:, 0], dim=-1).numpy()
    np.testing.assert_allclose(feats, cls, atol=1e-5)
    pooled = torch.nn.functional.normalize(out.pooler_output, dim=-1).numpy()
    np.testing.assert_allclose(feats, pooled, atol=1e-5)  # DINOv2: CLS = pooler_output


def test_mean_pooling_and_batching(dino_dir):
    imgs = _images(5)
    mean = HFImageEmbedder(model=str(dino_dir), pooling="mean", batch_size=5, device="cpu")
    assert not np.allclose(mean.embed(imgs), HFImageEmbedder(model=str(dino_dir), device="cpu").embed(imgs))
    one_batch = mean.embed(imgs)
    batched = HFImageEmbedder(model=str(dino_dir), pooling="mean", batch_size=2, device="cpu").embed(imgs)
    np.testing.assert_allclose(one_batch, batched, atol=1e-5)


def test_originals_are_embedded_once(dino_dir):
    emb = HFImageEmbedder(model=str(dino_dir), device="cpu", batch_size=8)
    calls: list[int] = []
    real = emb._features
    emb._features = lambda ims: calls.append(len(ims)) or real(ims)
    originals = _images(2)
    regenerated = _images(4)[2:]
    first = emb.similarity(originals, regenerated)
    assert calls == [2, 2]
    # the same originals again (new objects, equal pixels): only the regenerated images are embedded
    again = emb.similarity([im.copy() for im in originals], regenerated)
    assert calls == [2, 2, 2] and emb.cache_hits == 2
    np.testing.assert_allclose(first, again, atol=1e-6)
    # duplicates inside one call are embedded once
    emb.embed([originals[0], originals[0].copy(), _images(6)[5]], cache=True)
    assert calls[-1] == 1
    assert image_key(originals[0]) == image_key(originals[0].copy())


def test_cache_is_bounded(dino_dir):
    emb = HFImageEmbedder(model=str(dino_dir), device="cpu", cache_size=2)
    emb.embed(_images(4), cache=True)
    assert len(emb._cache) == 2


def test_clip_image_tower(tmp_path_factory):
    clip_dir = tiny_model_dir("clip", tmp_path_factory)
    emb = get_embedder("clip", {"model": str(clip_dir), "device": "cpu"})
    assert emb.dual_encoder
    imgs = _images(2)
    feats = emb.embed(imgs)
    assert feats.shape == (2, 16)  # the projection, not the vision hidden size
    np.testing.assert_allclose(emb.similarity(imgs, imgs), 1.0, atol=1e-5)


def test_registry_gives_dinov2(dino_dir):
    emb = get_embedder("dinov2", {"model": str(dino_dir), "device": "cpu"})
    assert isinstance(emb, HFImageEmbedder) and not emb.dual_encoder
    assert emb.dtype == torch.float32  # "auto" on CPU; bfloat16 on CUDA


def test_missing_weights_folder_is_one_line(tmp_path):
    missing = tmp_path / "dinov2-large"
    with pytest.raises(ModelLoadError) as e:
        HFImageEmbedder(model=str(missing))
    msg = str(e.value)
    assert "\n" not in msg and str(missing) in msg and "hf download facebook/dinov2-large" in msg


# --------------------------------------------------------------------------- the reward's mapping


class _ColourGenerator:
    """A generator that paints the colour its prompt names (the 'description' of a flat image)."""

    def generate(self, prompts, seeds=None):
        return [Image.new("RGB", (300, 200), p) if p != "fail" else None for p in prompts]


@pytest.mark.parametrize("mapping", ["raw", "01"])
def test_cycle_reward_maps_the_dinov2_cosine(dino_dir, mapping, monkeypatch):
    from vlmgrpo.imagegen import GENERATORS
    from vlmgrpo.rewards import RewardContext, RewardRecord
    from vlmgrpo.rewards.cycle import cycle_reward

    if "colour-test" not in GENERATORS.names():
        GENERATORS.register("colour-test", _ColourGenerator)
    original = Image.new("RGB", (300, 200), "red")
    recs = [
        RewardRecord(prompt="", completion=c, images=[original], sample={"id": "x"}, index=i)
        for i, c in enumerate(["red", "blue", "fail"])
    ]
    kwargs = {"model": str(dino_dir), "device": "cpu"}
    out = cycle_reward(recs, RewardContext(), "colour-test", {}, "dinov2", kwargs, mapping, 224)
    assert out[2] is None  # a failed generation skips its sample
    emb = get_embedder("dinov2", kwargs)
    blue = float(emb.similarity([original], [Image.new("RGB", (300, 200), "blue")])[0])
    assert out[0]["raw"] == pytest.approx(1.0, abs=1e-5)  # the image itself
    assert out[1]["raw"] == pytest.approx(blue, abs=1e-5)
    expect = (lambda s: (s + 1) / 2) if mapping == "01" else (lambda s: s)
    assert out[0]["score"] == pytest.approx(expect(1.0), abs=1e-5)
    assert out[1]["score"] == pytest.approx(expect(blue), abs=1e-5)
    assert recs[0].extras["regenerated"].size == (224, 149)  # the thumbnail that was embedded
