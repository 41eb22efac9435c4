"""The HF `generate` rollout backend: works for every architecture, on CPU and GPU.

Prompts are rendered with the processor's chat template (so images land at the template's vision
markers), repeated G times, and sampled in one `generate` call. Vision and special tokens that a
policy must never emit (`<|image_pad|>`, `<|im_start|>`, embedding-padding ids) are suppressed:
a sampled `<|image_pad|>` makes the next forward fail with "image features and image tokens do
not match".
"""

from __future__ import annotations

from typing import Any

import torch

from vlmgrpo.rollout import Prompt, RolloutBatch

NEVER_SAMPLE = (
    "<|im_start|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
)


def tokenizer_of(proc: Any) -> Any:
    return getattr(proc, "tokenizer", proc)


def eos_ids(proc: Any, model: Any) -> list[int]:
    """Ids that end a completion: the generation config's EOS plus `<|im_end|>`/`<|endoftext|>`."""
    tok = tokenizer_of(proc)
    ids: set[int] = set()
    gc_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if gc_eos is not None:
        ids.update([gc_eos] if isinstance(gc_eos, int) else gc_eos)
    for t in ("<|im_end|>", "<|endoftext|>"):
        i = tok.convert_tokens_to_ids(t)
        if isinstance(i, int) and i != tok.unk_token_id:
            ids.add(i)
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    return sorted(ids)


def suppressed_ids(proc: Any, vocab_size: int) -> list[int]:
    tok = tokenizer_of(proc)
    ids = [tok.convert_tokens_to_ids(t) for t in NEVER_SAMPLE]
    ids = [i for i in ids if isinstance(i, int) and i is not None and i != tok.unk_token_id]
    ids += list(range(len(tok), vocab_size))  # embedding rows past the tokenizer: padding
    return sorted(set(ids))


def render_prompt(proc: Any, prompt: Prompt) -> str:
    tok = tokenizer_of(proc)
    templ = proc if hasattr(proc, "chat_template") and proc.chat_template else tok
    text = templ.apply_chat_template(prompt.messages, add_generation_prompt=True, tokenize=False)
    return text + prompt.prefill


