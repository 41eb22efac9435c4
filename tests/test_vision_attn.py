"""The batched vision attention (models/vision_attn.py) equals transformers' per-segment loop."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlmgrpo.config import ModelConfig
from vlmgrpo.models import load_policy
from vlmgrpo.models.vision_attn import NAME, segment_sdpa, vision_config_of


def test_segment_sdpa_matches_one_call_per_segment():
    torch.manual_seed(0)
    lens = [5, 3, 5, 0, 7, 3, 5]
    cu = torch.tensor(np.concatenate([[0], np.cumsum(lens)]))
    q, k, v = (torch.randn(1, 4, sum(lens), 8) for _ in range(3))
    out, _ = segment_sdpa(None, q, k, v, scaling=0.3, cu_seq_lens_q=cu)
    assert out.shape == (1, sum(lens), 4, 8)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        if b > a:
            ref = F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], scale=0.3)
            torch.testing.assert_close(out[0, a:b], ref[0].transpose(0, 1))


def _images():
    rng = np.random.default_rng(0)
    sizes = [(224, 224), (112, 168), (224, 224), (56, 56)]  # equal and unequal segment lengths
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


@pytest.mark.parametrize("fixture", ["tiny_vlm_dir", "tiny_qwen3_vl_dir"])
def test_batched_vision_attention_equals_hf_forward_and_grad(fixture, request):
    folder = str(request.getfixturevalue(fixture))
    outs = {}
    for mode in ("hf", "batched"):
        torch.manual_seed(0)
        model, proc = load_policy(ModelConfig(name_or_path=folder, vision_attention=mode))
        impl = vision_config_of(model)._attn_implementation
        assert (impl == NAME) == (mode == "batched")
        enc = proc.image_processor(images=_images(), return_tensors="pt")
        feats = model.model.visual(enc["pixel_values"], grid_thw=enc["image_grid_thw"])
        feats = getattr(feats, "pooler_output", feats)
        feats.float().square().sum().backward()
        grads = {
            n: p.grad.clone() for n, p in model.named_parameters() if "visual" in n and p.grad is not None
        }
        outs[mode] = (feats.detach(), grads)
    torch.testing.assert_close(outs["batched"][0], outs["hf"][0])
    assert outs["hf"][1].keys() == outs["batched"][1].keys() and outs["hf"][1]
    for n, g in outs["hf"][1].items():
        torch.testing.assert_close(outs["batched"][1][n], g, msg=n)
