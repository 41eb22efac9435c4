"""bench/flops.py: hand counts on tiny configs, and FlopCounterMode on tiny real models (CPU, fp32).

FlopCounterMode counts the matmuls torch actually dispatches (mm/addmm/bmm/convolution and their
backward), so it is an independent check of which tokens each component runs on. Attention runs
through the eager/"math" path here so that its matmuls are dispatched as bmm (torch registers no
FLOP formula for the CPU flash-attention kernel); that path computes the full L x L scores even for
causal attention, so the comparison uses full pairs for the decoder, and the causal count is
checked by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import flops as F  # noqa: E402

TEXT = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [1, 1, 2]},
    tie_word_embeddings=False,
)
VISION = dict(
    depth=3,
    hidden_size=16,
    intermediate_size=24,
    num_heads=2,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=56,  # 56 / 14 / 2 = 2 merged tokens per window side
    fullatt_block_indexes=[2],
    hidden_act="silu",
    in_chans=3,
    out_hidden_size=32,
    tokens_per_second=2,
)
IMAGE_PAD, V_START, V_END = 90, 91, 92


def test_hand_count_of_a_tiny_config() -> None:
    s = F.QwenVLShape.from_config(TEXT, VISION)
    # decoder: q 32x32, k and v 32x16 (2 kv heads x 8), o 32x32, SwiGLU 3 x 32x48 -> per layer per token
    per_layer = 2 * (32 * 32 + 2 * 32 * 16 + 32 * 32 + 3 * 32 * 48)
    assert F.decoder_per_token(s) == 2 * per_layer
    assert F.lm_head_per_position(s) == 2 * 32 * 96
    assert F.causal_pairs(4) == 10  # 1 + 2 + 3 + 4
    assert F.decode_pairs(3, 2) == 4 + 5  # keys: prompt 3 + itself, then 3 + 2
    # a 112 x 84 px image: 8 x 6 patches, 4 x 3 merged tokens, windows of 2 x 2 merged -> 2 x 2 windows
    # of 2x2, 2x1, 2x2, 2x1 merged tokens = 16, 8, 16, 8 patches
    grid = F.image_grid(112, 84, s)
    assert grid == (8, 6)
    assert F.window_sizes(*grid, s) == [16, 8, 16, 8]
    v = F.vision_forward(s, [grid])
    block = 2 * (16 * 48 + 16 * 16 + 3 * 16 * 24)
    embed = 2 * (3 * 2 * 14 * 14) * 16
    merger = 2 * (64 * 64 + 64 * 32) * 12
    assert v["linear"] == (embed + 3 * block) * 48 + merger
    assert v["attention"] == 2 * 4 * (16**2 + 8**2 + 16**2 + 8**2) * 16 + 1 * 4 * 48**2 * 16
    # training: rows (prompt, completion); LM head at completion positions only; x3 for trained parts
    t = F.qwen_vl_train_flops(s, [(20, 5), (20, 3)], [grid], shared_vision=True)
    assert t["fwd_lm_head"] == 2 * 32 * 96 * 8
    assert t["fwd_attention"] == 2 * 4 * (F.causal_pairs(25) + F.causal_pairs(23)) * 32
    fwd = t["fwd_vision"] + t["fwd_decoder"] + t["fwd_attention"] + t["fwd_lm_head"]
    assert t["model"] == 3 * fwd
    assert t["recompute"] == t["fwd_lm_head"] + t["fwd_vision"]
    lora = F.qwen_vl_train_flops(s, [(20, 5)], [grid], vision="frozen", decoder="frozen_through")
    assert lora["model"] == lora["fwd_vision"] + 2 * (
        lora["fwd_decoder"] + lora["fwd_attention"] + lora["fwd_lm_head"]
    )
    # the old formula credited every parameter at every token
    assert F.old_mfu_flops(1e9, 100) == 6e11


def _tiny_qwen25_vl():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    cfg = Qwen2_5_VLConfig(
        text_config=dict(TEXT, bos_token_id=0, eos_token_id=1, pad_token_id=0),
        vision_config=VISION,
        tie_word_embeddings=False,
        image_token_id=IMAGE_PAD,
        video_token_id=93,
        vision_start_token_id=V_START,
        vision_end_token_id=V_END,
    )
    cfg._attn_implementation = "eager"
    cfg.vision_config._attn_implementation = "eager"
    cfg.text_config._attn_implementation = "eager"
    torch.manual_seed(0)
    return Qwen2_5_VLForConditionalGeneration(cfg).float()


def _batch(rows: int, grid: tuple[int, int], completion: int):
    """A RolloutBatch of `rows` rows, each with its own copy of one image, no padding."""
    from vlmgrpo.rollout import RolloutBatch

    h, w = grid
    n_img = h * w // 4
    prompt = [5, 6, V_START] + [IMAGE_PAD] * n_img + [V_END, 7, 8]
    p = torch.tensor([prompt] * rows)
    c = torch.randint(10, 80, (rows, completion), generator=torch.Generator().manual_seed(1))
    pix = torch.randn(h * w, 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(2))
    vision = [{"pixel_values": pix, "image_grid_thw": torch.tensor([[1, h, w]])} for _ in range(rows)]
    return RolloutBatch(
        prompt_ids=p,
        prompt_mask=torch.ones_like(p),
        completion_ids=c,
        completion_mask=torch.ones_like(c),
        vision_rows=vision,
        prompt_extra={},
        completions=[""] * rows,
    )


def _count(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def test_training_forward_matches_flop_counter_on_a_tiny_qwen25_vl() -> None:
    """LogpModel's forward: vision tower per row's image, decoder at prompt + completion tokens,
    LM head at the completion positions only (not the prompt's)."""
    from vlmgrpo.grpo.logps import LogpModel

    model = _tiny_qwen25_vl()
    s = F.QwenVLShape.from_config(TEXT, VISION)
    mats = (torch.nn.Linear, torch.nn.Conv3d)
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, mats))
    assert sum(F.qwen_vl_weights(s).values()) == weights  # every matmul weight, each counted once
    grid = (8, 6)
    batch = _batch(rows=2, grid=grid, completion=5)
    p_len, c_len = batch.prompt_ids.shape[1], batch.completion_ids.shape[1]
    lm = LogpModel(model, chunk_tokens=4)
    with torch.no_grad():
        got = _count(lambda: lm(batch))
    v = F.vision_forward(s, [grid, grid])  # no SharedVision: the forward runs the tower per row
    length = p_len + c_len
    want = (
        v["linear"]
        + v["attention"]
        + F.decoder_per_token(s) * 2 * length
        + F.decoder_attention(s, 2 * F.full_pairs(length))  # eager computes the full square
        + F.lm_head_per_position(s) * 2 * c_len
    )
    assert got == want
    # the same with the LM head at every position would be off by the prompt positions
    assert got != want + F.lm_head_per_position(s) * 2 * p_len


