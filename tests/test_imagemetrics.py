"""Image similarity metrics: identity, agreement with scikit-image, RGBA = RGB, the seed's fixes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vlmgrpo import imagemetrics as im
from vlmgrpo.errors import ConfigError

PIXEL = ("ssim", "mse", "cosine", "histogram", "edge", "combined")


def _figure(transparent: bool = False) -> Image.Image:
    """A matplotlib figure rendered in-process to an RGBA image (as savefig writes PNGs)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3, 2), dpi=80)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.bar(["a", "b", "c"], [3, 1, 2], color="tab:orange")
    ax.plot([0, 1, 2], [1, 3, 2], color="tab:blue")
    if transparent:
        fig.patch.set_alpha(0.0)
        ax.patch.set_alpha(0.0)
    fig.canvas.draw()
    return Image.fromarray(np.asarray(fig.canvas.buffer_rgba()).copy(), "RGBA")


def _random_image(seed: int, size: tuple[int, int] = (96, 80)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize("make", [lambda: _figure(), lambda: _random_image(0)], ids=["figure", "noise"])
def test_identical_images_score_one_on_every_metric(make):
    img = make()
    scores = im.compare(img, img.copy(), PIXEL)
    assert scores == pytest.approx(dict.fromkeys(PIXEL, 1.0), abs=1e-12)


def test_ssim_agrees_with_scikit_image_on_random_images():
    from skimage.metrics import structural_similarity

    for seed in range(3):
        a, b = _random_image(seed, (224, 224)), _random_image(seed + 10, (224, 224))
        b = Image.blend(a, b, 0.3)  # correlated, so SSIM is far from 0
        ref = structural_similarity(np.asarray(a), np.asarray(b), channel_axis=2, data_range=255)
        assert im.compare(a, b, ["ssim"])["ssim"] == pytest.approx(ref, abs=1e-12)
        assert 0.2 < ref < 0.99


def test_images_are_resized_to_a_common_size_first():
    a = _figure()
    b = a.resize((a.width * 2, a.height * 2), Image.Resampling.BILINEAR)
    scores = im.compare(a, b, PIXEL)
    assert all(s > 0.8 for s in scores.values()), scores
    assert im.to_rgb(b).shape == (224, 224, 3)


@pytest.mark.parametrize("transparent", [False, True], ids=["opaque", "transparent"])
def test_rgba_figure_and_its_rgb_version_score_the_same(transparent):
    rgba = _figure(transparent)
    white = Image.new("RGB", rgba.size, (255, 255, 255))
    white.paste(rgba, mask=rgba.getchannel("A"))  # what a viewer shows: alpha over white
    other = _random_image(5, rgba.size)
    assert im.compare(rgba, other, PIXEL) == im.compare(white, other, PIXEL)
    assert im.compare(rgba, white, PIXEL) == pytest.approx(dict.fromkeys(PIXEL, 1.0), abs=1e-12)


def test_histogram_correlation_matches_pearson_on_the_histograms():
    import cv2

    for seed in range(3):
        a, b = (im.to_rgb(_random_image(s, (120, 90))) for s in (seed, seed + 7))
        b = (0.6 * a + 0.4 * b).astype(np.uint8)
        ha, hb = (cv2.calcHist([x], [0, 1, 2], None, [8] * 3, [0, 256] * 3).ravel() for x in (a, b))
        assert im.histogram(a, b) == pytest.approx(np.corrcoef(ha, hb)[0, 1], abs=1e-12)
        assert im.histogram(a, a) == pytest.approx(1.0, abs=1e-12)  # OpenCV 5.0.0's compareHist says -1


def test_mse_is_taken_on_floats_not_wrapping_uint8():
    a = np.full((32, 32, 3), 10, dtype=np.uint8)
    b = np.full((32, 32, 3), 250, dtype=np.uint8)
    expected = 1.0 / (1.0 + 240.0**2 / 10000.0)  # uint8 arithmetic would give (10 - 250) % 256 = 16
    assert im.mse_score(a, b) == pytest.approx(expected)
    assert im.mse_score(b, a) == pytest.approx(expected)


def test_degenerate_images_have_defined_scores():
    black = np.zeros((64, 64, 3), dtype=np.uint8)
    white = np.full((64, 64, 3), 255, dtype=np.uint8)
    assert im.cosine(black, black) == 1.0 and im.cosine(black, white) == 0.0
    assert im.edge_iou(white, white) == 1.0  # no edges on either side
    assert im.histogram(white, white) == pytest.approx(1.0)


def test_similarity_combines_selected_metrics_with_normalised_weights():
    a, b = _figure(), _random_image(3, (240, 160))
    rows = im.similarity([a, a], [b, a], {"ssim": 2.0, "edge": 2.0})
    single = im.compare(a, b, ["ssim", "edge"])
    assert rows[0]["similarity"] == pytest.approx((single["ssim"] + single["edge"]) / 2)
    assert rows[1]["similarity"] == pytest.approx(1.0)
    seed = im.similarity([a], [b])[0]  # default: the seed's weighted combination
    assert seed["similarity"] == pytest.approx(im.compare(a, b, ["combined"])["combined"])


def test_unknown_or_invalid_metric_weights_are_config_errors():
    with pytest.raises(ConfigError, match="unknown image metric"):
        im.check_weights({"psnr": 1.0})
    with pytest.raises(ConfigError, match=">= 0"):
        im.check_weights({"ssim": -1.0})
    with pytest.raises(ConfigError, match="positive weight"):
        im.check_weights({"ssim": 0.0})


def test_dinov2_metric_uses_the_embedder_when_selected(tmp_path_factory):
    import tiny_builders  # the session's tiny DINOv2, shared with other tests

    model_dir = tiny_builders.tiny_model_dir("dinov2", tmp_path_factory)
    a, b = _figure(), _random_image(1, (240, 160))
    kwargs = {"model": str(model_dir), "device": "cpu"}
    rows = im.similarity([a, a], [a.copy(), b], {"dinov2": 1.0}, dinov2_kwargs=kwargs)
    assert rows[0]["dinov2"] == pytest.approx(1.0, abs=1e-5)  # (cos + 1) / 2 of identical images
    assert 0.0 <= rows[1]["dinov2"] < rows[0]["dinov2"]
    assert set(rows[0]) == {"dinov2", "similarity"}
