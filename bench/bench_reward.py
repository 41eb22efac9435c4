"""Time the reward side of cycle training (issue #10) on one GPU, with random-init models of real shapes.

Models (bf16, random weights: speed does not depend on the values; nothing is downloaded):
  FLUX.1-schnell-shaped pipeline: transformer 19 + 38 blocks (11.9 B), FLUX VAE, schnell's scheduler;
  text encoders of T5-XXL (4.76 B) and CLIP-L text (123 M) shape, fed token ids made from the prompt
  bytes (no tokenizers offline); DINOv2-large-shaped embedder (304 M) with DINOv2's preprocessing.

Sections (each after a warm-up; an error in one is recorded and the rest still run):
  gen_<size>        images/s at 512 and 1024, 4 steps: one pipeline call per prompt (the seed's way,
                    embeddings precomputed) vs vlmgrpo's DiffusersGenerator (batched, memory budget,
                    prompt-embedding cache)
  fast_512          the faster paths: regional torch.compile of the transformer, and 3 / 2 steps;
                    each one's pixel difference from the eager 4-step bf16 images (same seeds)
  embed             DINOv2-large embeddings/s: model only, and the whole path (PIL -> processor -> model)
  cycle_step        seed A's step on one GPU: Qwen2.5-VL-3B-shaped policy (full fine-tune, AdamW with
                    fp32 moments), 4 images x 8 chains x 512 tokens, FLUX + T5 + CLIP + DINOv2 on the
                    same GPU; placement: optimizer moments and reward models offloaded between phases;
                    per phase time and peak memory (the memory timeline), at 512 and 1024

usage (GPU):  PYTHONUNBUFFERED=1 python bench/bench_reward.py --out bench/out-reward
usage (CPU):  python bench/bench_reward.py --tiny --out /tmp/bench-reward   # tiny shapes, every code path
Writes OUT/bench.json and OUT/bench.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import flops  # noqa: E402
from bench_step import (  # noqa: E402
    Recorder,
    build_model,
    build_processor,
    log,
    seed_a_prompts,
    sync,
)

SCHNELL_TRANSFORMER = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=False,
    axes_dims_rope=(16, 56, 56),
)  # fmt: skip
TINY_TRANSFORMER = dict(SCHNELL_TRANSFORMER, num_layers=1, num_single_layers=1, attention_head_dim=16,
                        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                        axes_dims_rope=(4, 6, 6))  # fmt: skip
FLUX_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
    act_fn="silu", latent_channels=16, norm_num_groups=32, sample_size=1024, scaling_factor=0.3611,
    shift_factor=0.1159, latents_mean=None, latents_std=None, force_upcast=True, use_quant_conv=False,
    use_post_quant_conv=False, mid_block_add_attention=True,
)  # fmt: skip
TINY_VAE = dict(
    FLUX_VAE, block_out_channels=[8, 8, 16, 16], layers_per_block=1, norm_num_groups=4, sample_size=64
)
SCHNELL_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False, base_shift=0.5,
                         max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)  # fmt: skip
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              feed_forward_proj="gated-gelu", is_encoder_decoder=False)  # fmt: skip
TINY_T5 = dict(T5_XXL, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
CLIP_L_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                   num_attention_heads=12, max_position_embeddings=77, projection_dim=768)  # fmt: skip
TINY_CLIP = dict(
    CLIP_L_TEXT, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
)
DINOV2_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                    patch_size=14, image_size=518, layerscale_value=1.0)  # fmt: skip
TINY_DINO = dict(
    DINOV2_LARGE, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
)
H100_BF16_FLOPS = flops.PEAK_BF16["H100 SXM"]  # dense bf16; the H200 has the same figure


def _build(cls, kwargs, device, dtype):
    import torch

    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            m = cls(**kwargs) if not hasattr(cls, "config_class") else cls(cls.config_class(**kwargs))
    finally:
        torch.set_default_dtype(prev)
    return m.eval().requires_grad_(False)


def build_generator(args, device, dtype):
    """vlmgrpo's DiffusersGenerator around a FLUX-shaped pipeline; `encode` runs the T5/CLIP-shaped
    encoders on token ids made from the prompt bytes (no tokenizers offline)."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    from vlmgrpo.imagegen.diffusers_gen import DiffusersGenerator

    tiny = args.tiny
    transformer = _build(
        FluxTransformer2DModel, TINY_TRANSFORMER if tiny else SCHNELL_TRANSFORMER, device, dtype
    )
    vae = _build(AutoencoderKL, TINY_VAE if tiny else FLUX_VAE, device, dtype)
    t5 = _build(T5EncoderModel, TINY_T5 if tiny else T5_XXL, device, dtype)
    clip = _build(CLIPTextModel, TINY_CLIP if tiny else CLIP_L_TEXT, device, dtype)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHNELL_SCHEDULER),
        vae=vae,
        text_encoder=clip,
        tokenizer=None,
        text_encoder_2=t5,
        tokenizer_2=None,
        transformer=transformer,
    )
    txt_len = args.txt_len

    class BenchGenerator(DiffusersGenerator):
        encode_calls = 0

        def encode(self, prompts):
            self.encode_calls += 1
            dev = self.pipe.device

            def ids(p, n, vocab):
                b = list(p.encode())[:n] + [1] * max(0, n - len(p.encode()))
                return [x % vocab for x in b]

            t5_ids = torch.tensor([ids(p, txt_len, t5.config.vocab_size) for p in prompts], device=dev)
            clip_ids = torch.tensor([ids(p, 77, clip.config.vocab_size) for p in prompts], device=dev)
            emb = t5(input_ids=t5_ids).last_hidden_state.to(dtype)
            pooled = clip(input_ids=clip_ids).pooler_output.to(dtype)
            return emb, pooled

    gen = BenchGenerator.from_pipeline(
        pipe,
        height=args.sizes[0],
        width=args.sizes[0],
        batch_size=args.batch,
        memory_budget_gib=args.memory_budget,
        max_sequence_length=txt_len,
    )
    n = {
        "transformer_params_b": sum(p.numel() for p in transformer.parameters()) / 1e9,
        "t5_params_b": sum(p.numel() for p in t5.parameters()) / 1e9,
    }
    return gen, n


