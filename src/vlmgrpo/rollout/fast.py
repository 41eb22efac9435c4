"""The static-cache rollout engine (`rollout.backend: fast`): Qwen2.5-VL, Qwen3-VL, Qwen2, Qwen3.

Same contract as `rollout.hf.sample` (same prompt encoding, suppressed ids, EOS ids, pad id and
`RolloutBatch` fields), so the trainer can swap backends. What it does differently:

1. Prefill once per prompt, not once per sample: the P distinct prompts (images) go through the
   model's own forward (vision tower included) once, and their KV cache is copied into the G
   slots of each group. HF `generate` runs the vision tower and the prefill P x G times.
2. Decode with a pre-allocated KV cache [layers, 2, B, kv_heads, L, head_dim] and a pre-allocated
   additive attention mask; grouped-query attention is one SDPA call with the query heads of a KV
   head as its "queries" (no K/V repeat, no mask building). Two implementations of the step, same
   maths: the functional step (`decode_ops.pre_attn` / `post_attn` on the layers' weights: one GEMM for
   q/k/v, q and k rotated together, residual adds in the GEMM epilogues, ~half the kernels), used
   for plain layers and for LoRA layers (read as merged sampling copies W + s B A, see
   `decode_ops.FusedWeights`; the trained weights are never written), and the module step (the
   layers' own modules), used for adapters a merge cannot express (DoRA, ...).
   `compile=True` (or env VLMGRPO_FAST_COMPILE=1) torch.compiles the two per-layer functions once
   (every layer reuses them), fusing the small ops; a compile failure falls back, loudly.
3. Every step, sampling included (temperature, top-k, top-p, suppressed ids, per-row EOS stop, the
   sampling log-prob of the chosen token), is tensor code with no host sync, so on CUDA the whole
   step is captured once in a CUDA graph and replayed (`use_graphs`, default: on CUDA). The host
   checks "all rows finished" every `check_every` steps only. A failed capture falls back to
   eager steps (logged; `graph_error`).

4. Finished rows stop costing: at a host check where at most half the stepped rows still decode,
   they move to the front (`_compact`) and the step runs on fewer rows (a graph per row count).
5. FSDP2 (`synced_gpus` with fully_shard'ed units): `gathered` all-gathers every unit once per
   rollout; the decode runs on those full weights with no collective per token.

Positions. Decode tokens are text, so all three M-RoPE components equal one position p, which
makes the 3D rotary embedding an ordinary 1D one: cos/sin come from a table built once with the
model's own rotary module. p for the first new token is the prompt's next position: for image
prompts `n_valid + rope_delta` (the model's `rope_deltas` from the prefill, as in HF generation
and in the training forward), for text-only prompts `n_valid` (HF generate's cumsum positions).

Sampling semantics match HF generate (`suppress_tokens`, temperature, top-k, then top-p with HF's
tie rules); the random draw uses the exponential race argmax(p / E), E ~ Exp(1), which samples
from p exactly (HF uses `torch.multinomial`: same distribution, different random stream).
Sampling log-probs are log_softmax(raw logits / temperature) of the chosen token, as `hf.sample`
and the training forward compute them.

Non-goals: sliding-window layers, dynamic RoPE scaling, MoE blocks, Qwen2-VL (its attention
applies M-RoPE itself), beam search. `sample` falls back to `hf.sample` for those.
"""

from __future__ import annotations

import contextlib
import logging
import os
import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vlmgrpo.rollout import Prompt, RolloutBatch
from vlmgrpo.rollout import hf as hf_rollout
from vlmgrpo.rollout.decode_ops import (
    FusedWeights,
    base_linear,
    draw,
    filter_scores,
    module_class,
    post_attn,
    pre_attn,
    rms,
    rotate_half,
)

log = logging.getLogger(__name__)

SUPPORTED = ("qwen2_5_vl", "qwen3_vl", "qwen2", "qwen3")
MROPE = ("qwen2_5_vl", "qwen3_vl")


def _base(model: Any) -> Any:
    """The transformers model under DDP/peft wrappers (peft's LoRA layers stay in place)."""
    m = getattr(model, "module", model)
    return m.get_base_model() if hasattr(m, "get_base_model") else m