def test_training_backward_is_twice_the_forward_plus_the_lm_head_recompute() -> None:
    """Forward + backward of LogpModel = 3 x forward (trained everywhere) + one more LM-head forward
    (its chunks are checkpointed); the patch embedding's input gradient is not computed (pixels
    need none), which the 6 x convention counts: the only difference allowed."""
    from vlmgrpo.grpo.logps import LogpModel

    model = _tiny_qwen25_vl()
    s = F.QwenVLShape.from_config(TEXT, VISION)
    grid = (8, 6)
    batch = _batch(rows=2, grid=grid, completion=5)
    lm = LogpModel(model, chunk_tokens=4)
    with torch.no_grad():
        fwd = _count(lambda: lm(batch))
    got = _count(lambda: lm(batch).sum().backward())
    c_tokens = 2 * batch.completion_ids.shape[1]
    embed_input_grad = F.linear(3 * 2 * 14 * 14, 16, 2 * 48)
    assert got == 3 * fwd + F.lm_head_per_position(s) * c_tokens - embed_input_grad


def test_rollout_decode_step_counts_the_lm_head_at_every_row() -> None:
    """One decode step of 2 rows through HF's forward with a KV cache: decoder + LM head per row,
    attention over the cached prompt + the new token."""
    model = _tiny_qwen25_vl()
    s = F.QwenVLShape.from_config(TEXT, VISION)
    batch = _batch(rows=2, grid=(8, 6), completion=1)
    inputs = batch.model_inputs()
    p_len = batch.prompt_ids.shape[1]
    with torch.no_grad():
        out = model(
            input_ids=inputs["input_ids"][:, :p_len],
            attention_mask=inputs["attention_mask"][:, :p_len],
            pixel_values=inputs["pixel_values"],
            image_grid_thw=inputs["image_grid_thw"],
            use_cache=True,
        )
        got = _count(
            lambda: model(
                input_ids=batch.completion_ids,
                attention_mask=inputs["attention_mask"],
                past_key_values=out.past_key_values,
                use_cache=True,
            )
        )
    want = (F.decoder_per_token(s) + F.lm_head_per_position(s)) * 2 + F.decoder_attention(
        s, 2 * F.decode_pairs(p_len, 1)
    )
    assert got == want