def build_embedder(args, device, dtype):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    from vlmgrpo.embed.hf import HFImageEmbedder

    cfg = Dinov2Config(**(TINY_DINO if args.tiny else DINOV2_LARGE))
    proc = BitImageProcessor(  # facebook/dinov2-large's preprocessor_config.json
        size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, do_center_crop=True,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], resample=3, do_convert_rgb=True,
    )  # fmt: skip

    class BenchEmbedder(HFImageEmbedder):
        def _load(self):
            model = Dinov2Model(cfg).to(self.device, self.dtype).eval().requires_grad_(False)
            return model, proc

    return BenchEmbedder(model="dinov2-large-shape", batch_size=args.embed_batch, device=str(device))


def images_per_s(fn, n_images: int, reps: int) -> tuple[float, float]:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = sync()
        fn()
        times.append(sync() - t)
    s = sum(times) / len(times)
    return n_images / s, s


def pixel_diff(a, b) -> dict:
    import numpy as np

    x = np.stack([np.asarray(i, dtype=np.float64) for i in a])
    y = np.stack([np.asarray(i, dtype=np.float64) for i in b])
    mse = float(((x - y) ** 2).mean())
    return {
        "mean_abs": round(float(np.abs(x - y).mean()), 3),
        "psnr_db": round(10 * np.log10(255**2 / max(mse, 1e-12)), 2),
    }


def prompts_for(n: int, tag: str = "") -> list[str]:
    return [f"a chart {tag} number {i}: bars in red and blue, a title on top, gridlines" for i in range(n)]


