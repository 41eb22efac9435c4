"""Offline builders for tiny, randomly initialised models of the real architectures.

No machine here reaches a model hub, so tests (and smoke runs) use tiny models that the project
builds itself and saves in Hugging Face format. The real loading path (`from_pretrained` on a
folder) is then exercised unchanged:

- `build_tokenizer()`: a byte-level BPE with Qwen2's pre-tokenizer, trained on a deterministic
  generated corpus of our task vocabulary, with the Qwen special tokens appended in Qwen's order
  and a Qwen2-VL-style chat template.
- `build_tiny_vlm(out_dir, arch="qwen2_5_vl" | "qwen3_vl")`: model + processor + generation config,
  reloadable with `AutoProcessor` / `AutoModelForImageTextToText`.
- `build_tiny_text_lm(out_dir)`: a tiny `Qwen2ForCausalLM` (reload with `AutoTokenizer` /
  `AutoModelForCausalLM`).

CLI: `python -m vlmgrpo.models.tiny --arch qwen2_5_vl --out DIR`.

Heavy libraries (torch, transformers, tokenizers) are imported inside the functions.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ARCHS = ("qwen2_5_vl", "qwen3_vl", "qwen2")

# Qwen's special tokens, in Qwen's id order (they follow the BPE vocabulary, as in the real models).
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
PAD_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"

# Qwen2-VL's chat template without the default system message: one
# <|vision_start|><|image_pad|><|vision_end|> per image item; content is a string or a list of
# {"type": "image" | "video" | "text"} items.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

DEFAULT_VOCAB_SIZE = 768  # byte alphabet (256) + merges; the 14 special tokens come on top
# White background -> 0 after rescale to [0, 1]: (x - 1) / 0.5 maps white to 0 and black to -2.
# With CLIP normalisation the white background dominated a tiny model's patch embeddings.
DEFAULT_IMAGE_MEAN = (1.0, 1.0, 1.0)
DEFAULT_IMAGE_STD = (0.5, 0.5, 0.5)
# Bounds on merged vision tokens per image (each token covers (patch * merge)^2 pixels).
MIN_VISION_TOKENS = 4
MAX_VISION_TOKENS = 16

# ----------------------------------------------------------------------------------------------
# Corpus
# ----------------------------------------------------------------------------------------------

_COLOURS = ["red", "green", "blue", "yellow", "orange", "purple", "black", "white", "gray"]
_SHAPES = ["circle", "square", "triangle", "rectangle"]
_SIZES = ["small", "large", "big"]
_POSITIONS = [
    "left",
    "right",
    "top",
    "bottom",
    "center",
    "middle",
    "upper",
    "lower",
    "top left",
    "top right",
    "bottom left",
    "bottom right",
    "upper left",
    "lower right",
]


def _words(text: str) -> list[str]:
    return text.split()


_CHARTS = ["bar", "line", "scatter", "pie"]
_CHART_WORDS = ["axis", "title", "legend", "label", "grid", "value", "values", "data", "series"]
_TAGS = ["think", "answer", "reasoning", "scan"]
_NOUNS = ["image", "picture", "chart", "plot", "figure", "scene", "diagram", "shape", "object"]
_QUESTIONS = [
    "What colour is the {shape}?",
    "How many {shape}s are there?",
    "Where is the {colour} {shape}?",
    "Describe the image.",
    "Describe the {noun} in one sentence.",
    "Which shape is {colour}?",
    "Is the {shape} on the {pos}?",
    "Write Python code that draws this {chart} chart.",
    "What is the title of the {chart} chart?",
    "Find the value of x.",
    "What is the area of the {shape}?",
]
_FILLER = _words(
    "the a an is are was of in on at to with there this that it its and or not so then first "
    "next finally because therefore total number count step let us we see shows show image "
    "picture question answer please think carefully about what where which how many one two "
    "three four five six seven eight nine ten has have each other above below next to near "
    "between inside outside background foreground colour color shape size position object "
    "objects system user assistant you are a helpful describe description final result "
    "correct wrong yes no true false length width height angle degrees side radius area "
    "perimeter triangle sum equals find value solve given point line segment"
)
_CODE_LINES = [
    "import matplotlib.pyplot as plt",
    "import numpy as np",
    "fig, ax = plt.subplots(figsize=({a}, {b}))",
    "x = np.arange({a})",
    "y = np.linspace(0, {a}, {b})",
    "values = [{a}, {b}, {c}]",
    "labels = ['{w1}', '{w2}', '{w3}']",
    "ax.bar(labels, values, color='{colour}')",
    "ax.plot(x, y, color='{colour}', linewidth={a})",
    "ax.scatter(x, y, c='{colour}', s={a}{b})",
    "ax.pie(values, labels=labels)",
    "ax.set_title('{w1} {w2}')",
    "ax.set_xlabel('{w1}')",
    "ax.set_ylabel('{w2}')",
    "ax.legend()",
    "ax.grid(True)",
    "ax.set_xlim(0, {a}{b})",
    "plt.tight_layout()",
    "plt.savefig('chart.png')",
    "plt.show()",
    "for i in range({a}):",
    "    y[i] = x[i] * {b} + {c}",
    "def f(x):",
    "    return x ** {a} + {b}",
    "if x > {a}:",
    "else:",
    "    print(x)",
]


def _digits(rng: random.Random) -> str:
    return str(rng.choice([rng.randint(0, 9), rng.randint(10, 99), rng.randint(100, 999)]))


def _object_phrase(rng: random.Random) -> str:
    words = []
    if rng.random() < 0.7:
        words.append(rng.choice(_SIZES))
    words.append(rng.choice(_COLOURS))
    words.append(rng.choice(_SHAPES))
    phrase = "a " + " ".join(words)
    if rng.random() < 0.8:
        phrase += rng.choice([" at the ", " in the ", " on the "]) + rng.choice(_POSITIONS)
    return phrase


def _scene(rng: random.Random) -> str:
    objs = [_object_phrase(rng) for _ in range(rng.randint(1, 3))]
    sep = rng.choice([" and ", ", ", "; "])
    text = sep.join(objs)
    return (text[0].upper() + text[1:] if rng.random() < 0.5 else text) + rng.choice([".", "", "!"])


def _fill(template: str, rng: random.Random) -> str:
    return template.format(
        shape=rng.choice(_SHAPES),
        colour=rng.choice(_COLOURS),
        pos=rng.choice(_POSITIONS),
        noun=rng.choice(_NOUNS),
        chart=rng.choice(_CHARTS),
        a=rng.randint(1, 9),
        b=rng.randint(0, 9),
        c=rng.randint(0, 99),
        w1=rng.choice(_FILLER),
        w2=rng.choice(_COLOURS),
        w3=rng.choice(_SHAPES),
    )


def _code(rng: random.Random) -> str:
    lines = _CODE_LINES[:3] + rng.sample(_CODE_LINES[3:], k=rng.randint(3, 8))
    return "\n".join(_fill(line, rng) for line in lines)


def _reasoning(rng: random.Random) -> str:
    tag = rng.choice(["think", "reasoning", "scan"])
    steps = " ".join(
        rng.choice(
            [
                f"There is {_object_phrase(rng)}.",
                f"The {rng.choice(_CHARTS)} chart has {_digits(rng)} {rng.choice(['bars', 'points', 'lines'])}.",
                f"The {rng.choice(_CHART_WORDS)} is {rng.choice(_FILLER)} {_digits(rng)}.",
                f"{_digits(rng)} + {_digits(rng)} = {_digits(rng)}, so x = {_digits(rng)}.",
                f"So the answer is {rng.choice(_COLOURS + _SHAPES)}.",
                " ".join(rng.choice(_FILLER) for _ in range(rng.randint(3, 9))) + ".",
            ]
        )
        for _ in range(rng.randint(1, 4))
    )
    answer = rng.choice([_digits(rng), rng.choice(_COLOURS), _scene(rng), rng.choice(["A", "B", "C", "D"])])
    nl = rng.choice(["\n", ""])
    return f"<{tag}>{nl}{steps}{nl}</{tag}>{nl}<answer>{answer}</answer>"


def _chart_sentence(rng: random.Random) -> str:
    chart = rng.choice(_CHARTS)
    return (
        f"A {chart} chart with {_digits(rng)} {rng.choice(['bars', 'points', 'lines', 'slices'])}, "
        f"the {rng.choice(['x', 'y'])} axis from {_digits(rng)} to {_digits(rng)}, "
        f"a {rng.choice(_COLOURS)} {rng.choice(_CHART_WORDS)} and the title '{rng.choice(_FILLER)}'."
    )


def generate_corpus(n: int = 4000, seed: int = 0) -> list[str]:
    """A deterministic list of `n` short texts covering the words our tasks use."""
    rng = random.Random(seed)
    makers = [
        _scene,
        _reasoning,
        _code,
        _chart_sentence,
        lambda r: _fill(r.choice(_QUESTIONS), r),
        lambda r: (
            " ".join(r.choice(_FILLER) for _ in range(r.randint(4, 14))) + r.choice([".", "?", ":", "!"])
        ),
        lambda r: " ".join(_digits(r) for _ in range(r.randint(2, 6))),
    ]
    weights = [4, 3, 2, 2, 2, 3, 1]
    out = []
    for _ in range(n):
        maker = rng.choices(makers, weights=weights)[0]
        out.append(maker(rng))
    # Every tag, punctuation mark and digit at least a few times.
    out += [f"<{t}></{t}>\n<{t}>\n</{t}>\n" for t in _TAGS] * 3
    out += ["0 1 2 3 4 5 6 7 8 9 10 . , ; : ! ? ( ) [ ] { } ' \" - + * / = < > _ # % & @ |\n\n"] * 3
    return out


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable unicode map (Qwen uses the same); its order is the alphabet order."""
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


