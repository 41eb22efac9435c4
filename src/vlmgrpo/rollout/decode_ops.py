"""The decode step's maths as pure functions, for `rollout.fast.FastEngine`: HF generate's
logits processing (`filter_scores`), a sync-free draw, and one decoder layer's functional step
(`pre_attn` -> attention -> `post_attn`) on weights gathered by `FusedWeights`. Shapes in the
docstrings; B = rows being decoded, D = head_dim."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def filter_scores(
    x: torch.Tensor, suppress: torch.Tensor, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """HF generate's processing of temperature-scaled logits x [B, V]: suppressed ids (suppress [V]
    bool), then `TopKLogitsWarper`, then `TopPLogitsWarper` (min_tokens_to_keep 1); -inf = removed."""
    scores = x.masked_fill(suppress, float("-inf"))
    if top_k > 0:
        kth = torch.topk(scores, min(top_k, scores.shape[-1])).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:  # drop the low tail whose total mass is <= 1 - top_p
        srt, idx = torch.sort(scores, descending=False)
        drop = srt.softmax(-1).cumsum(-1) <= 1 - top_p
        drop[:, -1:] = False
        scores = scores.masked_fill(drop.scatter(1, idx, drop), float("-inf"))
    return scores


def draw(probs: torch.Tensor) -> torch.Tensor:
    """One sample per row of probs [B, V] with no host sync (CUDA-graph safe): the exponential race
    argmax_i p_i / E_i, E_i ~ Exp(1) i.i.d., picks i with probability p_i."""
    e = torch.empty_like(probs).exponential_().clamp_min_(1e-30)
    return (probs / e).argmax(-1)


def rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """HF Qwen RMSNorm: normalise in fp32, cast back, scale (F.rms_norm is one fused kernel on CUDA)."""
    return w * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def pre_attn(
    h: torch.Tensor,
    ln_w: torch.Tensor,
    w_qkv: torch.Tensor,
    b_qkv: torch.Tensor | None,
    qn_w: torch.Tensor | None,
    kn_w: torch.Tensor | None,
    cos: torch.Tensor,
    sin_s: torch.Tensor,
    eps: float,
    qk_eps: float,
    n_heads: int,
    n_kv: int,
    d: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode-step attention inputs of one layer. h [B, hidden]; cos, sin_s [B, 1, D].
    returns q [B, kv_heads, groups, D], k and v [B, kv_heads, 1, D] (k, q rotated)."""
    b = h.shape[0]
    qkv = F.linear(rms(h, ln_w, eps), w_qkv, b_qkv)  # one GEMM for q, k and v
    nq, nk = n_heads * d, n_kv * d
    half = d // 2
    if qn_w is not None:  # Qwen3: RMSNorm over head_dim before RoPE, separate weights for q and k
        q = rms(qkv[:, :nq].view(b, n_heads, d), qn_w, qk_eps)
        k = rms(qkv[:, nq : nq + nk].view(b, n_kv, d), kn_w, qk_eps)
        q = q * cos + q.roll(half, -1) * sin_s
        k = k * cos + k.roll(half, -1) * sin_s
    else:  # q and k rotated together: they are adjacent in qkv
        qk = qkv[:, : nq + nk].view(b, n_heads + n_kv, d)
        qk = qk * cos + qk.roll(half, -1) * sin_s
        q, k = qk[:, :n_heads], qk[:, n_heads:]
    v = qkv[:, nq + nk :].view(b, n_kv, d)
    return q.reshape(b, n_kv, n_heads // n_kv, d), k[:, :, None], v[:, :, None]


def post_attn(
    h: torch.Tensor,
    o: torch.Tensor,
    w_o: torch.Tensor,
    b_o: torch.Tensor | None,
    ln_w: torch.Tensor,
    w_g: torch.Tensor,
    w_u: torch.Tensor,
    w_d: torch.Tensor,
    act: Any,
    eps: float,
) -> torch.Tensor:
    """o_proj + residual, then the MLP + residual, with the residual adds in the GEMM epilogues.
    h [B, hidden], o [B, heads * D] -> [B, hidden]."""
    h = torch.addmm(h, o, w_o.t()) if b_o is None else h + F.linear(o, w_o, b_o)
    x = rms(h, ln_w, eps)
    return torch.addmm(h, act(F.linear(x, w_g)) * F.linear(x, w_u), w_d.t())


class FusedWeights:
    """What the functional decode step reads: per layer the q/k/v weights concatenated into one
    matrix (a copy, refreshed in place before every rollout so captured graphs keep their
    addresses) and references to the other weights. Only for plain nn.Linear layers (no LoRA)."""

    def __init__(self, layers: list[Any]) -> None:
        self.layers = layers
        with torch.no_grad():
            self.w_qkv = [self._cat(ly, "weight") for ly in layers]
            self.b_qkv = [
                self._cat(ly, "bias") if ly.self_attn.q_proj.bias is not None else None for ly in layers
            ]

    @staticmethod
    def _cat(layer: Any, name: str) -> torch.Tensor:
        a = layer.self_attn
        return torch.cat([getattr(a.q_proj, name), getattr(a.k_proj, name), getattr(a.v_proj, name)]).detach()

    @torch.no_grad()
    def refresh(self) -> None:
        for i, ly in enumerate(self.layers):
            a = ly.self_attn
            torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight], out=self.w_qkv[i])
            if self.b_qkv[i] is not None:
                torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias], out=self.b_qkv[i])

    @staticmethod
    def supported(layers: list[Any]) -> bool:
        from torch import nn

        def plain(m: Any) -> bool:
            return type(m) is nn.Linear

        for ly in layers:
            a, m = ly.self_attn, ly.mlp
            lin = [a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj]
            if not all(plain(x) for x in lin) or not hasattr(m, "act_fn"):
                return False
            norms = [ly.input_layernorm, ly.post_attention_layernorm]
            norms += [a.q_norm, a.k_norm] if hasattr(a, "q_norm") else []
            if not all(hasattr(n, "weight") and hasattr(n, "variance_epsilon") for n in norms):
                return False
            if (m.gate_proj.bias, m.up_proj.bias, m.down_proj.bias) != (None, None, None):
                return False
            if type(m.act_fn) is not type(layers[0].mlp.act_fn):
                return False
        return True


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)
