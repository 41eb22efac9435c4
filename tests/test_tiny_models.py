"""Tiny offline models (vlmgrpo.models.tiny): they load, tokenize, see images and generate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from vlmgrpo.models import tiny

VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
TEXT_WITH_TAGS = (
    "<think>\nA small red circle at the top left\nand a large blue square.\n</think>\n"
    "<answer>42</answer>\n<reasoning>x = 3</reasoning> <scan>bar chart</scan>\n\n"
    "import matplotlib.pyplot as plt\nfig, ax = plt.subplots(figsize=(4, 3))\n\tcafé ü"
)


def _scene(size: int = 84) -> Image.Image:
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    draw.ellipse((size // 8, size // 8, size // 2, size // 2), fill="red")
    draw.rectangle((size // 2, size // 2, size - 4, size - 4), fill="blue")
    return img


def _suppress_ids(tokenizer, vocab_size: int) -> list[int]:
    """Vision ids, <|im_start|> and embedding padding rows: a random policy must not sample them."""
    ids = [tokenizer.convert_tokens_to_ids(t) for t in (*VISION_TOKENS, "<|im_start|>")]
    return ids + list(range(len(tokenizer), vocab_size))


def _load_vlm(path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    return processor, model


def _image_prompt(processor, text: str = "Describe the image.") -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


# ------------------------------------------------------------------------------ tokenizer


def test_tokenizer_special_tokens_in_qwen_order():
    tok = tiny.build_tokenizer()
    ids = [tok.convert_tokens_to_ids(t) for t in tiny.QWEN_SPECIAL_TOKENS]
    first = len(tok) - len(tiny.QWEN_SPECIAL_TOKENS)
    assert ids == list(range(first, len(tok)))
    assert tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|im_end|>"
    assert tok.bos_token is None and tok.unk_token is None
    assert 600 <= len(tok) <= 1100  # small vocabulary, so tiny embeddings
    # Specials never split; byte-level newline is in the alphabet.
    enc = tok("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>").input_ids
    assert enc[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert tok.convert_tokens_to_ids("Ċ") < 256
    assert tok.convert_ids_to_tokens(tok("\n").input_ids) == ["Ċ"]


def test_tokenizer_round_trip():
    tok = tiny.build_tokenizer()
    ids = tok(TEXT_WITH_TAGS).input_ids
    assert tok.decode(ids) == TEXT_WITH_TAGS
    assert len(ids) < len(TEXT_WITH_TAGS) / 2  # the corpus words are merged, not spelt out byte by byte
    # Task words are single tokens (with their leading space).
    for word in ("red", "circle", "left", "chart", "plt"):
        assert len(tok(" " + word).input_ids) == 1, word
    text = "<|im_start|>assistant\nred circle<|im_end|>\n"
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == "assistant\nred circle\n"


def test_tokenizer_deterministic_across_processes(tmp_path):
    """Same vocabulary and merges in this process and in a fresh one with another hash seed."""
    tiny._train_bpe.cache_clear()
    here = json.loads(tiny.build_tokenizer()._tokenizer.to_str())
    tiny._train_bpe.cache_clear()
    again = json.loads(tiny.build_tokenizer()._tokenizer.to_str())
    assert again == here
    out = tmp_path / "tok"
    code = f"from vlmgrpo.models.tiny import build_tokenizer; build_tokenizer({str(out)!r})"
    src = str(Path(tiny.__file__).resolve().parents[2])  # importable however pytest found vlmgrpo
    pythonpath = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": pythonpath}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    other = json.loads((out / "tokenizer.json").read_text())
    assert other["model"]["vocab"] == here["model"]["vocab"]
    assert other["model"]["merges"] == here["model"]["merges"]
    assert other["added_tokens"] == here["added_tokens"]


def test_chat_template_formats():
    tok = tiny.build_tokenizer()
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "text", "text": "Compare"},
                {"type": "image"},
            ],
        },
        {"role": "assistant", "content": "red"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False)
    vis = "<|vision_start|><|image_pad|><|vision_end|>"
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{vis}Compare{vis}<|im_end|>\n"
        "<|im_start|>assistant\nred<|im_end|>\n"
    )
    user_only = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(user_only, tokenize=False) == "<|im_start|>user\nhi<|im_end|>\n"
    assert tok.apply_chat_template(user_only, tokenize=False, add_generation_prompt=True).endswith(
        "<|im_end|>\n<|im_start|>assistant\n"
    )


# ------------------------------------------------------------------------------ VLMs


@pytest.fixture(params=["qwen2_5_vl", "qwen3_vl"])
def vlm_dir(request):
    fixture = {"qwen2_5_vl": "tiny_vlm_dir", "qwen3_vl": "tiny_qwen3_vl_dir"}[request.param]
    return request.getfixturevalue(fixture)


def test_vlm_config_matches_tokenizer(vlm_dir):
    processor, model = _load_vlm(vlm_dir)
    tok = processor.tokenizer
    cfg = model.config
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert cfg.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert cfg.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert cfg.vision_end_token_id == tok.convert_tokens_to_ids("<|vision_end|>")
    assert cfg.text_config.vocab_size >= len(tok) and cfg.text_config.vocab_size % 64 == 0
    assert model.generation_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert processor.chat_template == tok.chat_template == tiny.CHAT_TEMPLATE
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    ip = processor.image_processor
    assert ip.patch_size == cfg.vision_config.patch_size
    assert ip.merge_size == cfg.vision_config.spatial_merge_size
    assert ip.temporal_patch_size == cfg.vision_config.temporal_patch_size


@pytest.mark.parametrize(("size", "n_tokens"), [(56, 4), (84, 9), (224, 16), (448, 16)])
def test_vlm_image_tokens_match_grid(vlm_dir, size, n_tokens):
    processor, model = _load_vlm(vlm_dir)
    prompt = _image_prompt(processor)
    assert prompt.count("<|image_pad|>") == 1
    enc = processor(text=[prompt], images=[_scene(size)], return_tensors="pt")
    merge = processor.image_processor.merge_size
    expected = int(enc["image_grid_thw"].prod(-1).sum()) // merge**2
    assert int((enc["input_ids"] == model.config.image_token_id).sum()) == expected == n_tokens
    assert enc["pixel_values"].shape[0] == int(enc["image_grid_thw"].prod(-1).sum())


def test_white_background_normalises_to_zero(tiny_vlm_dir):
    processor, _ = _load_vlm(tiny_vlm_dir)
    enc = processor.image_processor(images=[Image.new("RGB", (84, 84), "white")], return_tensors="pt")
    assert enc["pixel_values"].abs().max().item() == 0.0
    enc = processor.image_processor(images=[Image.new("RGB", (84, 84), "black")], return_tensors="pt")
    assert torch.allclose(enc["pixel_values"], torch.full_like(enc["pixel_values"], -2.0))


def test_vlm_forward_and_generate(vlm_dir):
    processor, model = _load_vlm(vlm_dir)
    tok = processor.tokenizer
    prompt = _image_prompt(processor)
    enc = processor(text=[prompt], images=[_scene(84)], return_tensors="pt")
    with torch.no_grad():
        out = model(**enc)
    n_prompt = enc["input_ids"].shape[1]
    assert out.logits.shape == (1, n_prompt, model.config.text_config.vocab_size)
    assert torch.isfinite(out.logits).all()

    torch.manual_seed(0)
    suppress = _suppress_ids(tok, model.config.text_config.vocab_size)
    gen = model.generate(
        **enc,
        max_new_tokens=6,
        do_sample=True,
        suppress_tokens=suppress,
        output_scores=True,
        return_dict_in_generate=True,
    )
    new = gen.sequences[0, n_prompt:]
    assert 1 <= new.numel() <= 6
    assert not set(new.tolist()) & set(suppress)
    assert isinstance(tok.decode(new, skip_special_tokens=True), str)

    # The sampled sequence re-scored by one forward pass (mm_token_type_ids zero-padded over the
    # completion, as the trainer does) gives the generation-time logits.
    seq = gen.sequences
    mm = torch.zeros_like(seq)
    mm[:, :n_prompt] = enc["mm_token_type_ids"]
    with torch.no_grad():
        full = model(
            input_ids=seq,
            attention_mask=torch.ones_like(seq),
            mm_token_type_ids=mm,
            pixel_values=enc["pixel_values"],
            image_grid_thw=enc["image_grid_thw"],
        ).logits
    scored = torch.stack(gen.scores, dim=1)[0]  # (T, V), suppressed ids at -inf
    fwd = full[0, n_prompt - 1 : seq.shape[1] - 1]
    keep = torch.isfinite(scored)
    assert torch.allclose(fwd[keep], scored[keep], atol=1e-4)


def test_vlm_batch_with_two_images_and_text_only(vlm_dir):
    processor, model = _load_vlm(vlm_dir)
    tok = processor.tokenizer
    tok.padding_side = "left"
    prompts = [_image_prompt(processor, "What colour is the circle?"), _image_prompt(processor)]
    enc = processor(text=prompts, images=[_scene(84), _scene(112)], padding=True, return_tensors="pt")
    suppress = _suppress_ids(tok, model.config.text_config.vocab_size)
    gen = model.generate(**enc, max_new_tokens=4, do_sample=False, suppress_tokens=suppress)
    assert gen.shape[0] == 2
    # A text-only prompt through the same processor and model.
    text = processor.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    enc = processor(text=[text], return_tensors="pt")
    gen = model.generate(**enc, max_new_tokens=4, do_sample=False, suppress_tokens=suppress)
    assert gen.shape[1] > enc["input_ids"].shape[1]


def test_vlm_overrides(tmp_path):
    from transformers import AutoConfig, AutoProcessor

    path = tiny.build_tiny_vlm(
        tmp_path / "m",
        arch="qwen2_5_vl",
        seed=1,
        max_pixels=28 * 28 * 4,
        image_mean=(0.5, 0.5, 0.5),
        text_config={"num_hidden_layers": 1},
        tie_word_embeddings=True,
    )
    cfg = AutoConfig.from_pretrained(path)
    assert cfg.text_config.num_hidden_layers == 1 and cfg.tie_word_embeddings
    proc = AutoProcessor.from_pretrained(path)
    assert list(proc.image_processor.image_mean) == [0.5, 0.5, 0.5]
    enc = proc(text=[_image_prompt(proc)], images=[_scene(224)], return_tensors="pt")
    assert int((enc["input_ids"] == cfg.image_token_id).sum()) == 4


def test_same_seed_same_weights(tmp_path, tiny_vlm_dir):
    from safetensors.torch import load_file

    again = tiny.build_tiny_vlm(tmp_path / "again", arch="qwen2_5_vl", seed=0)
    a = load_file(str(tiny_vlm_dir / "model.safetensors"))
    b = load_file(str(again / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------ text LM and CLI


def test_text_lm_loads_and_generates(tiny_text_lm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_text_lm_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_text_lm_dir).eval()
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id == model.generation_config.pad_token_id
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Describe a red circle."}], add_generation_prompt=True, tokenize=False
    )
    enc = tok([text], return_tensors="pt")
    suppress = _suppress_ids(tok, model.config.vocab_size)
    gen = model.generate(**enc, max_new_tokens=5, do_sample=True, suppress_tokens=suppress)
    assert gen.shape[1] > enc["input_ids"].shape[1]


def test_cli_main(tmp_path, capsys):
    assert tiny.main(["--arch", "qwen2", "--out", str(tmp_path / "lm")]) == 0
    assert (tmp_path / "lm" / "config.json").is_file()
    assert str(tmp_path / "lm") in capsys.readouterr().out
    with pytest.raises(SystemExit):
        tiny.main(["--arch", "llama", "--out", str(tmp_path / "x")])