@functools.lru_cache(maxsize=8)
def _train_bpe(vocab_size: int, corpus_size: int, seed: int) -> tuple[tuple[tuple[str, str], ...], str]:
    """Train the BPE once per process; returns (merges, vocab json) for a fresh tokenizer each call."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    byte_alphabet = list(_bytes_to_unicode().values())  # fixed, sorted by byte value
    tk = Tokenizer(BPE())
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=sorted(byte_alphabet),
        special_tokens=[],
    )
    tk.train_from_iterator(generate_corpus(corpus_size, seed), trainer)
    merges = tuple(tuple(m) for m in json.loads(tk.to_str())["model"]["merges"])
    # Our own id order (the trainer's alphabet order is not something to rely on): the 256 byte
    # symbols in byte order (as in GPT-2/Qwen), then one token per merge in merge order.
    vocab: dict[str, int] = {}
    for sym in byte_alphabet:
        vocab.setdefault(sym, len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return merges, json.dumps(vocab)


def build_tokenizer(
    out_dir: str | Path | None = None,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    *,
    corpus_size: int = 4000,
    seed: int = 0,
):
    """Build the tiny Qwen2-style tokenizer (a transformers `Qwen2Tokenizer`, i.e. the fast one).

    `vocab_size` bounds the BPE part (256 byte symbols + merges); the 14 Qwen special tokens follow
    it, so `len(tok) <= vocab_size + 14`. pad = `<|endoftext|>`, eos = `<|im_end|>`, no bos/unk.
    Deterministic: the same arguments give the same vocabulary. Saved to `out_dir` if given.
    """
    from tokenizers import AddedToken
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    merges, vocab_json = _train_bpe(vocab_size, corpus_size, seed)
    vocab: dict[str, int] = json.loads(vocab_json)
    for tok in QWEN_SPECIAL_TOKENS:  # contiguous ids in Qwen's order, right after the BPE vocab
        vocab[tok] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[tuple(m) for m in merges],
        unk_token=None,
        bos_token=None,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=32768,
    )
    # Already in the vocabulary, so these keep their ids; marks them special (never split, skipped
    # by decode(skip_special_tokens=True)).
    tokenizer.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS], special_tokens=True
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = tokenizer.convert_tokens_to_ids(list(QWEN_SPECIAL_TOKENS))
    expected = list(range(len(vocab) - len(QWEN_SPECIAL_TOKENS), len(vocab)))
    if ids != expected or len(tokenizer) != len(vocab):  # a transformers change would break the ids
        raise RuntimeError(f"special token ids {ids} != {expected}")
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def special_token_ids(tokenizer) -> dict[str, int]:
    """Ids of the Qwen special tokens, keyed by token text (e.g. `ids["<|image_pad|>"]`)."""
    return {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}


def _round_up(n: int, multiple: int = 64) -> int:
    return (n + multiple - 1) // multiple * multiple


def _merge(base: dict[str, Any], override: dict[str, Any] | None) -> dict[str, Any]:
    out = dict(base)
    out.update(override or {})
    return out


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


def build_tiny_vlm(
    out_dir: str | Path,
    arch: str = "qwen2_5_vl",
    seed: int = 0,
    *,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    image_mean: Sequence[float] = DEFAULT_IMAGE_MEAN,
    image_std: Sequence[float] = DEFAULT_IMAGE_STD,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    text_config: dict[str, Any] | None = None,
    vision_config: dict[str, Any] | None = None,
    **overrides: Any,
) -> Path:
    """Save a tiny random Qwen2.5-VL or Qwen3-VL (model, processor, generation config) to `out_dir`.

    Image processor: pixels bounded to [MIN_VISION_TOKENS, MAX_VISION_TOKENS] merged tokens per
    image by default (an 84x84 image gives 9 `<|image_pad|>` tokens, 224x224 gives 16) and
    normalised with `image_mean` / `image_std` (default: white -> 0). `text_config` /
    `vision_config` entries override the tiny defaults; other `overrides` go to the top-level config.
    Reload with `AutoProcessor.from_pretrained(dir)` + `AutoModelForImageTextToText.from_pretrained(dir)`.
    """
    import torch
    from transformers import GenerationConfig
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    if arch not in ("qwen2_5_vl", "qwen3_vl"):
        raise ValueError(f"arch must be 'qwen2_5_vl' or 'qwen3_vl', got {arch!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab_size=vocab_size)
    ids = special_token_ids(tokenizer)
    n_vocab = _round_up(len(tokenizer))
    token_ids = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }
    text_common = {
        "vocab_size": n_vocab,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "pad_token_id": ids[PAD_TOKEN],
    }
    patch = 14 if arch == "qwen2_5_vl" else 16
    merge, temporal = 2, 2
    vision_common = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "patch_size": patch,
        "temporal_patch_size": temporal,
        "spatial_merge_size": merge,
        "out_hidden_size": text_common["hidden_size"],
    }

    if arch == "qwen2_5_vl":
        from transformers import (
            Qwen2_5_VLConfig,
            Qwen2_5_VLForConditionalGeneration,
            Qwen2_5_VLProcessor,
        )
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

        tcfg = _merge(
            {
                **text_common,
                "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
                "bos_token_id": ids[PAD_TOKEN],
                "eos_token_id": ids[EOS_TOKEN],
            },
            text_config,
        )
        vcfg = _merge(
            {
                **vision_common,
                "window_size": patch * merge * 4,
                "fullatt_block_indexes": [1],
                "tokens_per_second": 2,
            },
            vision_config,
        )
        config = Qwen2_5_VLConfig(text_config=tcfg, vision_config=vcfg, **token_ids, **overrides)
        model_cls, proc_cls, video_cls = (
            Qwen2_5_VLForConditionalGeneration,
            Qwen2_5_VLProcessor,
            Qwen2VLVideoProcessor,
        )
    else:
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

        tcfg = _merge(
            {
                **text_common,
                "head_dim": 16,
                "rope_parameters": {
                    "rope_type": "default",
                    "rope_theta": 5e6,
                    "mrope_section": [4, 2, 2],
                    "mrope_interleaved": True,
                },
            },
            text_config,
        )
        vcfg = _merge(
            {
                **vision_common,
                "hidden_act": "gelu_pytorch_tanh",
                "num_position_embeddings": 256,  # a 16x16 learned grid, interpolated per image
                "deepstack_visual_indexes": [0],
            },
            vision_config,
        )
        config = Qwen3VLConfig(text_config=tcfg, vision_config=vcfg, **token_ids, **overrides)
        model_cls, proc_cls, video_cls = (
            Qwen3VLForConditionalGeneration,
            Qwen3VLProcessor,
            Qwen3VLVideoProcessor,
        )

    # Keep image/vision hyper-parameters in one place: the processor reads the same patch sizes.
    patch = config.vision_config.patch_size
    merge = config.vision_config.spatial_merge_size
    temporal = config.vision_config.temporal_patch_size
    unit = (patch * merge) ** 2  # pixels per merged vision token
    proc_kwargs = {
        "patch_size": patch,
        "temporal_patch_size": temporal,
        "merge_size": merge,
        "image_mean": list(image_mean),
        "image_std": list(image_std),
    }
    image_processor = Qwen2VLImageProcessor(
        size={
            "shortest_edge": min_pixels if min_pixels is not None else MIN_VISION_TOKENS * unit,
            "longest_edge": max_pixels if max_pixels is not None else MAX_VISION_TOKENS * unit,
        },
        **proc_kwargs,
    )
    video_processor = video_cls(
        size={"shortest_edge": MIN_VISION_TOKENS * unit, "longest_edge": MAX_VISION_TOKENS * unit * temporal},
        **proc_kwargs,
    )
    processor = proc_cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )

    torch.manual_seed(seed)
    model = model_cls(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids[PAD_TOKEN],
        eos_token_id=ids[EOS_TOKEN],
        pad_token_id=ids[PAD_TOKEN],
    )
    from vlmgrpo.checkpoint import save_model  # file modes that follow the umask

    save_model(model, processor, out)
    return out


def build_tiny_text_lm(out_dir: str | Path, seed: int = 0, *, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Path:
    """Save a tiny random `Qwen2ForCausalLM` with the tiny tokenizer (and chat template) to `out_dir`."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab_size=vocab_size)
    ids = special_token_ids(tokenizer)
    config = Qwen2Config(
        vocab_size=_round_up(len(tokenizer)),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=ids[PAD_TOKEN],
        eos_token_id=ids[EOS_TOKEN],
        pad_token_id=ids[PAD_TOKEN],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids[PAD_TOKEN], eos_token_id=ids[EOS_TOKEN], pad_token_id=ids[PAD_TOKEN]
    )
    from vlmgrpo.checkpoint import save_model  # file modes that follow the umask

    save_model(model, tokenizer, out)
    return out


def build(out_dir: str | Path, arch: str = "qwen2_5_vl", seed: int = 0) -> Path:
    """Dispatch on `arch` (one of ARCHS)."""
    if arch == "qwen2":
        return build_tiny_text_lm(out_dir, seed=seed)
    return build_tiny_vlm(out_dir, arch=arch, seed=seed)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: build one tiny model into `--out` and print its path; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="vlmgrpo tiny-model",
        description="Build a tiny randomly initialised model (HF format) offline, for tests and smoke runs.",
    )
    parser.add_argument("--arch", choices=ARCHS, default="qwen2_5_vl")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a tiny save does not need "Writing model shards" bars
    path = build(args.out, arch=args.arch, seed=args.seed)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
