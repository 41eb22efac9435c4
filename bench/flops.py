"""Model FLOPs of what each pass actually runs (issue #20): pure functions, no torch.

Units: FLOPs (one multiply-add = 2 FLOPs); matmuls only (linear layers, convolutions as matmuls,
attention's two matmuls). Elementwise work (norms, activations, RoPE, softmax, bias adds) and
embedding lookups (a gather, no matmul) are not counted, as in the usual MFU convention and as in
`torch.utils.flop_counter.FlopCounterMode` (the tests check these counts against it on tiny models).

Each component is counted at the tokens it processes in the pass being measured:
- Qwen2.5-VL vision tower: at its patches (patch embedding, 32 blocks, windowed or full
  attention), its merger at the merged tokens (patches / 4);
- decoder layers: at every real prompt + completion token;
- LM head: only where the pass runs it: at the completion positions in training (`LogpModel`
  slices the hidden states to them), at every row of every decode step in the rollout, at the last
  prompt position of each prefilled prompt;
- attention (scores Q K^T and the weighted sum of V): 2 x 2 x pairs x (heads x head_dim) FLOPs, where
  pairs is the number of (query, key) pairs that are not masked: L^2 for bidirectional attention
  (vision tower, FLUX), L (L + 1) / 2 for causal attention over L tokens (about half of L^2: the
  causal halving), prompt + t keys for a decode step.

Forward = 2 x multiply-adds; forward + backward = 3 x forward (= 6 x params x tokens for a linear
layer: the backward computes the gradient of the input and of the weight, each as costly as the
forward; attention's backward is likewise 2 x its forward). A frozen part that the backward
passes through (LoRA's base weights) costs 2 x forward (input gradient only); a frozen part with
nothing trainable before it (a frozen vision tower) costs 1 x forward. MFU counts model FLOPs:
recomputation (the LM head's checkpointed chunks, `SharedVision`'s second tower pass) is work the
GPU does but not model FLOPs; `qwen_vl_train_flops` reports it separately (`recompute`).

Peak: `PEAK_BF16` = 989e12 FLOP/s, NVIDIA's dense (no sparsity) bf16 tensor-core figure for the
H100 SXM; the H200 has the same figure (same GH100 compute; more and faster memory only). MFU is
against that data-sheet figure; what a large bf16 matmul actually reaches is lower (about 790e12
on random data on this workplace's H200, per the device notes), and `gpu_session.py ceiling`
measures it in the same session as the runs it qualifies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

PEAK_BF16 = {"H100 SXM": 989e12, "H200": 989e12}  # dense bf16 FLOP/s (NVIDIA data sheets)


def peak_for(device_name: str) -> tuple[str, float]:
    """(GPU label, dense bf16 FLOP/s) for a torch device name such as 'NVIDIA H100 80GB HBM3'."""
    name = device_name.upper()
    if "H200" in name:
        return "H200", PEAK_BF16["H200"]
    if "H100" in name:
        return "H100 SXM", PEAK_BF16["H100 SXM"]
    raise ValueError(f"no bf16 peak known for device {device_name!r}: add it to bench/flops.py PEAK_BF16")


def linear(d_in: int, d_out: int, tokens: float) -> float:
    """Forward FLOPs of a [tokens, d_in] @ [d_in, d_out] matmul: 2 x d_in x d_out x tokens."""
    return 2.0 * d_in * d_out * tokens


def attention(pairs: float, width: int) -> float:
    """Forward FLOPs of attention's two matmuls over `pairs` (query, key) pairs; width = heads x
    head_dim of the queries (grouped-query attention shares K/V heads but each query head still
    does its own dot products): 2 x pairs x width (Q K^T) + 2 x pairs x width (P V)."""
    return 4.0 * pairs * width


def causal_pairs(length: float) -> float:
    """Unmasked (query, key) pairs of causal attention over `length` tokens: L (L + 1) / 2."""
    return length * (length + 1) / 2.0


def full_pairs(length: float) -> float:
    """(query, key) pairs of bidirectional attention over `length` tokens: L^2."""
    return float(length) * length


def decode_pairs(prompt_len: float, steps: int) -> float:
    """Pairs of one row decoding `steps` tokens after a `prompt_len` prefill: the token of step t
    (t = 0..steps-1) attends to prompt_len + t + 1 keys (itself included)."""
    return steps * prompt_len + steps * (steps + 1) / 2.0


# ------------------------------------------------------------------------------------- Qwen2.5-VL


@dataclass(frozen=True)
class QwenVLShape:
    """The widths that set the FLOPs of a Qwen2.5-VL model (from its config.json)."""

    hidden: int  # text_config.hidden_size
    intermediate: int  # text_config.intermediate_size (SwiGLU: gate, up, down)
    layers: int  # text_config.num_hidden_layers
    heads: int  # text_config.num_attention_heads
    kv_heads: int  # text_config.num_key_value_heads
    vocab: int  # text_config.vocab_size (LM head rows)
    v_hidden: int = 1280  # vision_config.hidden_size
    v_intermediate: int = 3420  # vision_config.intermediate_size (SwiGLU)
    v_depth: int = 32  # vision blocks
    v_full_blocks: int = 4  # len(vision_config.fullatt_block_indexes): the others are windowed
    v_window: int = 112  # vision_config.window_size in pixels
    patch: int = 14  # vision_config.patch_size
    temporal_patch: int = 2  # vision_config.temporal_patch_size (an image is 2 identical frames)
    merge: int = 2  # vision_config.spatial_merge_size
    in_chans: int = 3
    head_dim: int = field(default=0)  # text head_dim (0: hidden / heads)

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @classmethod
    def from_config(cls, text: dict, vision: dict) -> QwenVLShape:
        """From the text_config and vision_config dicts (HF names), e.g. bench_step.SHAPES[...]."""
        return cls(
            hidden=text["hidden_size"],
            intermediate=text["intermediate_size"],
            layers=text["num_hidden_layers"],
            heads=text["num_attention_heads"],
            kv_heads=text["num_key_value_heads"],
            vocab=text["vocab_size"],
            v_hidden=vision["hidden_size"],
            v_intermediate=vision["intermediate_size"],
            v_depth=vision["depth"],
            v_full_blocks=len(vision["fullatt_block_indexes"]),
            v_window=vision["window_size"],
            patch=vision["patch_size"],
            temporal_patch=vision["temporal_patch_size"],
            merge=vision["spatial_merge_size"],
            in_chans=vision.get("in_chans", vision.get("in_channels", 3)),
            head_dim=text.get("head_dim") or 0,
        )


def image_grid(px_h: int, px_w: int, s: QwenVLShape) -> tuple[int, int]:
    """Patch grid (h, w) of an image already resized to multiples of patch x merge pixels."""
    unit = s.patch * s.merge
    if px_h % unit or px_w % unit:
        raise ValueError(f"image {px_h}x{px_w} is not a multiple of {unit} px (the processor resizes first)")
    return px_h // s.patch, px_w // s.patch


def window_sizes(grid_h: int, grid_w: int, s: QwenVLShape) -> list[int]:
    """Patches per attention window of Qwen2.5-VL's windowed blocks for one image: windows of
    (window_size / patch / merge)^2 merged tokens, cut from the top-left, partial at the edges."""
    win = s.v_window // s.merge // s.patch  # merged tokens per window side (4 for Qwen2.5-VL)
    mh, mw = grid_h // s.merge, grid_w // s.merge
    hs = [min(win, mh - i) for i in range(0, mh, win)]
    ws = [min(win, mw - j) for j in range(0, mw, win)]
    return [a * b * s.merge**2 for a in hs for b in ws]


def vision_forward(s: QwenVLShape, grids: list[tuple[int, int]]) -> dict[str, float]:
    """Forward FLOPs of the vision tower on images with these patch grids (h, w), one frame pair each.

    returns {"linear": patch embedding + blocks + merger matmuls, "attention": windowed and full
    blocks' attention, "patches": number of patches, "merged": tokens handed to the decoder}.
    """
    patches = sum(h * w for h, w in grids)
    merged = patches // s.merge**2
    d, di = s.v_hidden, s.v_intermediate
    per_block = linear(d, 3 * d, 1) + linear(d, d, 1) + 3 * linear(d, di, 1)  # qkv, proj, SwiGLU
    embed = linear(s.in_chans * s.temporal_patch * s.patch**2, d, 1)  # the Conv3d as a matmul
    md = d * s.merge**2  # the merger's MLP: [4 x 1280] -> 5120 -> out
    merger = linear(md, md, merged) + linear(md, s.hidden, merged)
    lin = (embed + s.v_depth * per_block) * patches + merger
    win_pairs = sum(full_pairs(n) for h, w in grids for n in window_sizes(h, w, s))
    full = sum(full_pairs(h * w) for h, w in grids)
    att = attention(win_pairs, d) * (s.v_depth - s.v_full_blocks) + attention(full, d) * s.v_full_blocks
    return {"linear": lin, "attention": att, "patches": float(patches), "merged": float(merged)}


def qwen_vl_weights(s: QwenVLShape) -> dict[str, float]:
    """Matmul weights by part (biases, norms and the embedding lookup excluded; with tied embeddings
    the LM head is the embedding matrix): what `old_mfu_flops` credited at every token."""
    d, di = s.v_hidden, s.v_intermediate
    md = d * s.merge**2
    vision = (
        s.in_chans * s.temporal_patch * s.patch**2 * d
        + s.v_depth * (3 * d * d + d * d + 3 * d * di)
        + md * md
        + md * s.hidden
    )
    return {
        "vision": float(vision),
        "decoder": decoder_per_token(s) / 2,
        "lm_head": lm_head_per_position(s) / 2,
    }


def decoder_per_token(s: QwenVLShape) -> float:
    """Forward FLOPs per token of the decoder layers' matmuls (q, k, v, o, SwiGLU), LM head excluded."""
    q = s.heads * s.hd
    kv = s.kv_heads * s.hd
    per_layer = linear(s.hidden, q, 1) + 2 * linear(s.hidden, kv, 1) + linear(q, s.hidden, 1)
    per_layer += 3 * linear(s.hidden, s.intermediate, 1)
    return s.layers * per_layer


def lm_head_per_position(s: QwenVLShape) -> float:
    """Forward FLOPs of the LM head at one position: 2 x hidden x vocab."""
    return linear(s.hidden, s.vocab, 1)


def decoder_attention(s: QwenVLShape, pairs: float) -> float:
    """Forward attention FLOPs of all decoder layers over `pairs` (query, key) pairs."""
    return s.layers * attention(pairs, s.heads * s.hd)


def qwen_vl_train_flops(
    s: QwenVLShape,
    rows: list[tuple[int, int]],
    grids: list[tuple[int, int]],
    *,
    vision: str = "trained",
    decoder: str = "trained",
    shared_vision: bool = True,
    lm_head_recompute: bool = True,
) -> dict[str, float]:
    """Model FLOPs of one training pass (forward + backward) over GRPO rows.

    rows: (prompt tokens, completion tokens) of every row, real tokens only (no padding);
    grids: patch grids of the images the tower runs on: one per unique image with `shared_vision`
    (`fastpath.SharedVision`), one per row's image otherwise;
    vision / decoder: "trained" (x3 forward), "frozen_through" (x2: the backward crosses it: LoRA
    base weights), "frozen" (x1: forward only, nothing trainable before it).

    returns the forward FLOPs per component ("vision", "decoder", "attention", "lm_head"), "model"
    (training FLOPs, the MFU numerator) and "recompute" (FLOPs run again but not model FLOPs: the LM
    head's checkpointed chunks and SharedVision's no-grad tower pass).
    """
    mult = {"trained": 3.0, "frozen_through": 2.0, "frozen": 1.0}
    tokens = sum(p + c for p, c in rows)
    completion = sum(c for _, c in rows)
    v = vision_forward(s, grids)
    fwd = {
        "vision": v["linear"] + v["attention"],
        "decoder": decoder_per_token(s) * tokens,
        "attention": decoder_attention(s, sum(causal_pairs(p + c) for p, c in rows)),
        "lm_head": lm_head_per_position(s) * completion,
    }
    model = (
        mult[vision] * fwd["vision"]
        + mult[decoder] * (fwd["decoder"] + fwd["attention"])
        + mult[decoder] * fwd["lm_head"]
    )
    recompute = (fwd["lm_head"] if lm_head_recompute else 0.0) + (
        fwd["vision"] if shared_vision and vision == "trained" else 0.0
    )
    return {
        **{f"fwd_{k}": x for k, x in fwd.items()},
        "model": model,
        "recompute": recompute,
        "tokens": float(tokens),
        "completion_tokens": float(completion),
        "patches": v["patches"],
    }


def qwen_vl_rollout_flops(
    s: QwenVLShape, prompt_lens: list[int], grids: list[tuple[int, int]], group: int, steps: int
) -> dict[str, float]:
    """Forward FLOPs of one rollout of the fast engine: each prompt prefilled once (vision tower on
    its image, decoder on its tokens, LM head at its last position), then `steps` decode steps of
    every row (P x group rows; finished rows keep decoding, as the engine does): decoder + LM head
    per row per step, attention over the prompt and the tokens so far. Returns the parts and "total".
    """
    v = vision_forward(s, grids)
    n_rows = len(prompt_lens) * group
    prefill = (
        v["linear"]
        + v["attention"]
        + decoder_per_token(s) * sum(prompt_lens)
        + decoder_attention(s, sum(causal_pairs(p) for p in prompt_lens))
        + lm_head_per_position(s) * len(prompt_lens)
    )
    decode = (decoder_per_token(s) + lm_head_per_position(s)) * n_rows * steps + decoder_attention(
        s, group * sum(decode_pairs(p, steps) for p in prompt_lens)
    )
    return {"prefill": prefill, "decode": decode, "total": prefill + decode}


def old_mfu_flops(params: float, tokens: float) -> float:
    """The formula the bench used before issue #20: 6 x all parameters x (prompt + completion)
    tokens (vision tower and LM head credited at every token, attention not counted)."""
    return 6.0 * params * tokens


# ------------------------------------------------------------------------------------------ FLUX


@dataclass(frozen=True)
class FluxShape:
    """FLUX.1 transformer widths (diffusers FluxTransformer2DModel config; schnell and dev alike)."""

    double_blocks: int = 19  # num_layers: image and text streams, joint attention
    single_blocks: int = 38  # num_single_layers: one stream over text + image tokens
    heads: int = 24  # num_attention_heads
    head_dim: int = 128  # attention_head_dim (hidden = 24 x 128 = 3072)
    in_channels: int = 64  # packed latent channels (16 latent channels x 2 x 2)
    joint_attention_dim: int = 4096  # T5-XXL width (context_embedder input)
    pooled_dim: int = 768  # CLIP pooled width
    guidance_embeds: bool = False  # schnell: False; dev: True
    mlp_ratio: float = 4.0  # fixed in diffusers' blocks

    @property
    def dim(self) -> int:
        return self.heads * self.head_dim

    @classmethod
    def from_config(cls, c: dict) -> FluxShape:
        return cls(
            double_blocks=c["num_layers"],
            single_blocks=c["num_single_layers"],
            heads=c["num_attention_heads"],
            head_dim=c["attention_head_dim"],
            in_channels=c["in_channels"],
            joint_attention_dim=c["joint_attention_dim"],
            pooled_dim=c["pooled_projection_dim"],
            guidance_embeds=c.get("guidance_embeds", False),
        )


def flux_params(f: FluxShape) -> dict[str, float]:
    """Matmul weights of the transformer, split by what they run on (biases and norms excluded):

    per_token: weights every token passes through once per step (a double block's image-stream
      weights for image tokens, its text-stream copy for text tokens: one stream's worth per token;
      a single block's weights; the x/context embedders and proj_out are counted in
      `flux_step_flops` by token kind);
    per_sample: the timestep / guidance / pooled-text embedders and the AdaLN modulation linears
      (6 x dim outputs in each double-block stream, 3 x dim in single blocks, 2 x dim at the end),
      run once per image per step, not per token;
    total: every matmul weight (double blocks counted with both streams).
    """
    d = f.dim
    mlp = int(d * f.mlp_ratio)
    stream = 4 * d * d + 2 * d * mlp  # q, k, v, out + feed-forward (d -> 4d -> d)
    single = 3 * d * d + d * mlp + (d + mlp) * d  # q, k, v + proj_mlp + proj_out over [attn, mlp]
    per_token = f.double_blocks * stream + f.single_blocks * single
    embed = (256 * d + d * d) * (2 if f.guidance_embeds else 1) + (f.pooled_dim * d + d * d)
    mod = f.double_blocks * 2 * d * 6 * d + f.single_blocks * d * 3 * d + d * 2 * d
    io = f.in_channels * d + f.joint_attention_dim * d + d * f.in_channels
    total = f.double_blocks * 2 * stream + f.single_blocks * single + embed + mod + io
    return {
        "per_token": float(per_token),
        "per_sample": float(embed + mod),
        "io": float(io),
        "total": float(total),
    }


def flux_image_tokens(height: int, width: int) -> int:
    """Image tokens of FLUX at a pixel size: VAE / 8, then 2 x 2 patches packed: (h / 16) x (w / 16)."""
    return (height // 16) * (width // 16)


def flux_step_flops(f: FluxShape, img_tokens: int, txt_tokens: int) -> dict[str, float]:
    """Forward FLOPs of one transformer call (one denoising step) for one image.

    Per-token blocks at image + text tokens, the embedders at their own tokens (x_embedder and
    proj_out at image tokens, context_embedder at text tokens), modulation once, and joint
    bidirectional attention over all tokens in every block (double and single)."""
    d = f.dim
    p = flux_params(f)
    n = img_tokens + txt_tokens
    lin = (
        2.0 * p["per_token"] * n
        + linear(f.in_channels, d, img_tokens)
        + linear(d, f.in_channels, img_tokens)
        + linear(f.joint_attention_dim, d, txt_tokens)
        + 2.0 * p["per_sample"]
    )
    att = (f.double_blocks + f.single_blocks) * attention(full_pairs(n), d)
    return {"linear": lin, "attention": att, "total": lin + att}


def flux_old_step_flops(f: FluxShape, total_params: float, img_tokens: int, txt_tokens: int) -> float:
    """The formula the reward bench used before issue #20: 2 x all parameters x (image + text
    tokens) plus the same attention term."""
    n = img_tokens + txt_tokens
    return 2.0 * total_params * n + (f.double_blocks + f.single_blocks) * attention(full_pairs(n), f.dim)


def share_of_peak(flops: float, seconds: float, peak: float) -> float:
    """Achieved FLOP/s as a fraction of the peak."""
    if seconds <= 0 or not math.isfinite(seconds):
        raise ValueError(f"seconds must be positive, got {seconds}")
    return flops / seconds / peak
