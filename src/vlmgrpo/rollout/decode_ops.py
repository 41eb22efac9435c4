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


def module_class(m: Any) -> type:
    """type(m), through FSDP2's wrapper class (fully_shard makes an nn.Linear an `FSDPLinear`, a
    subclass of FSDPModule and nn.Linear)."""
    cls = type(m)
    if cls.__name__.startswith("FSDP"):
        try:
            from torch.distributed.fsdp import FSDPModule
        except ImportError:
            return cls
        if issubclass(cls, FSDPModule):
            return next(c for c in cls.__mro__[1:] if not issubclass(c, FSDPModule))
    return cls


def lora_parts(m: Any) -> list[tuple[torch.Tensor, torch.Tensor, float]] | None:
    """The (B [out, r], A [r, in], scaling) of the adapters that `m`'s forward adds to its base
    layer now; [] for a plain nn.Linear or disabled adapters; None when the merged weight cannot
    stand in for the forward (DoRA or another variant, lora_bias, fan_in_fan_out, adapters already
    merged, a base layer that is not an nn.Linear)."""
    from torch import nn

    if module_class(m) is nn.Linear:
        return []
    base = getattr(m, "base_layer", None)
    if module_class(base) is not nn.Linear or not hasattr(m, "lora_A") or type(m).__name__ != "Linear":
        return None
    if getattr(m, "fan_in_fan_out", False):
        return None
    if getattr(m, "merged", False):  # peft merged W in place: the forward is the base layer's,
        return None if getattr(m, "disable_adapters", False) else []  # unless it unmerges first
    if getattr(m, "disable_adapters", False):
        return []
    parts = []
    for name in m.active_adapters:
        if name not in m.lora_A:
            continue
        if name in getattr(m, "lora_variant", {}) or getattr(m, "lora_bias", {}).get(name, False):
            return None
        parts.append((m.lora_B[name].weight, m.lora_A[name].weight, float(m.scaling[name])))
    return parts


def base_linear(m: Any) -> Any:
    """The nn.Linear under a peft LoRA layer (or `m` itself)."""
    return getattr(m, "base_layer", m)


@torch.no_grad()
def merged_weight_into(m: Any, out: torch.Tensor) -> None:
    """out [out, in] <- the weight `m`'s forward applies now: W + sum_a s_a B_a A_a, summed in fp32
    and rounded once to out's dtype. W itself is only read (the trained weights stay bit-identical,
    unlike peft's merge_adapter/unmerge_adapter round trip on bf16 weights)."""
    w = base_linear(m).weight
    parts = lora_parts(m)
    if parts is None:
        raise ValueError(f"fast rollout engine: cannot merge the adapters of {type(m).__name__} for sampling")
    if not parts:
        out.copy_(w)
        return
    acc = w.to(torch.float32, copy=True)
    for b, a, s in parts:
        acc.addmm_(b.float(), a.float(), alpha=s)
    out.copy_(acc)


class FusedWeights:
    """What the functional decode step reads, per layer: the q/k/v weights concatenated into one
    matrix (a copy), o_proj / gate / up / down, and the LM head. A plain nn.Linear is read where it
    is; a peft LoRA layer is read as its merged weight W + s B A, held in a sampling copy (so the
    adapter costs no extra GEMMs per token and the trained W is never written). The copies are
    refreshed in place before every rollout, so captured graphs keep their addresses and the
    optimiser's updates (base or adapter) are seen."""

    LINEARS = ("o_proj", "gate_proj", "up_proj", "down_proj")

    def __init__(self, layers: list[Any], head: Any | None = None) -> None:
        self.layers, self.head = layers, head
        with torch.no_grad():
            self.w_qkv = [self._cat(ly, "weight") for ly in layers]
            self.b_qkv = [
                self._cat(ly, "bias") if base_linear(ly.self_attn.q_proj).bias is not None else None
                for ly in layers
            ]
            # [layer][name] -> the weight the step reads (a merged copy for LoRA layers)
            self.w = [{n: self._weight(self._mod(ly, n)) for n in self.LINEARS} for ly in layers]
            self.w_head = None if head is None else self._weight(head)
        self.lora = any(m is not base_linear(m) for m in self._mods())  # some layer has adapters
        self.refresh()

    @staticmethod
    def _mod(layer: Any, name: str) -> Any:
        return getattr(layer.self_attn if name == "o_proj" else layer.mlp, name)

    def _mods(self) -> list[Any]:
        qkv = [getattr(ly.self_attn, n) for ly in self.layers for n in ("q_proj", "k_proj", "v_proj")]
        rest = [self._mod(ly, n) for ly in self.layers for n in self.LINEARS]
        return qkv + rest + ([self.head] if self.head is not None else [])

    @staticmethod
    def _weight(m: Any) -> torch.Tensor:
        w = base_linear(m).weight
        return w if m is base_linear(m) else torch.empty_like(w.detach())

    @staticmethod
    def _cat(layer: Any, name: str) -> torch.Tensor:
        a = layer.self_attn
        parts = [getattr(base_linear(x), name) for x in (a.q_proj, a.k_proj, a.v_proj)]
        return torch.cat(parts).detach()

    @torch.no_grad()
    def refresh(self) -> None:
        for i, ly in enumerate(self.layers):
            a = ly.self_attn
            qkv = (a.q_proj, a.k_proj, a.v_proj)
            if all(x is base_linear(x) for x in qkv):
                torch.cat([x.weight for x in qkv], out=self.w_qkv[i])
            else:
                row = 0
                for x in qkv:
                    n = base_linear(x).weight.shape[0]
                    merged_weight_into(x, self.w_qkv[i][row : row + n])
                    row += n
            if self.b_qkv[i] is not None:  # LoRA leaves biases alone
                torch.cat([base_linear(x).bias for x in qkv], out=self.b_qkv[i])
            for n, w in self.w[i].items():
                m = self._mod(ly, n)
                if m is not base_linear(m):
                    merged_weight_into(m, w)
                else:  # a reference: follow a re-allocated weight (the engine re-captures its graphs)
                    self.w[i][n] = m.weight
        if self.head is not None:
            if self.head is not base_linear(self.head):
                merged_weight_into(self.head, self.w_head)
            else:
                self.w_head = self.head.weight

    @staticmethod
    def supported(layers: list[Any], head: Any | None = None) -> bool:
        """Every linear a plain nn.Linear or a LoRA layer whose merged weight equals its forward;
        no biases on the MLP; one activation class; Qwen RMSNorms."""

        def ok(m: Any) -> bool:
            return lora_parts(m) is not None

        for ly in layers:
            a, m = ly.self_attn, ly.mlp
            lin = [a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj]
            if not all(ok(x) for x in lin) or not hasattr(m, "act_fn"):
                return False
            norms = [ly.input_layernorm, ly.post_attention_layernorm]
            norms += [a.q_norm, a.k_norm] if hasattr(a, "q_norm") else []
            if not all(hasattr(n, "weight") and hasattr(n, "variance_epsilon") for n in norms):
                return False
            biases = [base_linear(x).bias for x in (m.gate_proj, m.up_proj, m.down_proj)]
            if biases != [None, None, None]:
                return False
            if type(m.act_fn) is not type(layers[0].mlp.act_fn):
                return False
        return head is None or (ok(head) and base_linear(head).bias is None)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)