# ------------------------------------------------------------------------------------------ sections
def run_generation(args, rec, gen, device):
    import torch

    pipe = gen.pipe
    for size in args.sizes:
        gen.height = gen.width = gen.size = size
        gen.per_image_gib = None  # the budget is measured per resolution
        n = args.images
        prompts, seeds = prompts_for(n, f"s{size}"), list(range(n))
        with rec.section(f"gen_{size}", 30) as r:
            if r is None:
                continue
            emb, pooled = gen._embeddings(prompts)  # precomputed for the one-call-per-prompt baseline

            def per_prompt():
                for i in range(n):
                    pipe(
                        prompt_embeds=emb[i : i + 1],
                        pooled_prompt_embeds=pooled[i : i + 1],
                        generator=torch.Generator("cpu").manual_seed(i),
                        num_inference_steps=4,
                        guidance_scale=0.0,
                        height=size,
                        width=size,
                        output_type="pil",
                    )

            ips_seq, s_seq = images_per_s(per_prompt, n, args.reps)
            k = args.stock_batch or n

            def stock_batched():  # stock diffusers, batched: one pipeline call per k prompts
                for i in range(0, n, k):
                    pipe(
                        prompt_embeds=emb[i : i + k],
                        pooled_prompt_embeds=pooled[i : i + k],
                        generator=[torch.Generator("cpu").manual_seed(j) for j in range(i, min(n, i + k))],
                        num_inference_steps=4,
                        guidance_scale=0.0,
                        height=size,
                        width=size,
                        output_type="pil",
                    )

            ips_stock, _ = (
                images_per_s(stock_batched, n, args.reps) if args.stock_batch >= 0 else (None, None)
            )
            gen.generate(prompts[:1], seeds[:1])  # measures one image's memory for the budget
            ips_b, s_b = images_per_s(lambda: gen.generate(prompts, seeds), n, args.reps)
            transformer_flops = _flux_flops(gen, size)
            old_flops = _flux_flops_old(gen, size)
            r.update(
                images=n,
                per_prompt_images_per_s=round(ips_seq, 3),
                batched_images_per_s=round(ips_b, 3),
                speedup=round(ips_b / ips_seq, 2),
                stock_batched_images_per_s=None if ips_stock is None else round(ips_stock, 3),
                stock_batch=k,
                speedup_vs_stock_batched=None if ips_stock is None else round(ips_b / ips_stock, 2),
                share_of_floor_stock_batched=None
                if ips_stock is None
                else round(ips_stock * transformer_flops / H100_BF16_FLOPS, 3),
                batch=gen.batch_for_budget(),
                memory_budget_gib=gen.memory_budget_gib,
                per_image_gib=round(gen.per_image_gib or 0.0, 3),
                transformer_tflop_per_image=round(transformer_flops / 1e12, 2),
                floor_images_per_s=round(H100_BF16_FLOPS / transformer_flops, 2),
                share_of_floor=round(ips_b * transformer_flops / H100_BF16_FLOPS, 3),
                share_of_floor_per_prompt=round(ips_seq * transformer_flops / H100_BF16_FLOPS, 3),
                old_transformer_tflop_per_image=round(old_flops / 1e12, 2),  # before issue #20
                old_share_of_floor=round(ips_b * old_flops / H100_BF16_FLOPS, 3),
                embed_cache_hits=gen.embed_hits,
            )


def _flux_flops(gen, size: int) -> float:
    """Matmul FLOPs of the transformer for one image over all steps (bench/flops.py): per-token
    weights at image + text tokens, modulation and timestep/pooled embedders once per image,
    joint attention over all tokens."""
    f = flops.FluxShape.from_config(dict(gen.pipe.transformer.config))
    n = flops.flux_image_tokens(size, size)
    return gen.num_inference_steps * flops.flux_step_flops(f, n, gen.max_sequence_length)["total"]