def unsupported_reason(model: Any) -> str | None:
    """None when the engine can run `model`, else a short reason (the caller falls back to HF)."""
    base = _base(model)
    mtype = getattr(base.config, "model_type", "?")
    if mtype not in SUPPORTED:
        return f"model_type {mtype!r} is not one of {', '.join(SUPPORTED)}"
    trunk, head = getattr(base, "model", None), getattr(base, "lm_head", None)
    if trunk is None or head is None:
        return "no .model / .lm_head"
    text = getattr(trunk, "language_model", trunk)
    tcfg = getattr(base.config, "text_config", base.config)
    kinds = set(getattr(tcfg, "layer_types", None) or ["full_attention"])
    if kinds != {"full_attention"}:
        return f"layer types {sorted(kinds)} (sliding-window attention)"
    rope_type = getattr(getattr(text, "rotary_emb", None), "rope_type", "default")
    if "dynamic" in str(rope_type) or "longrope" in str(rope_type):
        return f"rope_type {rope_type!r} changes with the sequence length"
    layer = text.layers[0]
    if not all(
        hasattr(layer, a) for a in ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm")
    ):
        return "decoder layer layout not recognised"
    if hasattr(layer.mlp, "experts"):
        return "MoE blocks"
    return None


@dataclass
class _Sampling:
    temperature: float
    top_p: float
    top_k: int

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def key(self) -> tuple:
        return (self.greedy, self.temperature, self.top_p, self.top_k)


class _State:
    """Static tensors of one decode shape (B rows, L cache slots). A CUDA graph captured for this
    state reads and writes only these, so each replay advances them by one token."""

    def __init__(self, eng: FastEngine, b: int, cap: int, pos_cap: int) -> None:
        dev, dt = eng.device, eng.dtype
        self.b, self.cap, self.pos_cap = b, cap, pos_cap
        self.kv = torch.zeros(eng.n_layers, 2, b, eng.n_kv, cap, eng.head_dim, dtype=dt, device=dev)
        self.k = [self.kv[i, 0] for i in range(eng.n_layers)]  # [B, kv_heads, L, D] views
        self.v = [self.kv[i, 1] for i in range(eng.n_layers)]
        # additive attention bias: 0 = attend, -inf = not (SDPA takes it as is, no per-layer cast)
        self.mask = torch.full((b, 1, 1, cap), float("-inf"), dtype=dt, device=dev)
        self.tok = torch.zeros(b, dtype=torch.long, device=dev)  # input token of the next step
        self.pos = torch.zeros(b, dtype=torch.long, device=dev)  # its rotary position
        self.slot = torch.zeros(1, dtype=torch.long, device=dev)  # its KV slot (same for all rows)
        self.col = torch.zeros(1, dtype=torch.long, device=dev)  # output column it produces
        self.done = torch.zeros(b, dtype=torch.bool, device=dev)
        # a row's token at output column >= stop_at is replaced by EOS (`sample(stop_at=...)`: forced
        # lengths for benches and tests; by default past the cache, so never)
        self.stop_at = torch.full((b,), cap + 1, dtype=torch.long, device=dev)
        self.out_tok = torch.zeros(b, cap, dtype=torch.long, device=dev)
        self.out_logp = torch.zeros(b, cap, dtype=torch.float32, device=dev)
        cos, sin = eng.rope_table(pos_cap)
        self.cos, self.sin = cos, sin  # [pos_cap, D]
        # rotate_half(x) * sin == x.roll(D/2) * sin_signed (first half negated): one roll, no cat
        half = cos.shape[-1] // 2
        sign = torch.cat([-torch.ones(half), torch.ones(half)]).to(dev, dt)
        self.sin_signed = sin * sign
        self.pad = torch.zeros((), dtype=torch.long, device=dev)
        self.eos = torch.zeros(0, dtype=torch.long, device=dev)
        self.suppress = torch.zeros(eng.vocab, dtype=torch.bool, device=dev)
        self.graphs: dict[tuple, Any] = {}
        self.views: dict[int, _State] = {}  # n -> the first n rows (compaction), graphs included

    ROWS = ("mask", "tok", "pos", "done", "stop_at", "out_tok", "out_logp")  # per-row, on dim 0

    def view(self, n: int) -> _State:
        """The first n rows as a state of their own (slices of this one's tensors, so a step on it
        advances those rows; the counters, rotary tables and token ids are shared). Kept, with its
        captured graphs, for later rollouts."""
        if n == self.b:
            return self
        v = self.views.get(n)
        if v is None:
            v = object.__new__(_State)
            v.__dict__.update(self.__dict__)
            v.b, v.kv, v.graphs, v.views = n, self.kv[:, :, :n], {}, {}
            v.k, v.v = [t[:n] for t in self.k], [t[:n] for t in self.v]
            for name in self.ROWS:
                setattr(v, name, getattr(self, name)[:n])
            self.views[n] = v
        return v

    def move_rows(self, src: list[int], dst: list[int]) -> None:
        """Compaction: rows src (still decoding) take the places of rows dst (ended). Their KV is
        copied (an ended row's KV is not needed again); the per-row tensors are swapped, so the
        ended rows' outputs live on at src, outside the rows still stepped."""
        s = torch.tensor(src, dtype=torch.long, device=self.kv.device)
        d = torch.tensor(dst, dtype=torch.long, device=self.kv.device)
        self.kv.index_copy_(2, d, self.kv.index_select(2, s))
        for name in self.ROWS:
            t = getattr(self, name)
            a, b = t.index_select(0, s), t.index_select(0, d)
            t.index_copy_(0, d, a)
            t.index_copy_(0, s, b)

    def set_tokens(self, pad: int, eos: list[int], suppress: list[int]) -> None:
        """Token ids the step reads. Updated in place: a captured graph holds these tensors'
        addresses (a new EOS count means new tensors, so the graphs are dropped)."""
        self.pad.fill_(pad)
        if self.eos.numel() != len(eos):
            self.eos = torch.tensor(eos, dtype=torch.long, device=self.pad.device)
            self.graphs.clear()
            self.views.clear()  # they hold the old tensor
        else:
            self.eos.copy_(torch.tensor(eos, dtype=torch.long))
        self.suppress.zero_()
        if suppress:
            self.suppress[torch.tensor(suppress, dtype=torch.long, device=self.pad.device)] = True