def encode_prompts(
    proc: Any, prompts: list[Prompt], repeat: int, device: Any
) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Tokenise `prompts`, each repeated `repeat` times, left-padded.

    Returns (batch inputs for generate: input_ids/attention_mask [B, P] + vision tensors,
    per-row vision tensors for the update). B = len(prompts) * repeat.
    """
    texts = [render_prompt(proc, p) for p in prompts for _ in range(repeat)]
    has_images = any(p.images for p in prompts)
    if has_images:
        images = [list(p.images) for p in prompts for _ in range(repeat)]
        # on CUDA the (torchvision) image processor resizes and normalises on the GPU
        kw = {"device": device} if torch.device(device).type == "cuda" else {}
        enc = proc(text=texts, images=images, padding=True, return_tensors="pt", **kw)
    else:
        enc = tokenizer_of(proc)(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    enc = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in enc.items()}
    rows: list[dict[str, torch.Tensor]] = [{} for _ in texts]
    if has_images and "image_grid_thw" in enc:
        grid, pv = enc["image_grid_thw"], enc["pixel_values"]
        n_img = [len(p.images) for p in prompts for _ in range(repeat)]
        patches = grid.prod(-1).tolist()
        img, patch = 0, 0
        for r, k in enumerate(n_img):
            n_patch = sum(patches[img : img + k])
            rows[r] = {"pixel_values": pv[patch : patch + n_patch], "image_grid_thw": grid[img : img + k]}
            img, patch = img + k, patch + n_patch
    return enc, rows


@torch.no_grad()
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
    synced_gpus: bool = False,
) -> RolloutBatch:
    """Sample `group_size` completions per prompt. temperature 0 = greedy.

    `return_logps` also returns the sampling-time log-probs ([B, C], from the unprocessed logits /
    temperature, which is what the training forward computes); it keeps [B, V] logits per step.
    """
    device = next(model.parameters()).device
    if device.type == "cpu" and torch.cuda.is_available() and synced_gpus:
        # FSDP2 with CPU offload keeps the sharded parameters on the host; compute runs on this
        # rank's GPU, so the inputs go there
        device = torch.device("cuda", torch.cuda.current_device())
    enc, vision_rows = encode_prompts(proc, prompts, group_size, device)
    tok = tokenizer_of(proc)
    vocab = model.get_output_embeddings().weight.shape[0]
    eos = eos_ids(proc, model)
    greedy = temperature <= 0
    gen_kwargs: dict[str, Any] = dict(
        max_new_tokens=max_new_tokens,
        do_sample=not greedy,
        eos_token_id=eos,
        pad_token_id=tok.pad_token_id,
        suppress_tokens=suppressed_ids(proc, vocab),
        return_dict_in_generate=True,
        output_logits=return_logps,
        synced_gpus=synced_gpus,  # FSDP: every rank runs the same number of forwards
    )
    if not greedy:
        gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=top_k or None)
    else:
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    was_training = model.training
    model.eval()
    out = model.generate(**enc, **gen_kwargs)
    model.train(was_training)
    prompt_len = enc["input_ids"].shape[1]
    completion_ids = out.sequences[:, prompt_len:]
    from vlmgrpo.grpo.core import completion_mask_from_eos

    mask = completion_mask_from_eos(completion_ids, eos, tok.pad_token_id)
    completion_ids = torch.where(
        mask.bool(), completion_ids, torch.full_like(completion_ids, tok.pad_token_id)
    )
    texts = tok.batch_decode(completion_ids, skip_special_tokens=True)
    prefills = [p.prefill for p in prompts for _ in range(group_size)]
    sample_logps = None
    if return_logps:
        logits = torch.stack(out.logits, dim=1).float()  # [B, C, V]
        if not greedy:
            logits = logits / temperature
        sample_logps = torch.log_softmax(logits, -1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
        sample_logps = sample_logps * mask
    extra = {k: v for k, v in enc.items() if k == "mm_token_type_ids" or k == "token_type_ids"}
    return RolloutBatch(
        prompt_ids=enc["input_ids"],
        prompt_mask=enc["attention_mask"],
        completion_ids=completion_ids,
        completion_mask=mask,
        vision_rows=vision_rows,
        prompt_extra=extra,
        completions=[pf + t for pf, t in zip(prefills, texts)],
        sample_logps=sample_logps,
        group_size=group_size,
    )


def concat(parts: list[RolloutBatch], proc: Any) -> RolloutBatch:
    """Stack rollouts of different prompt/completion lengths: prompts re-padded on the left,
    completions on the right (mask 0 on padding)."""
    pad = tokenizer_of(proc).pad_token_id
    p_len = max(b.prompt_ids.shape[1] for b in parts)
    c_len = max(b.completion_ids.shape[1] for b in parts)

    def left(t: torch.Tensor, n: int, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(t, (n - t.shape[1], 0), value=value)

    def right(t: torch.Tensor, n: int, value: float) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, n - t.shape[1]), value=value)

    logps = [b.sample_logps for b in parts]
    return RolloutBatch(
        prompt_ids=torch.cat([left(b.prompt_ids, p_len, pad) for b in parts]),
        prompt_mask=torch.cat([left(b.prompt_mask, p_len, 0) for b in parts]),
        completion_ids=torch.cat([right(b.completion_ids, c_len, pad) for b in parts]),
        completion_mask=torch.cat([right(b.completion_mask, c_len, 0) for b in parts]),
        vision_rows=[r for b in parts for r in b.vision_rows],
        prompt_extra={
            k: torch.cat([left(b.prompt_extra[k], p_len, 0) for b in parts]) for k in parts[0].prompt_extra
        },
        completions=[c for b in parts for c in b.completions],
        sample_logps=None
        if any(x is None for x in logps)
        else torch.cat([right(x, c_len, 0.0) for x in logps]),
        group_size=parts[0].group_size,
    )