@pytest.fixture(scope="module")
def tiny_flux():
    pytest.importorskip("diffusers")
    from diffusers import FluxTransformer2DModel

    cfg = dict(
        patch_size=1,
        in_channels=16,
        num_layers=2,
        num_single_layers=3,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=24,
        pooled_projection_dim=12,
        guidance_embeds=False,
        axes_dims_rope=(2, 2, 4),
    )
    torch.manual_seed(0)
    return FluxTransformer2DModel(**cfg).float().eval(), cfg


def test_flux_params_split_adds_up_to_the_model(tiny_flux) -> None:
    model, cfg = tiny_flux
    f = F.FluxShape.from_config(cfg)
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert F.flux_params(f)["total"] == weights
    # FLUX.1's own config: 11.89 B matmul weights, 6.46 B of which run per token
    big = F.flux_params(F.FluxShape())
    assert round(big["total"] / 1e9, 2) == 11.89
    assert round(big["per_token"] / 1e9, 2) == 6.46


def test_flux_step_matches_flop_counter(tiny_flux) -> None:
    """One transformer call on one image: per-token blocks at image + text tokens, modulation once
    per image, joint attention over all tokens (math SDPA backend, so torch dispatches bmm)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model, cfg = tiny_flux
    f = F.FluxShape.from_config(cfg)
    img, txt = 12, 5
    g = torch.Generator().manual_seed(0)
    kw = dict(
        hidden_states=torch.randn(1, img, 16, generator=g),
        encoder_hidden_states=torch.randn(1, txt, 24, generator=g),
        pooled_projections=torch.randn(1, 12, generator=g),
        timestep=torch.tensor([0.5]),
        img_ids=torch.zeros(img, 3),
        txt_ids=torch.zeros(txt, 3),
    )
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
        got = _count(lambda: model(**kw))
    assert got == F.flux_step_flops(f, img, txt)["total"]


def test_recount_reproduces_the_recorded_old_figures(tmp_path, monkeypatch) -> None:
    """bench/recount.py reads the committed JSON the way the bench wrote it: its old-formula figures
    equal the recorded ones (MFU to 0.05 points, FLUX TFLOP per image to 0.05), and its output is
    the committed bench/results/recount.json."""
    import recount

    monkeypatch.setattr(sys, "argv", ["recount.py", "--out", str(tmp_path)])
    assert recount.main() == 0
    r = __import__("json").loads((tmp_path / "recount.json").read_text())
    n = 0
    for run in r["step_runs"]:
        for k, v in run.items():
            if k.endswith("/train"):
                assert abs(v["old_mfu"] - v["old_mfu_recorded"]) < 5e-4, (run["run"], k)
                assert v["new_mfu"] < v["old_mfu"]
                if v["new_mfu_recorded"] is not None:  # a run that recorded the new count too
                    assert abs(v["new_mfu"] - v["new_mfu_recorded"]) < 5e-4, (run["run"], k)
                n += 1
    assert n == 10  # 8 H100 / H200 runs + the two token-budget runs of H200 session 6
    for run in r["reward_runs"]:
        for k, v in run.items():
            if k.startswith("gen_"):
                assert abs(v["old_tflop_per_image"] - v["old_tflop_per_image_recorded"]) < 0.05
                assert abs(v["old_share"] - v["old_share_recorded"]) < 2e-3
                if v["new_tflop_per_image_recorded"] is not None:  # a run that recorded the new count
                    assert abs(v["new_tflop_per_image"] - v["new_tflop_per_image_recorded"]) < 0.05
                    assert abs(v["new_share"] - v["new_share_recorded"]) < 2e-3
    committed = Path(recount.RESULTS / "recount.json").read_text()
    assert (tmp_path / "recount.json").read_text() == committed