class FastEngine:
    """Rollout engine bound to one model; `sample(...)` mirrors `rollout.hf.sample`.

    use_graphs: capture the decode step in a CUDA graph (None = on CUDA). check_every: decode
    steps between host checks of "every row has ended". len_multiple: the cache length is rounded
    up to it, so that prompts of slightly different lengths reuse one captured graph. compact:
    finished rows stop costing: at a host check where at most half the stepped rows still decode,
    those rows are moved to the front and the step runs on fewer rows (halvings of B, down to
    compact_min).
    """

    def __init__(
        self,
        model: Any,
        *,
        use_graphs: bool | None = None,
        fused: bool | None = None,
        compile: bool = False,
        check_every: int = 16,
        len_multiple: int = 64,
        compact: bool = True,
        compact_min: int = 8,
    ) -> None:
        reason = unsupported_reason(model)
        if reason:
            raise ValueError(f"fast rollout engine: {reason}")
        # Weak: the engine lives in a WeakKeyDictionary keyed by the model, so it must not keep the
        # model alive (it holds only the submodules it runs).
        self._model = weakref.ref(model)
        base = _base(model)
        self.mtype = base.config.model_type
        self.trunk, self.head = base.model, base.lm_head
        self.text = getattr(self.trunk, "language_model", self.trunk)
        self.layers = list(self.text.layers)
        self.norm, self.embed, self.rotary = self.text.norm, self.text.embed_tokens, self.text.rotary_emb
        tcfg = getattr(base.config, "text_config", base.config)
        self.n_layers = len(self.layers)
        self.n_heads = tcfg.num_attention_heads
        self.n_kv = tcfg.num_key_value_heads
        attn = self.layers[0].self_attn
        self.head_dim = getattr(attn, "head_dim", None) or tcfg.hidden_size // self.n_heads
        self.groups = self.n_heads // self.n_kv
        self.scaling = getattr(attn, "scaling", self.head_dim**-0.5)
        self.qk_norm = hasattr(attn, "q_norm")
        p = self.head.weight
        self.device, self.dtype = p.device, p.dtype
        self.vocab = p.shape[0]
        self.use_graphs = (self.device.type == "cuda") if use_graphs is None else use_graphs
        if self.use_graphs and self.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA model")
        self.check_every = max(1, check_every)
        # compaction: at a host check, once at most half the stepped rows are still decoding, they
        # move to the front and only the first ceil(n/2^k) rows are stepped (graphs for every such
        # size are captured up front); never below compact_min rows
        self.compact, self.compact_min = bool(compact), max(1, compact_min)
        self.len_multiple = max(1, len_multiple)
        self.max_states = 2
        self.states: dict[tuple, _State] = {}
        self._weights_key = self._weights_ptr()
        self.sampling = _Sampling(1.0, 1.0, 0)
        self.stats: dict[str, float] = {}
        self.graph_error = ""
        # The functional step (fused q/k/v GEMM, joint RoPE, residuals in GEMM epilogues: about half
        # the kernels of the module step) for plain layers; the module step runs LoRA layers.
        # LoRA layers run as merged sampling copies (W + s B A, see FusedWeights) unless
        # VLMGRPO_FAST_LORA_MERGE=0; adapters a merge cannot express (DoRA, ...) use the module step.
        can_fuse = (
            FusedWeights.supported(self.layers, self.head) and module_class(self.embed) is torch.nn.Embedding
        )
        if fused is None and os.environ.get("VLMGRPO_FAST_LORA_MERGE", "1") == "0":
            fused = False if _has_adapters(self.layers, self.head) else None
        if fused and not can_fuse:
            raise ValueError(
                "fast rollout engine: fused=True needs nn.Linear layers or mergeable LoRA adapters "
                "(not DoRA, lora_bias or fan_in_fan_out)"
            )
        self.fused = FusedWeights(self.layers, self.head) if (can_fuse if fused is None else fused) else None
        self.compile, self.compile_error = bool(compile) and self.fused is not None, ""
        self._pre, self._post = pre_attn, post_attn
        # one activation object for every layer (stateless, same class): a compiled function that
        # received 36 different module objects would recompile for each. Only the fused step uses
        # it; an MLP without `act_fn` (Liger's SwiGLU MLP) is not fusable and runs its own forward.
        self._act = getattr(self.layers[0].mlp, "act_fn", None)
        self._compiled = False
        if self.compile:  # one compiled function each, reused by every layer (same shapes)
            self._pre = torch.compile(pre_attn, dynamic=False)
            self._post = torch.compile(post_attn, dynamic=False)

    @property
    def model(self) -> Any:
        m = self._model()
        if m is None:
            raise RuntimeError("the engine's model has been deleted")
        return m

    # ------------------------------------------------------------------ setup
    def _weights_ptr(self) -> tuple:
        return (
            self.embed.weight.data_ptr(),
            self.head.weight.data_ptr(),
            self.layers[-1].mlp.down_proj.weight.data_ptr(),
        )

    def rope_table(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [n, head_dim] for 1D positions 0..n-1 from the model's own rotary module (for
        M-RoPE models the three components are equal, as for every text token)."""
        pos = torch.arange(n, device=self.device)
        pos = pos.view(1, 1, n).expand(3, 1, n) if self.mtype in MROPE else pos.view(1, n)
        dummy = torch.zeros(1, dtype=self.dtype, device=self.device)
        cos, sin = self.rotary(dummy, pos)
        if cos.dim() != 3:
            raise ValueError(f"rotary embedding returned shape {tuple(cos.shape)}, expected [1, n, D]")
        return cos[0].contiguous(), sin[0].contiguous()

    def free(self) -> None:
        """Drop the KV caches and captured graphs (before a memory-hungry update, say)."""
        self.states.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _state_for(self, b: int, need_len: int, need_pos: int) -> _State:
        """A state with b rows and room for need_len tokens (reused while its cache is at most twice
        the rounded need); the two most recently used states are kept, with their graphs."""
        cap = -(-need_len // self.len_multiple) * self.len_multiple
        pos_cap = -(-max(need_pos, cap) // 256) * 256
        if self._weights_ptr() != self._weights_key:  # weights re-allocated: graphs read stale pointers
            self.states.clear()
            self._weights_key = self._weights_ptr()
        for key, st in list(self.states.items()):
            if st.b == b and need_len <= st.cap <= 2 * cap and st.pos_cap >= need_pos:
                self.states.pop(key)
                self.states[key] = st  # most recently used last
                return st
        while len(self.states) >= self.max_states:
            self.states.pop(next(iter(self.states)))  # free before allocating
        st = _State(self, b, cap, pos_cap)
        self.states[(b, cap, pos_cap)] = st
        return st

    # ------------------------------------------------------------------ one decode step
    def _attn(self, attn: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, i: int, st: _State):
        """x [B, 1, H] -> [B, 1, H]; writes this token's K/V into slot `st.slot` of layer i."""
        b, d = x.shape[0], self.head_dim
        q = attn.q_proj(x).view(b, 1, self.n_heads, d)
        k = attn.k_proj(x).view(b, 1, self.n_kv, d)
        v = attn.v_proj(x).view(b, 1, self.n_kv, d)
        if self.qk_norm:  # Qwen3: RMSNorm over head_dim before RoPE
            q, k = attn.q_norm(q), attn.k_norm(k)
        q = q * cos + rotate_half(q) * sin  # cos [B, 1, 1, D]
        k = k * cos + rotate_half(k) * sin
        st.k[i].index_copy_(2, st.slot, k.transpose(1, 2))
        st.v[i].index_copy_(2, st.slot, v.transpose(1, 2))
        # GQA without repeating K/V: the `groups` query heads of one KV head are its "queries".
        q = q.view(b, self.n_kv, self.groups, d)
        with self._sdpa_backends():
            o = F.scaled_dot_product_attention(q, st.k[i], st.v[i], attn_mask=st.mask, scale=self.scaling)
        return attn.o_proj(o.reshape(b, 1, self.n_heads * d))

    def _sdpa_backends(self) -> Any:
        """On CUDA pin the masked decode attention to memory-efficient attention (math as the
        fallback), so that warm-up, capture and eager runs use one kernel; CPU keeps its default."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])

    def _sample(self, st: _State, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """logits [B, V] fp32 -> (token [B], log-prob of it under softmax(logits / T) [B])."""
        s = self.sampling
        x = logits if s.greedy else logits / s.temperature
        if s.greedy:
            tok = logits.masked_fill(st.suppress, float("-inf")).argmax(-1)
        else:
            tok = draw(filter_scores(x, st.suppress, s.top_k, s.top_p).softmax(-1))
        tok = torch.where(st.col >= st.stop_at, st.eos[:1], tok)  # forced lengths (sample(stop_at))
        logp = x.gather(1, tok[:, None])[:, 0] - torch.logsumexp(x, -1)
        return tok, logp

    def _emit(self, st: _State, tok: torch.Tensor, logp: torch.Tensor) -> None:
        """Record this step's tokens (pad for rows already ended, as HF generate) and advance."""
        tok = torch.where(st.done, st.pad, tok)
        logp = logp.masked_fill(st.done, 0.0)
        st.out_tok.index_copy_(1, st.col, tok[:, None])
        st.out_logp.index_copy_(1, st.col, logp[:, None])
        st.done |= (tok[:, None] == st.eos).any(-1)
        st.tok.copy_(tok)
        st.col += 1

    def _step(self, st: _State) -> None:
        if self.fused is not None:
            return self._step_fused(st)
        st.mask.index_fill_(3, st.slot, 0.0)
        h = self.embed(st.tok)[:, None]  # [B, 1, H]
        cos = st.cos[st.pos][:, None, None]  # [B, 1, 1, D]
        sin = st.sin[st.pos][:, None, None]
        for i, layer in enumerate(self.layers):
            h = h + self._attn(layer.self_attn, layer.input_layernorm(h), cos, sin, i, st)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        logits = self.head(self.norm(h)[:, 0]).float()
        tok, logp = self._sample(st, logits)
        st.pos += 1
        st.slot += 1
        self._emit(st, tok, logp)

    def _step_fused(self, st: _State) -> None:
        """The decode step on raw weights (see pre_attn / post_attn); same maths as `_step`."""
        fw, b = self.fused, st.b
        st.mask.index_fill_(3, st.slot, 0.0)
        h = F.embedding(st.tok, self.embed.weight)  # [B, hidden]
        cos = st.cos[st.pos][:, None]  # [B, 1, D], broadcast over heads
        sin_s = st.sin_signed[st.pos][:, None]
        for i, ly in enumerate(self.layers):
            a = ly.self_attn
            q, k, v = self._pre(
                h,
                ly.input_layernorm.weight,
                fw.w_qkv[i],
                fw.b_qkv[i],
                a.q_norm.weight if self.qk_norm else None,
                a.k_norm.weight if self.qk_norm else None,
                cos,
                sin_s,
                ly.input_layernorm.variance_epsilon,
                a.q_norm.variance_epsilon if self.qk_norm else 0.0,
                self.n_heads,
                self.n_kv,
                self.head_dim,
            )
            st.k[i].index_copy_(2, st.slot, k)
            st.v[i].index_copy_(2, st.slot, v)
            with self._sdpa_backends():
                o = F.scaled_dot_product_attention(q, st.k[i], st.v[i], attn_mask=st.mask, scale=self.scaling)
            w = fw.w[i]
            h = self._post(
                h,
                o.reshape(b, self.n_heads * self.head_dim),
                w["o_proj"],
                base_linear(a.o_proj).bias,
                ly.post_attention_layernorm.weight,
                w["gate_proj"],
                w["up_proj"],
                w["down_proj"],
                self._act,
                ly.post_attention_layernorm.variance_epsilon,
            )
        logits = F.linear(rms(h, self.norm.weight, self.norm.variance_epsilon), fw.w_head).float()
        tok, logp = self._sample(st, logits)
        st.pos += 1
        st.slot += 1
        self._emit(st, tok, logp)

    def _compact_sizes(self, b: int) -> list[int]:
        """The row counts the decode step may run on: b, then halvings (rounded up) down to
        compact_min."""
        sizes = [b]
        while self.compact and sizes[-1] > self.compact_min and sizes[-1] > 1:
            sizes.append(max(self.compact_min, -(-sizes[-1] // 2)))
        return sizes

    def _compact(self, st: _State, n: int, live: int, sizes: list[int], order: list[int]) -> int:
        """The rows to step from now on: the smallest size that holds the `live` rows still
        decoding among the first n; those beyond it move into ended rows' places (`order`, the
        output row of each state row, follows the moves)."""
        m = min((x for x in sizes if x >= live), default=n)
        if m >= n:
            return n
        done = st.done[:n].tolist()
        src = [i for i in range(m, n) if not done[i]]
        dst = [i for i in range(m) if done[i]][: len(src)]
        if src:
            st.move_rows(src, dst)
            for i, j in zip(src, dst):
                order[i], order[j] = order[j], order[i]
        return m

    def _graph(self, st: _State) -> Any:
        """The CUDA graph of one decode step for this state and sampling setting (captured once)."""
        key = self.sampling.key()
        g = st.graphs.get(key)
        if g is None:
            # Warm up on a side stream (cuBLAS handles, autotuning), then capture one step. Counters
            # start at 0 so the warm-up writes stay in bounds; `_prefill` resets everything after.
            for t in (st.slot, st.pos, st.col):
                t.zero_()
            st.done.zero_()
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(2):
                    self._step(st)
            torch.cuda.current_stream().wait_stream(s)
            for t in (st.slot, st.pos, st.col):
                t.zero_()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                self._step(st)
            st.graphs[key] = g
        return g

    def _ensure_compiled(self, st: _State) -> None:
        """Compile (first call) outside any graph capture; on failure use the same maths uncompiled."""
        if not self.compile or self._compiled:
            return
        try:
            for t in (st.slot, st.pos, st.col):
                t.zero_()
            self._step(st)  # garbage in, garbage out: `_prefill` resets the state afterwards
            self._compiled = True
        except Exception as e:  # noqa: BLE001 - inductor / triton errors vary
            log.warning("fast rollout: torch.compile failed (%s); decoding uncompiled", e)
            self.compile, self.compile_error = False, f"{type(e).__name__}: {str(e)[:300]}"
            self._pre, self._post = pre_attn, post_attn

    # ------------------------------------------------------------------ prefill
    def _prefill(self, enc: dict[str, torch.Tensor], st: _State, group: int, has_images: bool) -> None:
        """Run the P prompts through the model once; copy their KV into the G slots of each group;
        sample the first token of every row; set the decode counters."""
        ids, mask = enc["input_ids"], enc["attention_mask"]
        n_prompt, plen = ids.shape
        rows = torch.arange(n_prompt, device=self.device).repeat_interleave(group)
        inputs = {k: v for k, v in enc.items() if isinstance(v, torch.Tensor)}
        n_valid = mask.long().sum(1)
        if not has_images:
            # HF generate's positions for left-padded text (cumsum); the VLM expands them to 3D
            pos = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
            inputs["position_ids"] = pos
        if hasattr(self.trunk, "rope_deltas"):
            self.trunk.rope_deltas = None
        out = self.trunk(**inputs, use_cache=True)
        hidden = out.last_hidden_state[:, -1]  # [P, H] (left padding: the last column is real)
        next_pos = n_valid.clone()
        if has_images and self.mtype in MROPE:
            delta = getattr(self.trunk, "rope_deltas", None)
            if delta is None:
                raise RuntimeError("the prefill set no rope_deltas: cannot place the decode tokens")
            next_pos = next_pos + delta.reshape(-1).to(next_pos)
        kv = out.past_key_values
        st.kv.zero_()  # also clears the warm-up's writes
        for i in range(self.n_layers):
            k, v = _layer_kv(kv, i)  # [P, kv_heads, plen, D]
            st.k[i][:, :, :plen].copy_(k[rows])
            st.v[i][:, :, :plen].copy_(v[rows])
        del out, kv
        st.mask.fill_(float("-inf"))
        st.mask[:, 0, 0, :plen].masked_fill_(mask[rows].bool(), 0.0)
        st.out_tok.fill_(int(st.pad))
        st.out_logp.zero_()
        st.done.zero_()
        st.col.zero_()
        st.slot.fill_(plen)
        st.pos.copy_(next_pos[rows])
        logits = self.head(hidden).float()[rows]  # [B, V]
        tok, logp = self._sample(st, logits)
        self._emit(st, tok, logp)

    # ------------------------------------------------------------------ the rollout
    @torch.no_grad()
    def sample(
        self,
        proc: Any,
        prompts: list[Prompt],
        group_size: int,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_new_tokens: int = 64,
        return_logps: bool = False,
        generator_seed: int | None = None,
        stop_at: list[int] | None = None,
    ) -> RolloutBatch:
        """Same arguments and result as `rollout.hf.sample` (B = len(prompts) x group_size rows).
        stop_at [B] (benches, tests): row r emits EOS as its token number stop_at[r] (1-based) if
        it has not ended before: a policy's length spread forced on a model that never ends."""
        import time

        t0 = time.perf_counter()
        model, dev = self.model, self.device
        enc, vrows = hf_rollout.encode_prompts(proc, prompts, 1, dev)
        t_enc = _sync_time(dev)  # the processor (CPU) and the copy to the device
        tok = hf_rollout.tokenizer_of(proc)
        pad_id = int(tok.pad_token_id)
        eos = hf_rollout.eos_ids(proc, model)
        self.sampling = _Sampling(float(temperature), float(top_p), int(top_k or 0))
        has_images = any(p.images for p in prompts)
        g, n_prompt = group_size, len(prompts)
        b, plen = n_prompt * g, enc["input_ids"].shape[1]
        need_pos = plen + max_new_tokens + 1
        st = self._state_for(b, plen + max_new_tokens, need_pos)
        st.set_tokens(pad_id, eos, hf_rollout.suppressed_ids(proc, self.vocab))
        if stop_at is not None:
            if len(stop_at) != b or not eos:
                raise ValueError(f"stop_at: {len(stop_at)} lengths for {b} rows (and EOS ids {eos})")
            st.stop_at.copy_(torch.tensor(stop_at, dtype=torch.long).clamp_min(1) - 1)
        else:
            st.stop_at.fill_(st.cap + 1)
        sizes = self._compact_sizes(b)
        if self.fused is not None:
            self.fused.refresh()  # the optimiser changed the weights (or adapters) since the last rollout
        if generator_seed is not None:
            torch.manual_seed(generator_seed)
        was_training = model.training
        model.eval()
        try:
            graphs: dict[int, Any] = {}
            self._ensure_compiled(st)
            if self.use_graphs:
                try:  # every size compaction can step, before the prefill (capture clobbers the state)
                    graphs = {n: self._graph(st.view(n)) for n in sizes}
                except RuntimeError as e:  # keep going without graphs, loudly
                    log.warning("fast rollout: CUDA graph capture failed (%s); decoding without graphs", e)
                    self.use_graphs, self.graph_error = False, f"{type(e).__name__}: {e}"
                    st.graphs.clear()
                    st.views.clear()
                    graphs = {}
                    torch.cuda.synchronize()
            t_pre = _sync_time(dev)
            self._prefill(enc, st, g, has_images)
            if int(st.pos.max()) + max_new_tokens > st.pos_cap:
                raise RuntimeError("rotary table too short")  # cannot happen for text decode tokens
            t1 = _sync_time(dev)
            steps, row_steps, n = 1, 0, b  # the first n rows of st are stepped
            order = list(range(b))  # order[i]: the output row that state row i holds
            while steps < max_new_tokens:
                if graphs:
                    graphs[n].replay()
                else:
                    self._step(st.view(n))
                steps, row_steps = steps + 1, row_steps + n
                check = steps % self.check_every == 0 or (not graphs and steps % 4 == 0)
                if check:
                    live = int((~st.done[:n]).sum())  # the host's only sync in the loop
                    if live == 0:
                        break
                    n = self._compact(st, n, live, sizes, order)
            t2 = _sync_time(dev)
        finally:
            model.train(was_training)
        where = torch.tensor(sorted(range(b), key=order.__getitem__), device=dev)  # row -> state row
        out_tok, out_logp = st.out_tok[where, :steps], st.out_logp[where]
        from vlmgrpo.grpo.core import completion_mask_from_eos

        cmask = completion_mask_from_eos(out_tok, eos, pad_id)
        c_len = max(1, int(cmask.sum(1).max()))  # HF generate stops once every row has ended
        completion_ids = out_tok[:, :c_len].clone()
        cmask = cmask[:, :c_len]
        completion_ids = torch.where(cmask.bool(), completion_ids, torch.full_like(completion_ids, pad_id))
        sample_logps = (out_logp[:, :c_len] * cmask).clone() if return_logps else None
        rows = [i for i in range(n_prompt) for _ in range(g)]
        ridx = torch.tensor(rows, device=dev)
        texts = tok.batch_decode(completion_ids, skip_special_tokens=True)
        prefills = [p.prefill for p in prompts for _ in range(g)]
        extra = {k: v[ridx] for k, v in enc.items() if k in ("mm_token_type_ids", "token_type_ids")}
        gen_tokens = int(cmask.sum())
        self.stats = {
            "prefill_s": t1 - t0,  # everything before the first decode step, of which:
            "encode_s": t_enc - t0,  # processor + host-to-device copy
            "forward_s": t1 - t_pre,  # vision tower + prompt forward + KV copy + first token
            "decode_s": t2 - t1,
            "decode_steps": float(steps),
            "gen_tokens": float(gen_tokens),
            "decode_ms_per_step": 1e3 * (t2 - t1) / max(1, steps - 1),
            # rows stepped over all decode steps / (B x steps): what compaction left of the work
            "decode_rows_frac": row_steps / max(1, b * (steps - 1)),
        }
        return RolloutBatch(
            prompt_ids=enc["input_ids"][ridx],
            prompt_mask=enc["attention_mask"][ridx],
            completion_ids=completion_ids,
            completion_mask=cmask,
            vision_rows=[vrows[r] for r in rows],
            prompt_extra=extra,
            completions=[pf + t for pf, t in zip(prefills, texts)],
            sample_logps=sample_logps,
            group_size=group_size,
        )


def _has_adapters(layers: list[Any], head: Any) -> bool:
    mods = [head] + [m for ly in layers for m in (*ly.self_attn.children(), *ly.mlp.children())]
    return any(m is not base_linear(m) for m in mods)


def _sync_time(dev: torch.device) -> float:
    import time

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter()


def _layer_kv(cache: Any, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys, values) [B, kv_heads, T, D] of layer i of a transformers DynamicCache (4.x and 5.x)."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return layers[i].keys, layers[i].values
    return cache.key_cache[i], cache.value_cache[i]


_ENGINES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_WARNED: set[str] = set()


def engine_for(model: Any, use_graphs: bool | None = None, compile: bool | None = None) -> FastEngine:
    """The engine bound to `model` (created on first use; it keeps its caches and graphs).
    compile: torch.compile the per-layer decode functions (None: env VLMGRPO_FAST_COMPILE=1)."""
    if compile is None:
        compile = os.environ.get("VLMGRPO_FAST_COMPILE", "0") == "1"
    eng = _ENGINES.get(model)
    stale = eng is not None and (
        (use_graphs is not None and eng.use_graphs != use_graphs)
        or (compile and not eng.compile and not eng.compile_error)
    )
    if eng is None or stale:
        eng = _ENGINES[model] = FastEngine(model, use_graphs=use_graphs, compile=compile)
    return eng


def fsdp_units(model: Any) -> list[Any]:
    """The FSDP2 units (fully_shard'ed modules) in `model`, in module order ([] when not sharded)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def gathered(units: list[Any]):
    """FSDP2: the full weights on this rank for one rollout. Every unit is all-gathered once (one
    collective per unit, the same order on every rank), stays unsharded through the rollout (its
    forwards do not reshard), and is resharded at the end. Inside, the decode loop runs on local
    full weights with no collective per token, so ranks need not decode in lock step (HF generate
    with synced_gpus all-gathers every unit for every token). Costs the full weights' memory on
    each rank during the rollout."""
    for m in units:
        m.set_reshard_after_forward(False, recurse=False)
    try:
        for m in units:
            m.unshard()
        yield
    finally:
        for m in units:
            m.reshard()
            m.set_reshard_after_forward(True, recurse=False)  # dist.wrap's setting (vlmgrpo's only)


def sample(
    model: Any,
    proc: Any,
    prompts: list[Prompt],
    group_size: int,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    max_new_tokens: int = 64,
    return_logps: bool = False,
    generator_seed: int | None = None,
    use_graphs: bool | None = None,
    compile: bool | None = None,
    synced_gpus: bool = False,
) -> RolloutBatch:
    """`rollout.hf.sample` with the static-cache engine; falls back to HF generate (logged once)
    for architectures the engine does not support. FSDP2 (`synced_gpus` with fully_shard'ed units):
    the weights are gathered once for the rollout (`gathered`), not per token; other sharding
    under synced_gpus goes to HF generate."""
    units = fsdp_units(model) if synced_gpus else []
    reason = unsupported_reason(model)
    if synced_gpus and not reason:
        if not units:
            reason = "synced_gpus without FSDP2 units"
        elif os.environ.get("VLMGRPO_FAST_FSDP", "1") == "0":
            reason = "VLMGRPO_FAST_FSDP=0 (FSDP2 rollout through HF generate)"
    kw = dict(
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        max_new_tokens=max_new_tokens,
        return_logps=return_logps,
        generator_seed=generator_seed,
    )
    if reason:
        if reason not in _WARNED:
            _WARNED.add(reason)
            log.warning("fast rollout: %s; using HF generate", reason)
        return hf_rollout.sample(model, proc, prompts, group_size, synced_gpus=synced_gpus, **kw)
    if units:
        with gathered(units):
            eng = engine_for(model, use_graphs, compile)  # built on full weights (q/k/v copies)
            return eng.sample(proc, prompts, group_size, **kw)
    eng = engine_for(model, use_graphs, compile)
    return eng.sample(proc, prompts, group_size, **kw)


def choose_backend(name: str, model: Any) -> str:
    """ "fast" or "hf" for a configured `rollout.backend` ("auto": fast on CUDA when supported)."""
    if name == "auto":
        dev = next(_base(model).parameters()).device
        return "fast" if dev.type == "cuda" and unsupported_reason(model) is None else "hf"
    return name