def _flux_flops_old(gen, size: int) -> float:
    """The count before issue #20: 2 x all parameters x (image + text tokens) plus attention."""
    tr = gen.pipe.transformer
    f = flops.FluxShape.from_config(dict(tr.config))
    total = sum(p.numel() for p in tr.parameters())
    n = flops.flux_image_tokens(size, size)
    return gen.num_inference_steps * flops.flux_old_step_flops(f, total, n, gen.max_sequence_length)


def run_fast_paths(args, rec, gen):
    """Fewer steps, then (separate section: compilation takes minutes) regional torch.compile."""
    size = args.sizes[0]
    gen.height = gen.width = gen.size = size
    n = args.images
    prompts, seeds = prompts_for(n, "fast"), list(range(100, 100 + n))
    ref = gen.generate(prompts, seeds)  # eager, 4 steps: the reference images
    with rec.section(f"fast_steps_{size}", 30) as r:
        if r is not None:
            ips4, _ = images_per_s(lambda: gen.generate(prompts, seeds), n, args.reps)
            r["eager_4_steps_images_per_s"] = round(ips4, 3)
            for steps in (3, 2):
                gen.num_inference_steps = steps
                out = gen.generate(prompts, seeds)
                ips, _ = images_per_s(lambda: gen.generate(prompts, seeds), n, args.reps)
                r[f"eager_{steps}_steps_images_per_s"] = round(ips, 3)
                r[f"eager_{steps}_steps_vs_4_steps"] = pixel_diff(out, ref)
            gen.num_inference_steps = 4
    if not args.compile:
        return
    with rec.section(f"fast_compile_{size}", 240) as r:
        if r is not None:
            t = sync()
            gen._compile()
            out = gen.generate(prompts, seeds)  # compiles
            r["compile_first_call_s"] = round(sync() - t, 1)
            rec.data["sections"][f"fast_compile_{size}"] = r  # keep it if the rest runs out of time
            rec.save()
            ips, _ = images_per_s(lambda: gen.generate(prompts, seeds), n, args.reps)
            r["compiled_4_steps_images_per_s"] = round(ips, 3)
            r["compiled_vs_eager_4_steps"] = pixel_diff(out, ref)


