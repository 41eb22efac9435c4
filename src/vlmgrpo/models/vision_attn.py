"""Batched attention for the Qwen-VL vision towers when flash-attn is not installed.

Qwen2.5-VL and Qwen3-VL pack all images of a batch into one sequence and attend within segments
given by `cu_seqlens` (each image, or each 112x112 window of one in Qwen2.5-VL's windowed layers).
With `sdpa`, transformers runs one SDPA call per segment: for 8 images of 448x448 that is ~130
calls per windowed layer, ~4,000 per forward, plus their backward. That loop, not the FLOPs, was
most of the fast engine's 0.6 s prefill on an H100 (bench/RESULTS.md).

`segment_sdpa` computes the same attention with one SDPA call per distinct segment length: the
segments of one length are gathered into a [n, heads, L, D] batch, attended, and scattered back.
Windows of one image size share a length, so a batch needs a handful of calls. The maths per
segment is the same SDPA as transformers' loop (tested equal on CPU).

It is registered with transformers' `AttentionInterface` under a name containing "flash", which
is what makes the vision blocks hand over `cu_seqlens`; `use_segment_attention(model)` switches
only the vision tower's config, the language model keeps its own implementation.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

NAME = "vlmgrpo_flash_segments"  # must contain "flash": transformers passes cu_seqlens then


def segment_sdpa(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    scaling: float | None = None,
    dropout: float = 0.0,
    cu_seq_lens_q: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """q/k/v [1, H, S, D] packed segments -> ([1, S, H, D], None), like HF's attention functions.

    Without `cu_seq_lens_q` the whole sequence is one segment.
    """
    if query.shape[0] != 1:
        raise ValueError(f"segment attention expects one packed sequence, got batch {query.shape[0]}")
    s = query.shape[2]
    if cu_seq_lens_q is None:
        cu_seq_lens_q = torch.tensor([0, s], device=query.device)
    starts = cu_seq_lens_q[:-1]
    lengths = cu_seq_lens_q[1:] - starts
    q, k, v = query[0], key[0], value[0]  # [H, S, D]
    out = query.new_empty(s, q.shape[0], q.shape[2])  # [S, H, D]
    lens = lengths.tolist()  # one host sync per layer (the HF loop has the same)
    for length in sorted(set(lens)):
        if length == 0:
            continue
        sel = torch.nonzero(lengths == length).flatten()
        idx = (starts[sel][:, None] + torch.arange(length, device=query.device)).flatten()  # [n*L]
        n = sel.numel()
        # [H, S, D] -> [n, H, L, D]
        qs, ks, vs = (
            t.index_select(1, idx).view(t.shape[0], n, length, -1).transpose(0, 1) for t in (q, k, v)
        )
        o = F.scaled_dot_product_attention(qs, ks, vs, dropout_p=dropout, scale=scaling)  # [n, H, L, D]
        out.index_copy_(0, idx, o.permute(0, 2, 1, 3).reshape(n * length, q.shape[0], q.shape[2]))
    return out[None], None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, segment_sdpa)


def vision_config_of(model: Any) -> Any | None:
    """The config object that the vision tower's attention reads, or None (no Qwen-VL tower)."""
    for m in model.modules():  # through DDP / peft wrappers
        name = type(m).__name__
        if name.startswith("Qwen") and name.endswith(("VisionTransformerPretrainedModel", "VisionModel")):
            return getattr(m, "config", None)
    return None


def use_segment_attention(model: Any) -> bool:
    """Switch the vision tower of a Qwen-VL model to `segment_sdpa`; True when switched.

    Only when the tower uses sdpa or eager (with flash-attn the packed kernel is already used).
    """
    cfg = vision_config_of(model)
    if cfg is None or getattr(cfg, "_attn_implementation", None) not in ("sdpa", "eager"):
        return False
    _register()
    cfg._attn_implementation = NAME
    return True
