"""Offline builders for tiny, randomly initialised reward models: FLUX, DINOv2 and CLIP.

The cycle reward loads its text-to-image pipeline and its image embedder with `from_pretrained`
from a hub id or a local folder. No machine here reaches the hub, so tests and smoke runs use
tiny models of the real architectures, saved in the same formats, and the loading code runs
unchanged:

- `build_tiny_flux(out_dir)`: a `FluxPipeline` (FluxTransformer2DModel with 1 double + 1 single
  block, FLUX's AutoencoderKL layout with small channels, a tiny `CLIPTextModel` and
  `T5EncoderModel`, locally built `CLIPTokenizer` / `T5Tokenizer`, schnell's
  FlowMatchEulerDiscreteScheduler). Generates 64x64 in 4 steps in well under a second on CPU.
- `build_tiny_dinov2(out_dir)`: a `Dinov2Model` + `BitImageProcessor` (DINOv2's preprocessing:
  resize shortest edge, centre crop, ImageNet normalisation), at 56 px instead of 224.
- `build_tiny_clip(out_dir)`: a `CLIPModel` + `CLIPProcessor` (for the `clip` embedder path).

Every module is put in eval mode before saving (T5 dropout would make outputs random).
CLI: `python -m vlmgrpo.models.tiny_reward_models {flux,dinov2,clip} --out DIR`.
Heavy libraries are imported inside the functions.
"""

from __future__ import annotations

import argparse
import string
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlmgrpo.checkpoint import plain_modes

# FLUX.1-schnell's layouts (see shared/anchors/flux_anchor.py), shrunk.
TINY_FLUX_TRANSFORMER: dict[str, Any] = dict(
    patch_size=1,
    in_channels=64,
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,  # = T5 d_model
    pooled_projection_dim=32,  # = CLIP text hidden size
    guidance_embeds=False,
    axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
)
TINY_FLUX_VAE: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[8, 8, 16, 16],
    layers_per_block=1,
    act_fn="silu",
    latent_channels=16,
    norm_num_groups=4,
    sample_size=64,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    latents_mean=None,
    latents_std=None,
    force_upcast=True,
    use_quant_conv=False,
    use_post_quant_conv=False,
    mid_block_add_attention=True,
)
SCHNELL_SCHEDULER: dict[str, Any] = dict(
    num_train_timesteps=1000,
    shift=1.0,
    use_dynamic_shifting=False,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)
CLIP_MAX_LENGTH = 77
_COMMON_WORDS = ("the", "and", "with", "of", "a", "in", "on", "chart", "plot", "line", "bar", "axis")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build_clip_tokenizer(out_dir: str | Path | None = None) -> Any:
    """A byte-level `CLIPTokenizer`: the 256 byte symbols, the same with `</w>`, a few merges of
    common words, then `<|startoftext|>` / `<|endoftext|>` (CLIP's layout). Sorted, so the ids are
    deterministic. `model_max_length` 77 as in CLIP."""
    from transformers import CLIPTokenizer

    chars = sorted(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in _COMMON_WORDS:  # merge left to right: t h e</w> -> th e</w> -> the</w>
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            if pair not in merges:
                merges.append(pair)
                vocab.setdefault(pair[0] + pair[1], len(vocab))
            parts = [pair[0] + pair[1]] + parts[2:]
    for tok in ("<|startoftext|>", "<|endoftext|>"):
        vocab[tok] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_LENGTH)
    if out_dir is not None:
        tok.save_pretrained(str(out_dir))
    return tok


def build_t5_tokenizer(out_dir: str | Path | None = None, model_max_length: int = 512) -> Any:
    """A Unigram `T5Tokenizer` over characters and a few words; ids 0/1/2 = `<pad>`, `</s>`,
    `<unk>` as in T5; no sentinel tokens."""
    from transformers import T5Tokenizer

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    for c in string.ascii_letters + string.digits + string.punctuation:
        pieces += [("▁" + c, -3.0), (c, -4.0)]
    pieces += [("▁" + w, -1.0) for w in _COMMON_WORDS]
    tok = T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=model_max_length)
    if out_dir is not None:
        tok.save_pretrained(str(out_dir))
    return tok


def build_tiny_flux(out_dir: str | Path, seed: int = 0) -> Path:
    """Save a tiny random `FluxPipeline` to `out_dir` (loadable with `DiffusionPipeline` or
    `FluxPipeline.from_pretrained`). Returns the folder."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    out = Path(out_dir)
    torch.manual_seed(seed)
    clip_tok = build_clip_tokenizer()
    t5_tok = build_t5_tokenizer()
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_tok),
            hidden_size=TINY_FLUX_TRANSFORMER["pooled_projection_dim"],
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=CLIP_MAX_LENGTH,
            projection_dim=32,
            bos_token_id=clip_tok.bos_token_id,
            eos_token_id=clip_tok.eos_token_id,
            pad_token_id=clip_tok.pad_token_id,
        )
    ).eval()
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tok),
            d_model=TINY_FLUX_TRANSFORMER["joint_attention_dim"],
            d_kv=8,
            d_ff=64,
            num_layers=1,
            num_heads=4,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    ).eval()
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHNELL_SCHEDULER),
        vae=AutoencoderKL(**TINY_FLUX_VAE).eval(),
        text_encoder=clip,
        tokenizer=clip_tok,
        text_encoder_2=t5,
        tokenizer_2=t5_tok,
        transformer=FluxTransformer2DModel(**TINY_FLUX_TRANSFORMER).eval(),
    )
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(out))
    plain_modes(out)  # safetensors writes 0600; the rest of the folder follows the umask
    return out


def build_tiny_dinov2(out_dir: str | Path, seed: int = 0, image_size: int = 56) -> Path:
    """Save a tiny random `Dinov2Model` + `BitImageProcessor` (DINOv2's preprocessing scaled to
    `image_size`) to `out_dir`; reload with `AutoModel` / `AutoImageProcessor`."""
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    out = Path(out_dir)
    torch.manual_seed(seed)
    cfg = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        patch_size=14,
        image_size=image_size,
    )
    model = Dinov2Model(cfg).eval()
    proc = BitImageProcessor(
        do_resize=True,
        size={"shortest_edge": round(image_size * 256 / 224)},  # as dinov2: 256 then crop 224
        resample=3,  # bicubic
        do_center_crop=True,
        crop_size={"height": image_size, "width": image_size},
        do_rescale=True,
        do_normalize=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        do_convert_rgb=True,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    proc.save_pretrained(str(out))
    plain_modes(out)
    return out


def build_tiny_clip(out_dir: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """Save a tiny random `CLIPModel` + `CLIPProcessor` to `out_dir` (the `clip` embedder uses its
    image tower through `get_image_features`)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    out = Path(out_dir)
    torch.manual_seed(seed)
    tok = build_clip_tokenizer()
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=CLIP_MAX_LENGTH,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=8,
        ),
        projection_dim=16,
    )
    model = CLIPModel(cfg).eval()
    image_proc = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    CLIPProcessor(image_processor=image_proc, tokenizer=tok).save_pretrained(str(out))
    plain_modes(out)
    return out


BUILDERS = {"flux": build_tiny_flux, "dinov2": build_tiny_dinov2, "clip": build_tiny_clip}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build a tiny random reward model (offline).")
    p.add_argument("kind", choices=sorted(BUILDERS))
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    path = BUILDERS[args.kind](args.out, seed=args.seed)
    print(f"saved tiny {args.kind} to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
