"""Time vlmgrpo's GRPO step on one GPU against HF generate and TRL, on random-init models of real shapes.

Workload (defaults, the issue's): 8 prompts, each one 448x448 image (256 vision tokens) plus text
(prompt ~304 tokens), G = 8 completions each (64 rows), 256 new tokens, temperature 1. Models are
built in bf16 from Qwen2.5-VL-3B/7B's public config values with random weights (speed does not
depend on the values; nothing is downloaded); the tokenizer is vlmgrpo's offline tiny BPE, so ids
past it are suppressed as in `rollout.hf` (the logits still cover the full vocabulary).

Sections, per model (each timed after a warm-up, with its peak GPU memory; an error in one is
recorded and the others still run):
  rollout_fast  vlmgrpo's static-cache engine (rollout/fast.py), CUDA graphs on
  check         greedy: engine with graphs == engine without == HF generate (token agreement);
                sampling log-probs vs the training forward (max / mean |diff| over completion tokens)
  rollout_hf    HF generate through rollout/hf.py (the previous backend)
  train         grpo/fastpath.update: token-budget micro-batches, one vision pass per image,
                fp32 Adam states for bf16 weights (AdamWFP32State); MFU = bench/flops.py model
                FLOPs / t / 989e12 (mfu_old: the former 6 x params x tokens)
  step          rollout + rewards (completion length) + advantages + update, end to end
  rollout_lengths  (--eos-lengths) EOS forced at per-row lengths drawn like a real policy's spread:
                the engine with compaction (finished rows stop costing) vs without, and HF generate
  rollout_lora  (--lora) peft LoRA adapters: HF generate (unmerged), the engine's module step, and
                its fused step on merged sampling copies (+ compiled with --compile); greedy
                agreement, log-probs vs the training forward, base weights bit-identical
  rollout_fsdp2 (--fsdp2, last) the model sharded by FSDP2 on a 1-rank process group: HF generate
                with synced_gpus (all-gathers per token) vs the engine (weights gathered once)
  seed_a        (3b) seed A's full fine-tune: 4 images (224x224) x 8 chains x 512 tokens, AdamW,
                one update; its peak memory (must fit in 80 GB without offload)
then TRL 1.13 GRPOTrainer's step through ../shared/anchors/trl_anchor.py in a subprocess (needs the
trl/datasets/dill/multiprocess wheels on PYTHONPATH), same workload, same GPU, same run.

usage (GPU):  PYTHONUNBUFFERED=1 python bench/bench_step.py --out bench/out --trl path/to/trl_anchor.py
usage (CPU):  python bench/bench_step.py --tiny --out /tmp/bench     # tiny shapes, every code path
Writes OUT/bench.json and OUT/bench.md (the table for bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
from pathlib import Path

# Fewer fragmentation stalls next to a full GPU (the caching allocator's "free all and retry").
# The TRL subprocess gets the environment it was measured with (see run_trl).
_USER_ALLOC_CONF = os.environ.get("PYTORCH_CUDA_ALLOC_CONF")
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flops  # noqa: E402  (bench/flops.py: what each pass runs, in FLOPs)

T0 = time.perf_counter()
PEAK_FLOPS = flops.PEAK_BF16["H100 SXM"]  # dense bf16; the H200's is the same (bench/flops.py)

# Public config.json values of Qwen/Qwen2.5-VL-3B-Instruct and Qwen/Qwen2.5-VL-7B-Instruct.
_VISION = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
    hidden_act="silu",
    in_chans=3,
    tokens_per_second=2,
)
_ROPE = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}
SHAPES = {
    "3b": dict(
        text=dict(
            vocab_size=151936,
            hidden_size=2048,
            intermediate_size=11008,
            num_hidden_layers=36,
            num_attention_heads=16,
            num_key_value_heads=2,
            max_position_embeddings=128000,
            rms_norm_eps=1e-6,
            rope_parameters=_ROPE,
            tie_word_embeddings=True,
        ),
        vision=dict(_VISION, out_hidden_size=2048),
        tie=True,
    ),
    "7b": dict(
        text=dict(
            vocab_size=152064,
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            max_position_embeddings=128000,
            rms_norm_eps=1e-6,
            rope_parameters=_ROPE,
            tie_word_embeddings=False,
        ),
        vision=dict(_VISION, out_hidden_size=3584),
        tie=False,
    ),
    "tiny": dict(  # the CPU smoke test: every code path, seconds
        text=dict(
            vocab_size=832,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
            tie_word_embeddings=True,
        ),
        vision=dict(
            _VISION,
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            fullatt_block_indexes=[1],
        ),
        tie=True,
    ),
}
# tiny with its own LM head: a CPU check of rollout_fsdp2 (dist.wrap cannot shard a tied head yet)
SHAPES["tiny-untied"] = dict(
    text=dict(SHAPES["tiny"]["text"], tie_word_embeddings=False), vision=SHAPES["tiny"]["vision"], tie=False
)
# 3B's widths with 4 layers: the fp32 exactness check of the engine on the GPU (graphs on)
SHAPES["3b-4layer"] = dict(
    text=dict(SHAPES["3b"]["text"], num_hidden_layers=4),
    vision=dict(SHAPES["3b"]["vision"], depth=4, fullatt_block_indexes=[3]),
    tie=True,
)
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
SEED_A_SYSTEM = "You are a helpful assistant that describes images in detail."
SEED_A_USER = (
    "Describe this image in detail. Be specific about visual elements, colors, shapes, text, and any other "
    "important features."
)


def log(*a: object) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s]", *a, flush=True)


# ---------------------------------------------------------------------------------------- building


def build_full_tokenizer(n_regular: int = 151643):
    """A Qwen2Tokenizer with Qwen's vocabulary size: vlmgrpo's offline BPE (the tokens that text
    encodes to), filled with byte-level filler tokens (decodable, never produced by encoding) up to
    `n_regular`, then Qwen's special tokens at Qwen's ids (151643...). Only the embedding rows past
    the tokenizer (and the vision / role tokens) are suppressed, as with the real model, so a
    random policy rarely samples EOS (~3 ids in 152k) and runs to max_new_tokens like TRL's anchor."""
    import itertools

    from tokenizers import AddedToken
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    from vlmgrpo.models.tiny import (
        CHAT_TEMPLATE,
        DEFAULT_VOCAB_SIZE,
        EOS_TOKEN,
        PAD_TOKEN,
        QWEN_SPECIAL_TOKENS,
        _bytes_to_unicode,
        _train_bpe,
    )

    merges, vocab_json = _train_bpe(DEFAULT_VOCAB_SIZE, 4000, 0)
    vocab: dict[str, int] = json.loads(vocab_json)
    alphabet = sorted(_bytes_to_unicode().values())
    for n in (2, 3):
        for t in itertools.product(alphabet, repeat=n):
            if len(vocab) >= n_regular:
                break
            vocab.setdefault("".join(t), len(vocab))
    for t in QWEN_SPECIAL_TOKENS:
        vocab[t] = len(vocab)
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=[tuple(m) for m in merges],
        unk_token=None,
        bos_token=None,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=32768,
    )
    tok.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS], special_tokens=True
    )
    tok.chat_template = CHAT_TEMPLATE
    assert tok.convert_tokens_to_ids("<|endoftext|>") == n_regular, tok.convert_tokens_to_ids("<|endoftext|>")
    return tok