def run_embed(args, rec, emb):
    import numpy as np
    import torch
    from PIL import Image

    n = args.embed_images
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)) for _ in range(n)]
    with rec.section("embed", 20) as r:
        if r is None:
            return
        ips, _ = images_per_s(lambda: emb.embed(imgs), n, args.reps)
        pixels = emb.processor(images=imgs[: emb.batch_size], return_tensors="pt")["pixel_values"]
        pixels = pixels.to(emb.device, emb.dtype)

        def model_only():
            with torch.inference_mode():
                for _ in range(n // emb.batch_size):
                    emb.model(pixel_values=pixels)

        ips_model, _ = images_per_s(model_only, (n // emb.batch_size) * emb.batch_size, args.reps)
        emb.embed(imgs[:4], cache=True)
        t = sync()
        emb.embed(imgs[:4], cache=True)
        r.update(
            images=n,
            batch=emb.batch_size,
            dtype=str(emb.dtype).replace("torch.", ""),
            embeddings_per_s_with_preprocessing=round(ips, 1),
            embeddings_per_s_model_only=round(ips_model, 1),
            cached_originals_s=round(sync() - t, 4),
            params_m=round(sum(p.numel() for p in emb.model.parameters()) / 1e6, 1),
        )


def run_cycle_step(args, rec, gen, emb, device, dtype):
    """Seed A's step with everything on one GPU, rewards = DINOv2 cosine of FLUX re-drawings."""
    import torch

    from vlmgrpo.config import GRPOConfig
    from vlmgrpo.data.images import thumbnail
    from vlmgrpo.grpo import fastpath
    from vlmgrpo.grpo.core import group_advantages
    from vlmgrpo.grpo.logps import LogpModel
    from vlmgrpo.models.vision_attn import use_segment_attention
    from vlmgrpo.placement import OptimizerOffloader
    from vlmgrpo.rollout import fast

    if rec.only and not any(x.startswith("cycle_step") for x in rec.only):
        return
    proc = build_processor(full_vocab=not args.tiny)
    shape = "tiny" if args.tiny else "3b"
    model = build_model(shape, proc, device, dtype)
    model.train()
    use_segment_attention(model)
    logp_model = LogpModel(model, chunk_tokens=1024)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = fastpath.AdamWFP32State(params, lr=1e-6, betas=(0.9, 0.99), weight_decay=0.1)
    opt_off = OptimizerOffloader(opt, device)
    grpo = GRPOConfig()
    n_img, chains = 4, 8
    prompts = seed_a_prompts(n_img, args.seed_a_image)
    kw = dict(temperature=0.9, top_p=1.0, top_k=0, max_new_tokens=args.seed_a_new, return_logps=False)
    gen.offload()
    emb.offload()
    torch.cuda.empty_cache() if device.type == "cuda" else None

    def phase(name, timeline, fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = sync()
        out = fn()
        dt = sync() - t
        row = {"phase": name, "s": round(dt, 2)}
        if device.type == "cuda":
            row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            row["end_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
        timeline.append(row)
        return out

    def one_step(timeline):
        batches = phase(
            "rollout", timeline, lambda: [fast.sample(model, proc, [p], chains, **kw) for p in prompts]
        )

        def rewards():
            gen.onload()
            emb.onload()
            texts = [c for b in batches for c in b.completions]
            seeds = list(range(len(texts)))
            images = gen.generate(texts, seeds)
            orig = [thumbnail(p.images[0], 224) for p in prompts for _ in range(chains)]
            regen = [thumbnail(im, 224) for im in images]
            sims = emb.similarity(orig, regen)
            gen.offload()
            emb.offload()
            return sims

        sims = phase("reward", timeline, rewards)
        advs = [group_advantages(torch.tensor((sims[i * chains : (i + 1) * chains] + 1) / 2).float(), chains)
                for i in range(n_img)]  # fmt: skip

        class Offloaded:  # the optimizer step with the moments brought in and sent back out
            def __init__(self, o):
                self.o = o
                self.param_groups = o.param_groups

            def step(self):
                opt_off.onload()
                self.o.step()
                opt_off.offload()

            def zero_grad(self, set_to_none=True):
                self.o.zero_grad(set_to_none=set_to_none)

        def update():
            return fastpath.update(
                model, logp_model, Offloaded(opt), batches, advs, grpo=grpo, temperature=0.9,
                max_new_tokens=args.seed_a_new, max_grad_norm=0.1, token_budget=4096, share_vision=True,
            )  # fmt: skip

        info = phase("update", timeline, update)
        return batches, info

    for size in args.cycle_sizes:
        gen.height = gen.width = gen.size = size
        gen.per_image_gib = None
        with rec.section(f"cycle_step_{size}", 60) as r:
            if r is None:
                continue
            one_step([])  # warm-up: graphs, optimizer state, the budget measurement
            timeline: list[dict] = []
            t = sync()
            batches, info = one_step(timeline)
            r.update(
                step_s=round(sync() - t, 2),
                timeline=timeline,
                rows=sum(len(b) for b in batches),
                gen_tokens=int(sum(int(b.completion_mask.sum()) for b in batches)),
                completion_len=max(int(b.completion_ids.shape[1]) for b in batches),
                generated_images=sum(len(b) for b in batches),
                generator_batch=gen.batch_for_budget(),
                optimizer_state_gib=round(opt_off.state_bytes() / 2**30, 2),
                update_tokens=info.get("update/tokens"),
            )
            if device.type == "cuda":
                r["reserved_peak_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
                r["device_total_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 2)
    fast.engine_for(model).free()
    model = opt = logp_model = None  # noqa: F841 - free the GPU memory
    gc.collect()


# ------------------------------------------------------------------------------------------ report
def markdown(d: dict) -> str:
    s = d["sections"]
    env = d["env"]
    lines = [
        f"Device: **{env['device']}** ({env['date']}); torch {env['torch']}, diffusers {env['diffusers']}, "
        f"transformers {env['transformers']}; bf16, random init, FLUX.1-schnell shape, 4 steps unless said",
        "",
        "| | 512x512 | 1024x1024 |",
        "| --- | --- | --- |",
    ]

    def g(sec, k, fmt="{}"):
        v = s.get(sec, {}).get(k)
        return fmt.format(v) if v is not None else "-"

    sizes = [512, 1024]
    rows = [
        ("one pipeline call per prompt: images/s", "per_prompt_images_per_s", "{:.2f}"),
        (
            "stock diffusers, batched (one call per `stock_batch` prompts): images/s",
            "stock_batched_images_per_s",
            "{:.2f}",
        ),
        ("**vlmgrpo batched**: images/s", "batched_images_per_s", "**{:.2f}**"),
        ("vlmgrpo vs stock batched", "speedup_vs_stock_batched", "{:.2f}x"),
        ("speed-up", "speedup", "{:.2f}x"),
        ("batch chosen by the memory budget", "batch", "{}"),
        ("activation memory per image (GiB)", "per_image_gib", "{:.2f}"),
        ("transformer FLOP floor (images/s at 989 TFLOP/s)", "floor_images_per_s", "{:.2f}"),
        ("share of the FLOP floor (bench/flops.py count)", "share_of_floor", "{:.0%}"),
        ("  same, one call per prompt", "share_of_floor_per_prompt", "{:.0%}"),
        ("  old count (2 x all params x tokens)", "old_share_of_floor", "{:.0%}"),
    ]
    for label, k, fmt in rows:
        lines.append(f"| {label} | " + " | ".join(g(f"gen_{z}", k, fmt) for z in sizes) + " |")
    f = {k2: v2 for k, v in s.items() if k.startswith("fast_") for k2, v2 in v.items()}
    if f:
        lines += [
            "",
            "Faster paths at 512x512 (same prompts and seeds; pixel difference from eager 4-step bf16):",
            "",
        ]
        lines += ["| path | images/s | mean abs pixel diff (0-255) / PSNR |", "| --- | --- | --- |"]
        lines.append(f"| eager, 4 steps | {f.get('eager_4_steps_images_per_s', '-')} | reference |")
        for k, label in (("compiled_4_steps", "torch.compile (regional), 4 steps"), ("eager_3_steps", "eager, 3 steps"),
                         ("eager_2_steps", "eager, 2 steps")):  # fmt: skip
            diff = f.get(f"{k}_vs_4_steps") or (
                f.get("compiled_vs_eager_4_steps") if k == "compiled_4_steps" else None
            )
            dtxt = f"{diff['mean_abs']} / {diff['psnr_db']} dB" if diff else "-"
            lines.append(f"| {label} | {f.get(f'{k}_images_per_s', '-')} | {dtxt} |")
        if "compile_first_call_s" in f:
            lines.append(f"\nCompile: first call {f['compile_first_call_s']} s.")
    e = s.get("embed", {})
    if e:
        lines += ["", f"DINOv2-large shape ({e.get('params_m')} M params, {e.get('dtype')}, batch {e.get('batch')}): "
                  f"{e.get('embeddings_per_s_model_only')} embeddings/s model only, "
                  f"{e.get('embeddings_per_s_with_preprocessing')} with preprocessing (512 px PIL in); "
                  f"4 cached originals re-embedded in {e.get('cached_originals_s')} s."]  # fmt: skip
    for z in sizes:
        c = s.get(f"cycle_step_{z}", {})
        if not c or "timeline" not in c:
            if c.get("error"):
                lines += ["", f"Cycle step at {z}: error {c['error'][:300]}"]
            continue
        lines += ["", f"Seed-A cycle step, generation at {z}x{z}, one GPU ({c['rows']} completions, "
                  f"{c['gen_tokens']} tokens, generator batch {c['generator_batch']}; optimizer moments "
                  f"{c['optimizer_state_gib']} GiB and reward models offloaded between phases): "
                  f"**{c['step_s']} s**, peak {c['peak_gib']} GiB allocated ({c.get('reserved_peak_gib')} reserved "
                  f"of {c.get('device_total_gib')}).", "", "| phase | s | peak GiB | GiB at end |",
                  "| --- | --- | --- | --- |"]  # fmt: skip
        for row in c["timeline"]:
            lines.append(
                f"| {row['phase']} | {row['s']} | {row.get('peak_gib', '-')} | {row.get('end_gib', '-')} |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--sizes", default=None, help="comma list (default 512,1024; tiny 64)")
    ap.add_argument("--cycle-sizes", default=None, help="comma list (default 512,1024; tiny 64)")
    ap.add_argument("--images", type=int, default=None, help="images per generation measurement (default 16)")
    ap.add_argument("--batch", type=int, default=16, help="generator batch_size cap")
    ap.add_argument("--memory-budget", type=float, default=40.0, help="generator_kwargs.memory_budget_gib")
    ap.add_argument("--txt-len", type=int, default=None, help="T5 sequence length (schnell: 256)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--embed-images", type=int, default=None)
    ap.add_argument("--embed-batch", type=int, default=32)
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--seed-a-new", type=int, default=None)
    ap.add_argument("--seed-a-image", type=int, default=224)
    ap.add_argument(
        "--stock-batch",
        type=int,
        default=0,
        help="prompts per call of the stock diffusers batched baseline (0: all; -1: skip it)",
    )
    ap.add_argument("--sections", default="", help="comma list of sections to run (default all)")
    ap.add_argument("--time-budget", type=float, default=560.0)
    ap.add_argument("--out", default="bench/out-reward")
    args = ap.parse_args()
    tiny = args.tiny
    args.sizes = [int(x) for x in (args.sizes or ("64" if tiny else "512,1024")).split(",")]
    args.cycle_sizes = [int(x) for x in (args.cycle_sizes or ("64" if tiny else "512,1024")).split(",")]
    args.images = args.images or (4 if tiny else 16)
    args.txt_len = args.txt_len or (16 if tiny else 256)
    args.embed_images = args.embed_images or (8 if tiny else 256)
    args.embed_batch = 4 if tiny else args.embed_batch
    args.seed_a_new = args.seed_a_new or (8 if tiny else 512)
    if tiny:
        args.seed_a_image, args.compile, args.memory_budget = 56, False, None

    import diffusers
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
        device=torch.cuda.get_device_name(0) if cuda else "cpu",
        torch=torch.__version__,
        diffusers=diffusers.__version__,
        transformers=transformers.__version__,
    )
    rec.data["args"] = vars(args)
    log("env " + json.dumps(rec.data["env"]))
    t = time.perf_counter()
    gen, sizes = build_generator(args, device, dtype)
    emb = build_embedder(args, device, dtype)
    rec.data["models"] = {
        **{k: round(v, 3) for k, v in sizes.items()},
        "build_s": round(time.perf_counter() - t, 1),
    }
    log("built " + json.dumps(rec.data["models"]))
    only = rec.only
    run_generation(args, rec, gen, device)
    run_embed(args, rec, emb)
    run_cycle_step(args, rec, gen, emb, device, dtype)  # before compiling: eager is the default path
    if not only or any(x.startswith("fast") for x in only):
        rec.only = set()
        run_fast_paths(args, rec, gen)
    rec.save()
    md = markdown(rec.data)
    (Path(args.out) / "bench.md").write_text(md)
    print(md)
    print("SUMMARY " + json.dumps({k: v for k, v in rec.data["sections"].items()}, default=str)[:3000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