def build_processor(full_vocab: bool = True):
    """Offline tokenizer + Qwen2.5-VL's image processing (patch 14, merge 2, CLIP normalisation)."""
    from transformers import Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    from vlmgrpo.models.tiny import CHAT_TEMPLATE, build_tokenizer

    tok = build_full_tokenizer() if full_vocab else build_tokenizer()
    tok.padding_side = "left"
    kw = dict(patch_size=14, temporal_patch_size=2, merge_size=2, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    ip = Qwen2VLImageProcessor(size={"shortest_edge": 3136, "longest_edge": 12845056}, **kw)
    vp = Qwen2VLVideoProcessor(size={"shortest_edge": 128 * 28 * 28, "longest_edge": 768 * 28 * 28}, **kw)
    return Qwen2_5_VLProcessor(
        image_processor=ip, tokenizer=tok, video_processor=vp, chat_template=CHAT_TEMPLATE
    )


def build_model(shape: str, proc, device, dtype):
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tok = proc.tokenizer
    ids = {
        t: tok.convert_tokens_to_ids(t)
        for t in (
            "<|image_pad|>",
            "<|video_pad|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|endoftext|>",
            "<|im_end|>",
        )
    }
    s = SHAPES[shape]
    text = dict(
        s["text"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    cfg = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=s["vision"],
        tie_word_embeddings=s["tie"],
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen2_5_VLForConditionalGeneration(cfg)
    finally:
        torch.set_default_dtype(prev)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]
    )
    return model


def make_image(size: int, seed: int):
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 255, 3)))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        x, y = (int(v) for v in rng.integers(0, size - size // 6, 2))
        r = int(rng.integers(size // 20, size // 6))
        fill = tuple(int(c) for c in rng.integers(0, 255, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)([x, y, x + r, y + r], fill=fill)
    return img


def make_prompts(proc, n: int, size: int, target_len: int, seed: int = 0):
    """n one-image prompts whose questions pad the prompt to about `target_len` tokens (TRL's 304)."""
    import random

    from vlmgrpo.rollout import Prompt
    from vlmgrpo.rollout.hf import render_prompt

    words = [
        "what",
        "how",
        "many",
        "shapes",
        "colors",
        "objects",
        "are",
        "there",
        "in",
        "this",
        "image",
        "describe",
        "the",
        "left",
        "right",
    ]
    rng = random.Random(seed)
    out = []
    for i in range(n):
        img = make_image(size, seed * 1000 + i)
        q: list[str] = []
        while True:
            p = Prompt(
                messages=[
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " ".join(q)}]}
                ],
                images=[img],
                text=" ".join(q),
            )
            enc = proc(text=[render_prompt(proc, p)], images=[img], return_tensors="pt")
            if enc["input_ids"].shape[1] >= target_len or len(q) > 400:
                break
            q.append(rng.choice(words))
        out.append(p)
    return out


def seed_a_prompts(n: int, size: int, seed: int = 1):
    from vlmgrpo.rollout import Prompt

    msgs = [
        {"role": "system", "content": SEED_A_SYSTEM},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": SEED_A_USER}]},
    ]
    return [
        Prompt(messages=msgs, images=[make_image(size, seed * 1000 + i)], text=SEED_A_USER) for i in range(n)
    ]


# ---------------------------------------------------------------------------------------- measuring


class Recorder:
    def __init__(self, out: Path, budget_s: float) -> None:
        self.out, self.budget_s = out, budget_s
        self.only: set[str] = set()
        self.data: dict = {"sections": {}}

    def time_left(self) -> float:
        return self.budget_s - (time.perf_counter() - T0)

    @contextlib.contextmanager
    def section(self, name: str, need_s: float = 0.0):
        """Record {name: {...}}; errors are recorded, not raised; skipped if too little time is left."""
        import torch

        rec: dict = {}
        if self.only and name.split("/")[-1] not in self.only:
            yield None
            return
        if self.time_left() < need_s:
            rec["skipped"] = f"time budget: {self.time_left():.0f}s left, needs ~{need_s:.0f}s"
            log(f"SKIP {name}: {rec['skipped']}")
            self.data["sections"][name] = rec
            self.save()
            yield None
            return
        log(f"BEGIN {name}")
        retries = 0
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            retries = torch.cuda.memory_stats().get("num_alloc_retries", 0)
        t = time.perf_counter()
        try:
            yield rec
        except Exception as e:  # noqa: BLE001 - a benchmark records failures and goes on
            rec["error"] = f"{type(e).__name__}: {str(e)[:600]}"
            traceback.print_exc()
            if torch.cuda.is_available() and "out of memory" in str(e).lower():
                gc.collect()
                torch.cuda.empty_cache()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            rec["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            rec["alloc_retries"] = torch.cuda.memory_stats().get("num_alloc_retries", 0) - retries
        rec["section_s"] = round(time.perf_counter() - t, 2)
        self.data["sections"][name] = rec
        log(f"END {name}: " + json.dumps({k: v for k, v in rec.items() if not isinstance(v, (list, dict))}))
        self.save()

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "bench.json").write_text(json.dumps(self.data, indent=1, default=str))


def sync() -> float:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def mfu(n: int, tokens: float, seconds: float) -> float:
    """The formula before issue #20 (6 x all params x all tokens), kept as `mfu_old` for comparison."""
    return flops.old_mfu_flops(n, tokens) / seconds / PEAK_FLOPS


def train_flops(shape: str, batch, shared_vision: bool, group: int) -> dict:
    """bench/flops.py's count of one training pass over `batch`: per-row real prompt and completion
    tokens; the tower on each unique image (`shared_vision`) or on every row's image."""
    s = SHAPES[shape]
    fs = flops.QwenVLShape.from_config(s["text"], s["vision"])
    rows = list(zip(batch.prompt_mask.sum(1).tolist(), batch.completion_mask.sum(1).tolist()))
    grids = [tuple(int(x) for x in r["image_grid_thw"][0, 1:]) for r in batch.vision_rows]
    if shared_vision:
        grids = grids[::group]
    return flops.qwen_vl_train_flops(fs, rows, grids, shared_vision=shared_vision)


def gen_tokens(batch) -> int:
    return int(batch.completion_mask.sum())


def completion_rewards(batch):
    import torch

    return torch.tensor([float(len(c)) for c in batch.completions])


def run_shape(shape: str, args, rec: Recorder, device, dtype, proc) -> None:
    import torch

    from vlmgrpo.config import GRPOConfig
    from vlmgrpo.grpo import fastpath
    from vlmgrpo.grpo.core import group_advantages
    from vlmgrpo.grpo.logps import LogpModel
    from vlmgrpo.rollout import fast
    from vlmgrpo.rollout import hf as hf_rollout

    key = shape
    res: dict = rec.data.setdefault("models", {}).setdefault(key, {})
    if args.liger:  # issue #20 item 5: Liger's Triton RMSNorm / RoPE / SwiGLU in the HF modules
        res["liger"] = apply_liger()
    t = time.perf_counter()
    model = build_model(shape, proc, device, dtype)
    model.train()
    if args.vision_attention == "batched":
        from vlmgrpo.models.vision_attn import use_segment_attention

        res["vision_attention"] = "batched" if use_segment_attention(model) else "hf"
    if args.compile_train:  # regional compilation: each decoder layer, dynamic sequence length
        for layer in model.model.language_model.layers:
            layer.compile(dynamic=True)
        res["compile_train"] = True
    n = n_params(model)
    res.update(params=n, params_b=round(n / 1e9, 4), build_s=round(time.perf_counter() - t, 1))
    log(f"model {shape}: {n / 1e9:.3f}B params, {dtype}, {device} ({res['build_s']}s)")
    prompts = make_prompts(proc, args.prompts, args.image_size, args.prompt_len)
    g, new, temp = args.group, args.max_new, args.temperature
    kw = dict(temperature=temp, top_p=1.0, top_k=0, max_new_tokens=new, return_logps=True)
    logp_model = LogpModel(model, chunk_tokens=args.logp_chunk)
    grpo = GRPOConfig()  # seed A defaults: pg loss, per-sequence mean, group std + 1e-4
    res["workload"] = dict(
        prompts=args.prompts,
        group=g,
        rows=args.prompts * g,
        max_new=new,
        temperature=temp,
        image_px=args.image_size,
    )
    batch = None
    if args.eos_lengths:
        run_lengths(model, key, args, rec, proc, prompts, kw)
    if args.lora:
        run_lora(model, key, args, rec, device, proc, prompts, kw)

    # ------------------------------------------------------------------ rollout (fast engine)
    with rec.section(f"{key}/rollout_fast", 30) as r:
        if r is not None:
            t = sync()
            fast.sample(model, proc, prompts, g, **kw)
            r["warmup_s"] = round(sync() - t, 2)  # includes the CUDA graph capture
            times, toks = [], []
            for _ in range(args.reps):
                t = sync()
                batch = fast.sample(model, proc, prompts, g, **kw)
                times.append(sync() - t)
                toks.append(gen_tokens(batch))
            eng = fast.engine_for(model)
            r.update(
                s=round(sum(times) / len(times), 3),
                gen_tokens=sum(toks) / len(toks),
                tok_per_s=round(sum(toks) / sum(times), 1),
                prompt_len=int(batch.prompt_ids.shape[1]),
                graphs=eng.use_graphs,
                fused=eng.fused is not None,
                graph_error=eng.graph_error,
                **{k: round(v, 4) for k, v in eng.stats.items() if k != "gen_tokens"},
            )
            r["decode_tok_per_s"] = round(batch.completion_ids.shape[0] / (r["decode_ms_per_step"] / 1e3), 1)
            res["rollout_fast_tok_per_s"] = r["tok_per_s"]

    if args.compile:
        with rec.section(f"{key}/rollout_fast_compiled", 90) as r:
            if r is not None:
                eng = fast.engine_for(model, compile=True)  # replaces the uncompiled engine
                t = sync()
                fast.sample(model, proc, prompts, g, **kw)
                r["warmup_s"] = round(sync() - t, 2)  # includes compilation and graph capture
                times, toks = [], []
                for _ in range(args.reps):
                    t = sync()
                    batch = fast.sample(model, proc, prompts, g, **kw)
                    times.append(sync() - t)
                    toks.append(gen_tokens(batch))
                r.update(
                    s=round(sum(times) / len(times), 3),
                    gen_tokens=sum(toks) / len(toks),
                    tok_per_s=round(sum(toks) / sum(times), 1),
                    compiled=eng.compile,
                    compile_error=eng.compile_error,
                    graphs=eng.use_graphs,
                    **{k: round(v, 4) for k, v in eng.stats.items() if k != "gen_tokens"},
                )
                res["rollout_fast_compiled_tok_per_s"] = r["tok_per_s"]

    # ------------------------------------------------------------------ correctness on this device
    with rec.section(f"{key}/check", 40) as r:
        if r is not None and batch is not None:
            with torch.no_grad():
                lp = torch.cat(
                    [
                        logp_model(batch.select(list(range(i, min(len(batch), i + 8)))), temp)
                        for i in range(0, len(batch), 8)
                    ]
                )
            m = batch.completion_mask.bool()
            d = (lp - batch.sample_logps).abs()[m]
            r.update(
                logp_max_abs_diff=round(float(d.max()), 5),
                logp_mean_abs_diff=round(float(d.mean()), 6),
                logp_tokens=int(m.sum()),
            )
            gk = dict(temperature=0.0, max_new_tokens=args.check_new)
            a = fast.sample(model, proc, prompts, 2, **gk)
            if device.type == "cuda":
                eager = fast.FastEngine(model, use_graphs=False)
                b = eager.sample(proc, prompts, 2, **gk)
                del eager
                r["greedy_graph_vs_eager_equal_rows"] = _equal_rows(a, b)
            h = hf_rollout.sample(model, proc, prompts, 2, **gk)
            r["greedy_fast_vs_hf_equal_rows"] = _equal_rows(a, h)
            r["greedy_fast_vs_hf_mean_common_prefix"] = _common_prefix(a, h)
            r["greedy_rows"] = len(a)

    # ------------------------------------------------------------------ rollout (HF generate)
    if shape in args.hf_models:
        with rec.section(f"{key}/rollout_hf", 60) as r:
            if r is not None:
                hf_rollout.sample(model, proc, prompts[:1], 1, **dict(kw, max_new_tokens=4))
                t = sync()
                hb = hf_rollout.sample(model, proc, prompts, g, **kw)
                r["s"] = round(sync() - t, 3)
                r["gen_tokens"] = gen_tokens(hb)
                r["tok_per_s"] = round(r["gen_tokens"] / r["s"], 1)
                res["rollout_hf_tok_per_s"] = r["tok_per_s"]
                del hb

    # ------------------------------------------------------------------ training pass
    if args.free_cache:
        fast.engine_for(model).free()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = None
    if shape in args.optim_models:
        opt = fastpath.AdamWFP32State(params, lr=1e-6, betas=(0.9, 0.99), weight_decay=0.1)
    else:
        opt = _NoStep(model)
    budget = args.token_budget if shape != "7b" else args.token_budget_7b

    def do_update(batches, advs):
        return fastpath.update(
            model,
            logp_model,
            opt,
            batches,
            advs,
            grpo=grpo,
            temperature=temp,
            max_new_tokens=new,
            max_grad_norm=0.1,
            token_budget=budget,
            share_vision=not args.no_share_vision,
        )

    with rec.section(f"{key}/train", 40) as r:
        if r is not None and batch is not None:
            adv = group_advantages(completion_rewards(batch), g)
            info = do_update([batch], [adv])  # warm-up (allocates the optimiser state)
            times = []
            for _ in range(args.reps):
                t = sync()
                info = do_update([batch], [adv])
                times.append(sync() - t)
            s = sum(times) / len(times)
            tokens = info["update/tokens"]
            fl = train_flops(shape, batch, not args.no_share_vision, g)
            r.update(
                s=round(s, 3),
                s_all=[round(x, 3) for x in times],  # the spread, not only the mean
                tokens=tokens,
                prompt_tokens=int(batch.prompt_mask.sum()),
                completion_tokens=int(batch.completion_mask.sum()),
                tok_per_s=round(tokens / s, 1),
                model_flops=fl["model"],  # bench/flops.py: the MFU numerator
                recompute_flops=fl["recompute"],  # LM-head chunks and SharedVision's no-grad pass
                mfu=round(fl["model"] / s / PEAK_FLOPS, 4),
                hfu=round((fl["model"] + fl["recompute"]) / s / PEAK_FLOPS, 4),
                mfu_old=round(mfu(n, tokens, s), 4),
                peak_flops=PEAK_FLOPS,
                micro_batches=info["update/micro_batches"],
                padded_tokens=info["update/padded_tokens"],
                token_budget=budget,
                optimizer=type(opt).__name__,
                loss=info.get("loss"),
                grad_norm=info.get("grad_norm"),
                share_vision=not args.no_share_vision,
                gradient_checkpointing=False,
            )
            res["train_mfu"] = r["mfu"]
            if args.profile:
                r["profile"] = profile_update(lambda: do_update([batch], [adv]), rec.out, shape)
            if not isinstance(opt, _NoStep):  # the optimiser step alone, on zero gradients
                for p in params:
                    p.grad = torch.zeros_like(p)
                opt.step()
                t = sync()
                opt.step()
                r["optimizer_step_s"] = round(sync() - t, 3)
                r["mfu_fwd_bwd"] = round(fl["model"] / (s - r["optimizer_step_s"]) / PEAK_FLOPS, 4)
                opt.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ full step
    with rec.section(f"{key}/step", 40) as r:
        if r is not None and batch is not None:
            times, parts = [], []
            for _ in range(args.reps):
                t = sync()
                b = fast.sample(model, proc, prompts, g, **kw)
                t1 = sync()
                adv = group_advantages(completion_rewards(b), g)
                info = do_update([b], [adv])
                t2 = sync()
                times.append(t2 - t)
                parts.append((t1 - t, t2 - t1, gen_tokens(b)))
            r.update(
                s=round(sum(times) / len(times), 3),
                s_all=[round(x, 3) for x in times],
                rollout_s=round(sum(p[0] for p in parts) / len(parts), 3),
                update_s=round(sum(p[1] for p in parts) / len(parts), 3),
                gen_tokens=sum(p[2] for p in parts) / len(parts),
            )
            res["step_s"] = r["s"]
    batch = None

    # ------------------------------------------------------------------ seed A memory
    if shape in ("3b", "tiny") and args.seed_a and isinstance(opt, fastpath.AdamWFP32State):
        with rec.section(f"{key}/seed_a", 40) as r:
            if r is not None:
                sa = seed_a_prompts(4, args.seed_a_image)
                sa_kw = dict(
                    temperature=0.9, top_p=1.0, top_k=0, max_new_tokens=args.seed_a_new, return_logps=False
                )
                batches, advs = [], []
                t = sync()
                for p in sa:  # gradient accumulation over 4 images, 8 chains each (seed A)
                    b = fast.sample(model, proc, [p], 8, **sa_kw)
                    batches.append(b)
                    advs.append(group_advantages(completion_rewards(b), 8))
                t1 = sync()
                rollout_peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
                info = do_update(batches, advs)
                t2 = sync()
                r.update(
                    rollout_s=round(t1 - t, 2),
                    update_s=round(t2 - t1, 2),
                    rows=sum(len(b) for b in batches),
                    completion_len=max(int(b.completion_ids.shape[1]) for b in batches),
                    prompt_len=int(batches[0].prompt_ids.shape[1]),
                    tokens=info["update/tokens"],
                    micro_batches=info["update/micro_batches"],
                    optimizer=type(opt).__name__,
                    rollout_peak_gib=round(rollout_peak, 2),
                    full_finetune=True,
                    offload=False,
                    trainable_params=sum(p.numel() for p in params),
                )
                if device.type == "cuda":
                    r["reserved_peak_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
                    r["device_total_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 2)
                del batches

    if args.fsdp2:  # last: it leaves the model sharded
        run_fsdp2(model, key, args, rec, device, proc, prompts, kw)
    fast.engine_for(model).free()
    model = opt = params = logp_model = None  # free the GPU memory before the next model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------- fast path coverage (#20 item 4)


def draw_lengths(spec: str, rows: int, max_new: int, seed: int = 0) -> list[int]:
    """Per-row completion lengths (EOS included) like a real policy's spread. spec
    "lognormal:MEDIAN,SIGMA": median = MEDIAN x max_new, log-sd SIGMA, clipped to [1, max_new]
    (the clip puts the long tail at the budget, as truncated completions are)."""
    import numpy as np

    kind, _, params = spec.partition(":")
    if kind != "lognormal":
        raise SystemExit(f"--eos-lengths {spec!r}: expected lognormal:MEDIAN,SIGMA")
    med, sigma = (float(x) for x in params.split(","))
    x = np.random.default_rng(seed).lognormal(np.log(med * max_new), sigma, rows)
    return [int(v) for v in np.clip(np.rint(x), 1, max_new)]


def _forced_hf(model, proc, prompts, g, lengths, kw):
    """HF generate with the same forced lengths: a logits processor that leaves only EOS for row r
    at its token number lengths[r] (rollout/hf.py's encoding, EOS and suppressed ids)."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    from vlmgrpo.rollout import hf as hf_rollout

    eos = hf_rollout.eos_ids(proc, model)
    dev = next(model.parameters()).device
    enc, _ = hf_rollout.encode_prompts(proc, prompts, g, dev)
    plen = enc["input_ids"].shape[1]
    stop = torch.tensor(lengths, device=dev) - 1

    class Force(LogitsProcessor):
        def __call__(self, input_ids, scores):
            hit = stop == input_ids.shape[1] - plen
            forced = torch.full_like(scores, float("-inf"))
            forced[:, eos[0]] = 0.0
            return torch.where(hit[:, None], forced, scores)

    tok = hf_rollout.tokenizer_of(proc)
    vocab = model.get_output_embeddings().weight.shape[0]
    out = model.generate(
        **enc,
        max_new_tokens=kw["max_new_tokens"],
        do_sample=True,
        temperature=kw["temperature"],
        top_p=1.0,
        top_k=None,
        eos_token_id=eos,
        pad_token_id=tok.pad_token_id,
        suppress_tokens=hf_rollout.suppressed_ids(proc, vocab),
        logits_processor=LogitsProcessorList([Force()]),
    )
    seq = out[:, plen:]
    return int(sum(int((r == eos[0]).nonzero()[0, 0]) + 1 if (r == eos[0]).any() else len(r) for r in seq))


def run_lengths(model, key: str, args, rec: Recorder, proc, prompts, kw) -> None:
    """Realistic lengths: EOS forced at lengths drawn from `--eos-lengths` (random weights never
    sample EOS). The engine with compaction (finished rows stop costing) against without, and HF
    generate (which drops nothing: finished rows keep decoding pad)."""
    from vlmgrpo.rollout import fast

    g, new = args.group, args.max_new
    lengths = draw_lengths(args.eos_lengths, len(prompts) * g, new)
    with rec.section(f"{key}/rollout_lengths", 60) as r:
        if r is None:
            return
        r.update(
            spec=args.eos_lengths,
            lengths_mean=round(sum(lengths) / len(lengths), 1),
            lengths_max=max(lengths),
            lengths_at_budget=sum(x == new for x in lengths),
        )
        for name, compact in (("compact", True), ("no_compact", False)):
            # uncompiled (compilation per row count would take minutes): compaction is the variable
            eng = fast.FastEngine(model, compact=compact, compact_min=args.compact_min)
            eng.sample(proc, prompts, g, stop_at=lengths, **kw)  # warm-up: graphs (and compile)
            times = []
            for _ in range(args.reps):
                t = sync()
                b = eng.sample(proc, prompts, g, stop_at=lengths, **kw)
                times.append(sync() - t)
            assert b.completion_mask.sum(1).tolist() == lengths, "forced lengths not honoured"
            r[name] = dict(
                s=round(sum(times) / len(times), 3),
                s_all=[round(x, 3) for x in times],
                tok_per_s=round(sum(lengths) * len(times) / sum(times), 1),
                decode_rows_frac=round(eng.stats["decode_rows_frac"], 4),
                decode_steps=eng.stats["decode_steps"],
                graphs=eng.use_graphs,
            )
            eng.free()
            del eng
        r["compact_speedup"] = round(r["no_compact"]["s"] / r["compact"]["s"], 2)
        if key in args.hf_models:
            t = sync()
            n_tok = _forced_hf(model, proc, prompts, g, lengths, kw)
            r["hf"] = dict(s=round(sync() - t, 3), gen_tokens=n_tok)
            r["hf"]["tok_per_s"] = round(n_tok / r["hf"]["s"], 1)
            r["compact_vs_hf"] = round(r["hf"]["s"] / r["compact"]["s"], 2)


def run_lora(model, key: str, args, rec: Recorder, device, proc, prompts, kw) -> None:
    """LoRA rollout (the geometry3k / img2code recipes' case): peft adapters (non-zero B) on the
    policy; HF generate on the unmerged model, the engine's module step (adapters as extra GEMMs,
    the former path) and its fused step on merged sampling copies (W + s B A); the base weights are
    checked bit-identical afterwards. The adapters are removed again (peft unload) at the end."""
    import torch
    from peft import LoraConfig, get_peft_model

    from vlmgrpo.grpo.logps import LogpModel
    from vlmgrpo.rollout import fast
    from vlmgrpo.rollout import hf as hf_rollout

    g = args.group
    targets = args.lora_targets.split(",")
    with rec.section(f"{key}/rollout_lora", 90) as r:
        if r is None:
            return
        trainable = {n: p.requires_grad for n, p in model.named_parameters()}
        lora = get_peft_model(
            model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=targets)
        )
        try:
            with torch.no_grad():
                for n, p in lora.named_parameters():
                    if "lora_B" in n:
                        p.normal_(0, 0.02)
            base = {n: p.detach().clone() for n, p in lora.named_parameters() if "lora_" not in n}
            r["targets"] = targets
            variants = [("module", dict(fused=False)), ("merged", {})]
            if args.compile:
                variants.append(("merged_compiled", dict(compile=True)))
            batch = None
            for name, ekw in variants:
                eng = fast.FastEngine(lora, **ekw)
                t = sync()
                eng.sample(proc, prompts, g, **kw)
                warm = sync() - t
                times, toks = [], []
                for _ in range(args.reps):
                    t = sync()
                    batch = eng.sample(proc, prompts, g, **kw)
                    times.append(sync() - t)
                    toks.append(gen_tokens(batch))
                r[name] = dict(
                    warmup_s=round(warm, 2),
                    s=round(sum(times) / len(times), 3),
                    tok_per_s=round(sum(toks) / sum(times), 1),
                    fused=eng.fused is not None,
                    compiled=eng.compile,
                    graphs=eng.use_graphs,
                    decode_ms_per_step=round(eng.stats["decode_ms_per_step"], 3),
                )
                if name == "merged":  # greedy agreement with the unmerged adapter model, log-probs
                    gk = dict(temperature=0.0, max_new_tokens=args.check_new)
                    a = eng.sample(proc, prompts, 2, **gk)
                    h = hf_rollout.sample(lora, proc, prompts, 2, **gk)
                    r["greedy_merged_vs_hf_equal_rows"] = _equal_rows(a, h)
                    r["greedy_merged_vs_hf_mean_common_prefix"] = _common_prefix(a, h)
                    lora.eval()
                    with torch.no_grad():
                        lp = LogpModel(lora)(batch.select(list(range(min(8, len(batch))))), kw["temperature"])
                    lora.train()
                    m = batch.completion_mask[: lp.shape[0]].bool()
                    d = (lp - batch.sample_logps[: lp.shape[0]]).abs()[m]
                    r["logp_max_abs_diff"] = float(f"{float(d.max()):.3g}")
                    r["logp_mean_abs_diff"] = float(f"{float(d.mean()):.3g}")
                eng.free()
                del eng
            if key in args.hf_models:
                hf_rollout.sample(lora, proc, prompts[:1], 1, **dict(kw, max_new_tokens=4))
                t = sync()
                hb = hf_rollout.sample(lora, proc, prompts, g, **kw)
                r["hf"] = dict(s=round(sync() - t, 3), gen_tokens=gen_tokens(hb))
                r["hf"]["tok_per_s"] = round(r["hf"]["gen_tokens"] / r["hf"]["s"], 1)
                r["merged_vs_hf_tok_per_s"] = round(r["merged"]["tok_per_s"] / r["hf"]["tok_per_s"], 2)
            r["merged_vs_module_tok_per_s"] = round(r["merged"]["tok_per_s"] / r["module"]["tok_per_s"], 2)
            after = {n: p for n, p in lora.named_parameters() if "lora_" not in n}
            r["base_weights_bit_identical"] = all(torch.equal(base[n], after[n]) for n in base)
        finally:
            lora.unload()  # the plain model again for the other sections (peft froze the base)
            for n, p in model.named_parameters():
                p.requires_grad_(trainable[n])


def run_fsdp2(model, key: str, args, rec: Recorder, device, proc, prompts, kw) -> None:
    """FSDP2 rollout on a 1-rank process group (issue #20 accepts one): the trainer's units
    (dist.wrap), then HF generate with synced_gpus (the former path: every unit all-gathered for
    every token) against the engine with the weights gathered once per rollout; greedy tokens
    checked against the unsharded engine's. The model stays sharded: the shape's last section."""
    import socket

    import torch
    import torch.distributed as tdist
    from torch.distributed.tensor import DTensor

    from vlmgrpo import dist
    from vlmgrpo.grpo.logps import LogpModel
    from vlmgrpo.rollout import fast
    from vlmgrpo.rollout import hf as hf_rollout

    g = args.group
    with rec.section(f"{key}/rollout_fsdp2", 90) as r:
        if r is None:
            return
        gk = dict(temperature=0.0, max_new_tokens=args.check_new)
        ref = fast.sample(model, proc, prompts, 2, **gk)  # unsharded
        if not tdist.is_initialized():
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
            tdist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
        # world=2 only gets past wrap's "one process: nothing to shard"; the mesh is the 1-rank group
        dist.wrap(LogpModel(model), "fsdp2", dist.DistInfo(0, 2, 0), device)
        ids = torch.tensor([[hf_rollout.tokenizer_of(proc).pad_token_id]], device=device)
        with torch.no_grad():
            model(input_ids=ids, attention_mask=torch.ones_like(ids))  # FSDP2 lazy init
        skw = dict(kw, synced_gpus=True)
        for name, fn in (("fast", fast.sample), ("hf", hf_rollout.sample)):
            fn(model, proc, prompts[:1], 1, **dict(skw, max_new_tokens=4))
            times, toks = [], []
            for _ in range(args.reps if name == "fast" else 1):
                t = sync()
                b = fn(model, proc, prompts, g, **skw)
                times.append(sync() - t)
                toks.append(gen_tokens(b))
            r[name] = dict(s=round(sum(times) / len(times), 3), tok_per_s=round(sum(toks) / sum(times), 1))
        r["fast_vs_hf_tok_per_s"] = round(r["fast"]["tok_per_s"] / r["hf"]["tok_per_s"], 2)
        a = fast.sample(model, proc, prompts, 2, synced_gpus=True, **gk)
        r["greedy_vs_unsharded_equal_rows"] = _equal_rows(a, ref)
        r["resharded_after"] = all(isinstance(p, DTensor) for p in model.parameters())
        eng = fast.engine_for(model)
        r.update(fused=eng.fused is not None, graphs=eng.use_graphs, compiled=eng.compile)


def apply_liger() -> str:
    """Patch Qwen2.5-VL's HF modules with Liger's kernels before the model is built (classes are
    replaced, so models built afterwards use them); the LM head / loss stay vlmgrpo's chunked
    log-probs. Returns "applied" or the error (Liger needs Triton and a GPU)."""
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_qwen2_5_vl

        apply_liger_kernel_to_qwen2_5_vl(
            rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False
        )
        return "applied"
    except Exception as e:  # noqa: BLE001 - recorded in the JSON, the bench goes on without it
        return f"error: {type(e).__name__}: {str(e)[:200]}"


def profile_update(fn, out: Path, shape: str) -> str:
    """One training pass under torch.profiler: the ops by total device time (self), as a table
    file, so the largest levers of issue #20 item 5 can be read off. Returns the file's name."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts, record_shapes=False) as prof:
        fn()
        sync()
    key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    name = f"profile_train_{shape}.txt"
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(prof.key_averages().table(sort_by=key, row_limit=60, max_name_column_width=80))
    return name


class _NoStep:
    """Stands in for the optimiser where its state would not fit (7B with fp32 Adam states):
    the update then measures forward + backward + grad clipping only."""

    def __init__(self, model) -> None:
        self.model = model
        self.param_groups = [{"lr": 0.0}]

    def step(self) -> None:
        pass

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.model.zero_grad(set_to_none=True)


def _equal_rows(a, b) -> float:
    n = min(a.completion_ids.shape[1], b.completion_ids.shape[1])
    same = [
        bool((ra[:n] == rb[:n]).all()) and a.completion_ids.shape[1] == b.completion_ids.shape[1]
        for ra, rb in zip(a.completion_ids, b.completion_ids)
    ]
    return round(sum(same) / len(same), 4)


def _common_prefix(a, b) -> float:
    n = min(a.completion_ids.shape[1], b.completion_ids.shape[1])
    eq = (a.completion_ids[:, :n] == b.completion_ids[:, :n]).long().cumprod(1).sum(1).float()
    return round(float(eq.mean()), 2)


def run_check_fp32(args, rec: Recorder, device, proc) -> None:
    """fp32, graphs on: greedy tokens of the engine == HF generate exactly, and sampling log-probs
    (temperature / top-k / top-p) == the training forward, on a 4-layer model of 3B's widths."""
    import torch

    from vlmgrpo.grpo.logps import LogpModel
    from vlmgrpo.rollout import fast
    from vlmgrpo.rollout import hf as hf_rollout

    shape = "tiny" if args.tiny else "3b-4layer"
    with rec.section("check_fp32", 30) as r:
        if r is None:
            return
        model = build_model(shape, proc, device, torch.float32)
        prompts = make_prompts(proc, args.prompts, args.image_size, args.prompt_len, seed=5)
        gk = dict(temperature=0.0, max_new_tokens=args.check_new * 2)
        a = fast.sample(model, proc, prompts, 2, **gk)
        h = hf_rollout.sample(model, proc, prompts, 2, **gk)
        r["shape"] = shape
        r["graphs"] = fast.engine_for(model).use_graphs
        r["greedy_equal_rows"] = _equal_rows(a, h)
        r["greedy_tokens"] = int(a.completion_mask.sum())
        lm = LogpModel(model)
        for name, kw in [
            ("t1", dict(temperature=1.0)),
            ("t07_topk50_topp09", dict(temperature=0.7, top_k=50, top_p=0.9)),
        ]:
            b = fast.sample(
                model, proc, prompts, 4, max_new_tokens=args.check_new * 2, return_logps=True, **kw
            )
            with torch.no_grad():
                lp = lm(b, kw["temperature"])
            m = b.completion_mask.bool()
            r[f"logp_max_abs_diff_{name}"] = float((lp - b.sample_logps).abs()[m].max())
        r["graph_error"] = fast.engine_for(model).graph_error
        fast.engine_for(model).free()
        del model


# ---------------------------------------------------------------------------------------- TRL


def run_trl(args, rec: Recorder) -> None:
    with rec.section("trl/step", 150) as r:
        if r is None:
            return
        rec.out.mkdir(parents=True, exist_ok=True)  # --trl-first runs before anything wrote there
        out = rec.out / "trl_anchor.json"
        cmd = [
            sys.executable,
            args.trl,
            "--out",
            str(out),
            "--warmup",
            "1",
            "--steps",
            str(args.trl_steps),
            "--time-budget",
            str(max(60, rec.time_left() - 30)),
        ]
        if args.tiny:
            cmd.append("--tiny")
        cmd += shlex.split(args.trl_args)  # e.g. "--no-gc --micro-bs 16": TRL's best settings that fit
        r["trl_args"] = args.trl_args
        log("running " + " ".join(cmd))
        env = dict(os.environ)
        if _USER_ALLOC_CONF is None:
            env.pop("PYTORCH_CUDA_ALLOC_CONF", None)  # TRL as the anchor measured it
        proc = subprocess.run(
            cmd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=max(60, rec.time_left() - 10),
        )
        (rec.out / "trl_anchor.log").write_text(proc.stdout)
        print(proc.stdout[-3000:], flush=True)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"trl_anchor exited {proc.returncode}")
        d = json.loads(out.read_text())
        w = d["workload"]
        tokens = w["completions"] * w["prompt_len"] + d["mean_gen_tokens"]
        r.update(
            step_s=d["mean_step_s"],
            gen_s=d["mean_gen_and_score_s"],
            hf_generate_s=d["mean_hf_generate_s"],
            train_s=d["mean_train_s"],
            gen_tok_per_s=d["gen_tok_per_s"],
            gen_tokens=d["mean_gen_tokens"],
            prompt_len=w["prompt_len"],
            tokens=tokens,
            params=int(w["params_b"] * 1e9),
            train_mfu=None  # the count is of the 3B shape; the tiny anchor's model is another one
            if d.get("tiny")
            else round(trl_train_flops(d)["model"] / d["mean_train_s"] / PEAK_FLOPS, 4),
            train_mfu_old=round(mfu(w["params_b"] * 1e9, tokens, d["mean_train_s"]), 4),
            step_s_each=[x["step_s"] for x in d.get("steps", []) if not x.get("warmup")],
            peak_alloc_gib=d.get("peak_alloc_gib"),
            timed_steps=w["timed_steps"],
            gradient_checkpointing=w["gradient_checkpointing"],
            env=d.get("env"),
        )


def trl_train_flops(d: dict) -> dict:
    """bench/flops.py's count of TRL's training pass from trl_anchor.py's JSON: the tower once per
    row (TRL's forward runs it for every completion), decoder at prompt + completion tokens, LM head
    at the completion positions (TRL passes logits_to_keep); gradient checkpointing's recomputed
    forward is not model FLOPs. Rows get the mean completion length (attention term only)."""
    w = d["workload"]
    s = SHAPES["3b"]
    fs = flops.QwenVLShape.from_config(s["text"], s["vision"])
    n = w["completions"]
    grid = flops.image_grid(w["image_px"], w["image_px"], fs)
    rows = [(w["prompt_len"], d["mean_gen_tokens"] / n)] * n
    return flops.qwen_vl_train_flops(fs, rows, [grid] * n, shared_vision=False, lm_head_recompute=False)


# ---------------------------------------------------------------------------------------- report


def markdown(data: dict) -> str:
    env = data.get("env", {})
    sec = data["sections"]
    models = data.get("models", {})
    trl = sec.get("trl/step", {})
    lines = [
        f"Device: **{env.get('device')}** ({env.get('date')}); torch {env.get('torch')}, transformers "
        f"{env.get('transformers')}; workload: {data.get('workload_text', '')}",
        "",
        "| | " + " | ".join(f"Qwen2.5-VL-{k.upper()} shape" for k in models) + " |",
        "| --- | " + " | ".join("---" for _ in models) + " |",
    ]

    class Missing(Exception):
        pass

    def row(label: str, fn) -> None:
        vals = []
        for k in models:
            try:
                v = fn(k)
            except Missing as e:
                v = str(e) or None
            except (KeyError, TypeError, ValueError, ZeroDivisionError):
                v = None
            vals.append("-" if v is None else v)
        lines.append(f"| {label} | " + " | ".join(vals) + " |")

    def g(k: str, s: str, f: str):
        d = sec.get(f"{k}/{s}", {})
        if "error" in d:
            raise Missing("error: " + d["error"][:80].replace("|", "/"))
        if "skipped" in d:
            raise Missing("skipped")
        if f not in d:
            raise Missing("")
        return d[f]

    row("params", lambda k: f"{models[k]['params_b']:.2f} B")
    row("prompt tokens (image 448x448 = 256)", lambda k: str(g(k, "rollout_fast", "prompt_len")))
    row(
        "**rollout, vlmgrpo fast engine**: generated tok/s",
        lambda k: f"**{g(k, 'rollout_fast', 'tok_per_s'):,.0f}**",
    )
    row(
        "  time per rollout (64 x 256) / prefill",
        lambda k: f"{g(k, 'rollout_fast', 's'):.2f} s / {g(k, 'rollout_fast', 'prefill_s'):.2f} s",
    )
    row(
        "  decode step (batch 64), CUDA graph",
        lambda k: f"{g(k, 'rollout_fast', 'decode_ms_per_step'):.2f} ms",
    )
    row("  peak memory", lambda k: f"{g(k, 'rollout_fast', 'peak_gib'):.1f} GiB")
    row("rollout, HF generate (rollout/hf.py): tok/s", lambda k: f"{g(k, 'rollout_hf', 'tok_per_s'):,.0f}")
    row(
        "  fast engine speed-up vs HF generate",
        lambda k: f"{g(k, 'rollout_fast', 'tok_per_s') / g(k, 'rollout_hf', 'tok_per_s'):.1f}x",
    )
    row(
        "**training pass** (fastpath.update): s / tok/s",
        lambda k: f"{g(k, 'train', 's'):.2f} s / {g(k, 'train', 'tok_per_s'):,.0f}",
    )
    row(
        "  **MFU** (bench/flops.py model FLOPs / t / 989 TFLOP/s; old 6 N tokens formula)",
        lambda k: f"**{100 * g(k, 'train', 'mfu'):.1f}%** (old {100 * g(k, 'train', 'mfu_old'):.1f}%)",
    )
    row(
        "  optimiser / micro-batches / peak",
        lambda k: (
            f"{g(k, 'train', 'optimizer')} / "
            f"{g(k, 'train', 'micro_batches'):.0f} / {g(k, 'train', 'peak_gib'):.1f} GiB"
        ),
    )
    row(
        "**full step** (rollout + reward + update)",
        lambda k: (
            f"**{g(k, 'step', 's'):.2f} s** "
            f"({g(k, 'step', 'rollout_s'):.2f} + {g(k, 'step', 'update_s'):.2f})"
        ),
    )
    if trl and "step_s" in trl:
        lines.append(
            f"| TRL 1.13 GRPOTrainer step (same run, 3B) | {trl['step_s']:.1f} s "
            f"(generate {trl['gen_s']:.1f} s at {trl['gen_tok_per_s']:,.0f} tok/s + train "
            f"{trl['train_s']:.1f} s, MFU {100 * (trl['train_mfu'] or 0):.1f}%, peak {trl.get('peak_alloc_gib')} GiB)"
            + " | -" * (len(models) - 1)
            + " |"
        )
        if "3b" in models and "step_s" in models["3b"]:
            lines.append(
                f"| **full-step speed-up vs TRL** | **{trl['step_s'] / models['3b']['step_s']:.1f}x**"
                + " | -" * (len(models) - 1)
                + " |"
            )
    elif trl:
        lines.append(f"| TRL step | {trl.get('error') or trl.get('skipped')} |" + " - |" * (len(models) - 1))
    row(
        "seed A full FT (4 img 224px x 8 x 512 tok, AdamW): peak",
        lambda k: (
            f"{g(k, 'seed_a', 'peak_gib'):.1f} GiB "
            f"allocated ({g(k, 'seed_a', 'reserved_peak_gib'):.1f} reserved of {g(k, 'seed_a', 'device_total_gib'):.0f})"
        ),
    )
    row(
        "check: greedy graph == eager (rows)",
        lambda k: f"{100 * g(k, 'check', 'greedy_graph_vs_eager_equal_rows'):.0f}%",
    )
    row(
        "check: greedy fast == HF generate (rows, bf16)",
        lambda k: (
            f"{100 * g(k, 'check', 'greedy_fast_vs_hf_equal_rows'):.0f}%"
            f" (mean common prefix {g(k, 'check', 'greedy_fast_vs_hf_mean_common_prefix')} of "
            f"{data.get('check_new')})"
        ),
    )
    c = sec.get("check_fp32", {})
    if c:
        lines.append(
            f"| check (fp32, {c.get('shape')}, graphs {c.get('graphs')}): greedy == HF generate / "
            f"log-prob max diff | {100 * c.get('greedy_equal_rows', float('nan')):.0f}% of rows / "
            f"{c.get('logp_max_abs_diff_t1', float('nan')):.1e} (T=1), "
            f"{c.get('logp_max_abs_diff_t07_topk50_topp09', float('nan')):.1e} (T=0.7, top-k 50, top-p 0.9)"
            + " | -" * (len(models) - 1)
            + " |"
        )
    row(
        "check: sampling log-probs vs training forward",
        lambda k: f"max {g(k, 'check', 'logp_max_abs_diff')}, mean {g(k, 'check', 'logp_mean_abs_diff')}",
    )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on CPU (fp32): exercise every code path")
    ap.add_argument("--models", default=None, help="comma list of 3b,7b (default 3b,7b; tiny: tiny)")
    ap.add_argument("--hf-models", default="3b,tiny", help="models that also time HF generate")
    ap.add_argument("--optim-models", default="3b,tiny", help="models whose update runs the optimiser step")
    ap.add_argument("--prompts", type=int, default=None)
    ap.add_argument("--group", type=int, default=None)
    ap.add_argument("--max-new", type=int, default=None)
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--prompt-len", type=int, default=None, help="pad questions to this many prompt tokens")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--check-new", type=int, default=None, help="greedy tokens for the agreement checks")
    ap.add_argument("--token-budget", type=int, default=4096)
    ap.add_argument("--token-budget-7b", type=int, default=3072)
    ap.add_argument("--logp-chunk", type=int, default=1024, help="LogpModel chunk_tokens (LM head chunk)")
    ap.add_argument("--no-share-vision", action="store_true")
    ap.add_argument("--free-cache", action="store_true", help="free the engine's KV cache before the update")
    ap.add_argument("--seed-a", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--seed-a-new", type=int, default=None)
    ap.add_argument("--seed-a-image", type=int, default=224)
    ap.add_argument(
        "--sections", default="", help="comma list: run only these sections (e.g. rollout_fast,train)"
    )
    ap.add_argument("--compile", action="store_true", help="also time the engine with torch.compile'd layers")
    ap.add_argument(
        "--compile-train", action="store_true", help="torch.compile each decoder layer for training"
    )
    ap.add_argument(
        "--vision-attention",
        default="batched",
        choices=["batched", "hf"],
        help="see vlmgrpo/models/vision_attn.py",
    )
    ap.add_argument("--trl", default="", help="path to trl_anchor.py (run in a subprocess after 3b)")
    ap.add_argument("--trl-steps", type=int, default=2)
    ap.add_argument(
        "--trl-args",
        default="",
        help="extra trl_anchor.py arguments, e.g. --trl-args='--no-gc --micro-bs 16'",
    )
    ap.add_argument("--liger", action="store_true", help="Liger kernels (RMSNorm, RoPE, SwiGLU) in the model")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="torch.profiler over one training pass: OUT/profile_train_<m>.txt",
    )
    ap.add_argument(
        "--eos-lengths",
        nargs="?",
        const="lognormal:0.3,0.6",
        default="",
        help="rollout_lengths section: EOS forced at lengths lognormal:MEDIAN(x max_new),SIGMA; "
        "the engine with and without compaction, and HF generate",
    )
    ap.add_argument("--compact-min", type=int, default=None, help="engine compact_min (default 8; tiny: 2)")
    ap.add_argument("--lora", action="store_true", help="rollout_lora section: peft LoRA, merged vs unmerged")
    ap.add_argument("--lora-targets", default="q_proj,v_proj,o_proj", help="LoRA target modules (img2code's)")
    ap.add_argument(
        "--fsdp2",
        action="store_true",
        help="rollout_fsdp2 section (last: shards the model): 1-rank FSDP2, engine vs HF generate",
    )
    ap.add_argument(
        "--trl-first",
        action="store_true",
        help="run the TRL step before vlmgrpo's sections, so a short time budget cannot skip it",
    )
    ap.add_argument("--time-budget", type=float, default=540.0)
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()
    tiny = args.tiny
    args.models = (args.models or ("tiny" if tiny else "3b,7b")).split(",")
    args.hf_models = args.hf_models.split(",")
    args.optim_models = args.optim_models.split(",")
    args.prompts = args.prompts or (2 if tiny else 8)
    args.group = args.group or (4 if tiny else 8)
    args.max_new = args.max_new or (16 if tiny else 256)
    args.image_size = args.image_size or (112 if tiny else 448)
    args.prompt_len = args.prompt_len or (40 if tiny else 304)
    args.check_new = args.check_new or (16 if tiny else 32)
    args.compact_min = args.compact_min or (2 if tiny else 8)
    args.seed_a_new = args.seed_a_new or (24 if tiny else 512)
    if tiny:
        args.seed_a_image = 56

    import torch
    import transformers

    cuda = torch.cuda.is_available()
    if not cuda and not tiny:
        sys.exit("no CUDA device: use --tiny for the CPU smoke test")
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    rec = Recorder(Path(args.out), args.time_budget)
    rec.only = set(args.sections.split(",")) if args.sections else set()
    rec.data["env"] = dict(
        date=time.strftime("%Y-%m-%d"),
        device=torch.cuda.get_device_name(0)
        if cuda
        else f"cpu ({platform.processor() or platform.machine()})",
        device_mem_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
        torch=torch.__version__,
        transformers=transformers.__version__,
        python=platform.python_version(),
    )
    rec.data["args"] = vars(args)
    rec.data["check_new"] = args.check_new
    rec.data["workload_text"] = (
        f"{args.prompts} images {args.image_size}x{args.image_size} x G = {args.group} x {args.max_new} new tokens, "
        f"temperature {args.temperature}, {str(dtype).replace('torch.', '')}, sdpa, random init"
    )
    log("env " + json.dumps(rec.data["env"]))
    proc = build_processor(full_vocab=not tiny)
    log(f"tokenizer: {len(proc.tokenizer)} tokens")
    run_check_fp32(args, rec, device, proc)
    if args.trl and args.trl_first:
        run_trl(args, rec)
    for i, shape in enumerate(args.models):
        if i > 0 and shape == "7b" and args.trl and "trl/step" not in rec.data["sections"]:
            run_trl(args, rec)
        run_shape(shape, args, rec, device, dtype, proc)
    if args.trl and "trl/step" not in rec.data["sections"]:
        run_trl(args, rec)
    md = markdown(rec.data)
    (rec.out / "bench.md").write_text(md)
    rec.data["total_s"] = round(time.perf_counter() - T0, 1)
    rec.save()
    print(md, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
