"""A corpus of bad inputs, each with the one line it must produce: images (corrupt, truncated,
zero-size, decompression bombs, text or HTML saved as an image, ...), JSON / JSONL / parquet data
files, and recipe files with wrong types. Also the images that are odd but valid (CMYK, 16-bit,
float, palette, animated) and must load as RGB, and the skip-and-count / stop behaviour of
`data.skip_bad_samples` in training and evaluation.

Every file is made here, from bytes, so the corpus needs no fixtures on disk."""

from __future__ import annotations

import io
import json
import re
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmgrpo.data.images import MAX_PIXELS, load_image
from vlmgrpo.errors import ConfigError, DataError

# --------------------------------------------------------------------------- byte builders


def _enc(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _png_header_only(w: int, h: int, idat: bytes | None = None) -> bytes:
    """A PNG whose header claims w x h (8-bit RGB) over a tiny or garbage pixel stream: opening it
    reads only the header, so a 'bomb' costs nothing."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16) if idat is None else idat
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _rgb() -> Image.Image:
    return Image.fromarray((np.arange(24 * 32 * 3) % 251).astype("uint8").reshape(24, 32, 3))


def _png() -> bytes:
    return _enc(_rgb(), "PNG")


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


PNG_DAMAGED = "corrupt or truncated PNG file (its header does not parse)"
DAMAGED = r"corrupt or truncated image \(.+\)"  # PIL's own words follow, and vary by version

# (file name, bytes, expected message after "<path>: "; a str is exact, a compiled pattern a regex)
IMAGE_FILES: list[tuple[str, Callable[[], bytes], str | re.Pattern]] = [
    ("empty.png", lambda: b"", "image file is empty (0 bytes)"),
    ("notes.png", lambda: b"hello, not an image\n", "is text, not an image (starts with 'hello, not an image')"),
    (
        "page.jpg",
        lambda: b"<!DOCTYPE html><html><body>403 Forbidden</body></html>",
        "is an HTML page, not an image (an error page saved under an image name?)",
    ),
    (
        "drawing.png",
        lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"></svg>',
        "is an SVG drawing, which is not supported: convert it to PNG",
    ),
    ("half.png", lambda: _half(_png()), re.compile(DAMAGED)),
    ("half.jpg", lambda: _half(_enc(_rgb(), "JPEG", quality=90)), re.compile(DAMAGED)),
    ("header_only.png", lambda: _png()[:33], PNG_DAMAGED),
    ("bad_crc.png", lambda: _flip(_png(), 40), PNG_DAMAGED),
    ("bad_pixels.png", lambda: _png_header_only(32, 24, idat=b"\x78\x9c" + b"\xff" * 40), re.compile(DAMAGED)),
    ("bomb.png", lambda: _png_header_only(20_000, 20_000), "image is too large (decompression-bomb sized)"),
    ("big.png", lambda: _png_header_only(10_000, 9_500), "image is too large (decompression-bomb sized)"),
    ("huge.png", lambda: _png_header_only(9_000, 8_000), f"image is 9000x8000, over the {MAX_PIXELS:,}-pixel limit"),
    ("zero_width.png", lambda: _png_header_only(0, 10), PNG_DAMAGED),
    ("half.gif", lambda: _enc(_rgb().convert("P"), "GIF")[:40], "corrupt or truncated GIF file (its header does not parse)"),
    ("half.webp", lambda: _enc(_rgb(), "WEBP")[:30], re.compile(DAMAGED)),
    ("half.tiff", lambda: _enc(_rgb(), "TIFF")[:100], "corrupt or truncated TIFF file (its header does not parse)"),
    ("half.bmp", lambda: _enc(_rgb(), "BMP")[:60], re.compile(DAMAGED)),
    ("gzipped.png", lambda: zlib.compress(_png()), "not an image file, or an unsupported format"),
]  # fmt: skip


def _check_line(err: BaseException, label: str, expected: str | re.Pattern) -> None:
    msg = str(err)
    assert "\n" not in msg, msg
    assert msg.startswith(f"{label}: "), msg
    rest = msg[len(label) + 2 :]
    if isinstance(expected, re.Pattern):
        assert expected.fullmatch(rest), msg
    else:
        assert rest == expected, msg


@pytest.mark.parametrize(("name", "make", "expected"), IMAGE_FILES, ids=[c[0] for c in IMAGE_FILES])
def test_bad_image_file_is_one_line_naming_it(tmp_path, name, make, expected):
    path = tmp_path / name
    path.write_bytes(make())
    with pytest.raises(DataError) as e:
        load_image(path)
    _check_line(e.value, str(path), expected)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError) as e:
        load_image(tmp_path / "missing.png")
    _check_line(e.value, str(tmp_path / "missing.png"), "image file not found")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(DataError) as e:
        load_image(tmp_path / "dir.png")
    _check_line(e.value, str(tmp_path / "dir.png"), "is a folder, expected an image file")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "image data is empty (0 bytes)"),
        (b"hello world", "is text, not an image (starts with 'hello world')"),
        (
            b'{"error": "quota exceeded"}',
            'is text, not an image (starts with \'{"error": "quota exceeded"}\')',
        ),
    ],
)
def test_bad_image_bytes_name_their_sample(data, expected):
    with pytest.raises(DataError) as e:
        load_image(data, name="sample 7 (base64)")
    _check_line(e.value, "sample 7 (base64)", expected)


# --------------------------------------------------------------------------- odd but valid images


def _animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "green", "blue")]
    return _enc(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50)


def _rgb48() -> bytes:
    rows = b"".join(b"\0" + struct.pack(">24H", *([65535, 0, 30000] * 8)) for _ in range(6))
    ihdr = struct.pack(">IIBBBBB", 8, 6, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(rows))
        + _chunk(b"IEND", b"")
    )


GREY_RAMP = np.arange(24 * 32).reshape(24, 32)

# (file name, bytes, (x, y), the RGB expected there)
VALID_ODD: list[tuple[str, Callable[[], bytes], tuple[int, int], tuple[int, int, int]]] = [
    ("cmyk.jpg", lambda: _enc(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95), (4, 4), (255, 0, 0)),
    ("grey16.png", lambda: _enc(Image.fromarray((GREY_RAMP * 60).astype("uint16")), "PNG"), (31, 23), (255, 255, 255)),
    ("rgb48.png", _rgb48, (0, 0), (255, 0, 117)),
    ("int32.tiff", lambda: _enc(Image.fromarray((GREY_RAMP * 1000).astype("int32")), "TIFF"), (31, 23), (255, 255, 255)),
    ("float.tiff", lambda: _enc(Image.fromarray((GREY_RAMP / GREY_RAMP.max()).astype("float32")), "TIFF"), (31, 23),
     (255, 255, 255)),
    ("palette.png", lambda: _enc(Image.new("RGB", (8, 8), (255, 0, 0)).convert("P"), "PNG"), (0, 0), (255, 0, 0)),
    ("palette_transparent.png", lambda: _enc(Image.new("P", (8, 8), 0), "PNG", transparency=0), (0, 0), (255, 255, 255)),
    ("rgba.png", lambda: _enc(Image.new("RGBA", (8, 8), (255, 0, 0, 0)), "PNG"), (0, 0), (255, 255, 255)),
    ("grey_alpha.png", lambda: _enc(Image.new("LA", (8, 8), (10, 255)), "PNG"), (0, 0), (10, 10, 10)),
    ("one_bit.png", lambda: _enc(Image.new("1", (8, 8), 1), "PNG"), (0, 0), (255, 255, 255)),
    ("animated.gif", lambda: _animated("GIF"), (0, 0), (255, 0, 0)),
    ("animated.webp", lambda: _animated("WEBP"), (0, 0), (255, 0, 0)),
]  # fmt: skip


@pytest.mark.parametrize(("name", "make", "xy", "rgb"), VALID_ODD, ids=[c[0] for c in VALID_ODD])
def test_odd_but_valid_images_load_as_rgb(tmp_path, name, make, xy, rgb):
    path = tmp_path / name
    path.write_bytes(make())
    img = load_image(path)
    assert img.mode == "RGB"
    got = img.getpixel(xy)
    assert max(abs(a - b) for a, b in zip(got, rgb)) <= 3, (name, got, rgb)  # lossy formats: near


def test_thumbnail_keeps_aspect(tmp_path):
    p = tmp_path / "wide.png"
    p.write_bytes(_enc(Image.new("RGB", (400, 100)), "PNG"))
    assert load_image(p, max_side=100).size == (100, 25)


# --------------------------------------------------------------------------- JSON, JSONL, parquet


def _write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _img2code(p: Path):
    from vlmgrpo.data import img2code

    return img2code.build({"path": str(p)}, "train", 0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"image_path": "a.png"}\n{"image_path": "a.png",\n', r"{p}:2: not valid JSON \(.+\)"),
        ("[1, 2, 3]\n", r"{p}:1: a row needs 'image_path' or 'image_base64'"),
        ('{"description": "no image"}\n', r"{p}:1: a row needs 'image_path' or 'image_base64'"),
        (
            b'{"image_path": "a.png", "description": "caf\xe9"}\n',
            r"{p}: not UTF-8 text \(byte 43\); save it as UTF-8",
        ),
        ("", r"{p}: the train split is empty"),
    ],
    ids=["bad-json-line", "row-not-an-object", "row-without-image", "latin-1", "empty"],
)
def test_malformed_jsonl_is_one_line_naming_file_and_line(tmp_path, text, expected):
    p = _write(tmp_path / "data.jsonl", text)
    with pytest.raises(DataError) as e:
        _img2code(p)
    assert "\n" not in str(e.value)
    assert re.fullmatch(expected.replace("{p}", re.escape(str(p))), str(e.value)), str(e.value)


def test_jsonl_sample_with_a_bad_image_fails_on_access_naming_it(tmp_path):
    p = _write(tmp_path / "data.jsonl", '{"image_base64": "aGVsbG8gd29ybGQ="}\n{"image_path": "gone.png"}\n')
    ds = _img2code(p)
    with pytest.raises(DataError, match=r"^sample data-1 \(base64\): is text, not an image"):
        ds[0]
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'gone.png'}: image file not found")):
        ds[1]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("{", r"cannot read \(.+\)"),
        (b'[{"figure_id": 1, "image_path": "caf\xe9.jpg"}]', r"cannot read \(.+\)"),
        ('{"figure_id": 1}', r"expected a list of entries with figure_id and image_path"),
        ('[{"figure_id": 1}]', r"expected a list of entries with figure_id and image_path"),
    ],
    ids=["not-json", "latin-1", "object-not-list", "entry-without-image"],
)
def test_malformed_charxiv_test_set(tmp_path, data, expected):
    from vlmgrpo.data import charxiv

    p = _write(tmp_path / "cx" / "test_data" / "test_set.json", data)
    with pytest.raises(DataError) as e:
        charxiv.build({"path": str(tmp_path / "cx")}, "test", 0)
    assert re.fullmatch(re.escape(f"{p}: ") + expected, str(e.value)), str(e.value)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("{not json", r"not valid JSON \(.+\)"),
        (b'{"problem_text": "caf\xe9"}', r"not valid JSON \(.+\)"),
        ('["a list"]', r"expected a JSON object, got list"),
    ],
    ids=["not-json", "latin-1", "list"],
)
def test_malformed_geometry3k_intergps_json(tmp_path, data, expected):
    from vlmgrpo.data import geometry3k

    p = _write(tmp_path / "geo" / "train" / "0" / "data.json", data)
    with pytest.raises(DataError) as e:
        geometry3k.build({"path": str(tmp_path / "geo")}, "train", 0)
    assert re.fullmatch(re.escape(f"{p}: ") + expected, str(e.value)), str(e.value)


def test_unreadable_parquet_is_one_line(tmp_path):
    from vlmgrpo.data import geometry3k

    p = _write(tmp_path / "pq" / "train-00000.parquet", b"PAR1 this is not parquet")
    with pytest.raises(DataError) as e:
        geometry3k.build({"path": str(tmp_path / "pq")}, "train", 0)
    msg = str(e.value)
    assert "\n" not in msg
    assert re.match(
        re.escape(f"{p}: ") + r"(not a readable parquet file|reading parquet needs pyarrow)", msg
    ), msg


def test_parquet_row_with_bad_image_bytes_fails_on_access(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    from vlmgrpo.data import geometry3k

    rows = [
        {"images": [{"bytes": b"garbage", "path": None}], "problem": "<image>Find x.", "answer": "3"},
        {"images": [{"bytes": _png(), "path": None}], "problem": "<image>Find y.", "answer": "4"},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train-00000.parquet")
    ds = geometry3k.build({"path": str(tmp_path)}, "train", 0)
    with pytest.raises(DataError, match=r"^geometry3k-train-0 image: is text, not an image"):
        ds[0]
    assert ds[1]["images"][0].mode == "RGB"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ('{"image": "x.png"}\n{oops\n', r"{meta}:2: not valid JSON \(.+\)"),
        (b'{"image": "caf\xe9.png"}\n', r"{meta}: not UTF-8 text \(byte 14\); save it as UTF-8"),
        ('{"area": 3}\n', r"{meta}:1: a row needs an 'image' field"),
    ],
    ids=["bad-json-line", "latin-1", "row-without-image"],
)
def test_malformed_area_set(tmp_path, data, expected):
    from vlmgrpo.data.area import AreaFolderSet

    meta = _write(tmp_path / "area" / "data.jsonl", data)
    with pytest.raises(DataError) as e:
        AreaFolderSet(tmp_path / "area")
    assert re.fullmatch(expected.replace("{meta}", re.escape(str(meta))), str(e.value)), str(e.value)


# --------------------------------------------------------------------------- recipes with wrong types


RECIPES = [
    ("train:\n  steps: many\n", "train.steps: expected an integer, got str 'many'"),
    ("optim:\n  lr: fast\n", "optim.lr: expected a number, got str 'fast'"),
    ("optim:\n  betas: 0.9\n", "optim.betas: expected a list, got float 0.9"),
    ("train:\n  tensorboard: 'yes'\n", "train.tensorboard: expected true or false, got str 'yes'"),
    ("rollout:\n  group_size: 2.5\n", "rollout.group_size: expected an integer, got float 2.5"),
    ("rewards:\n  name: cycle\n", "rewards: expected a list, got dict {'name': 'cycle'}"),
    ("data: [1, 2]\n", "data: expected a mapping, got list [1, 2]"),
    ("grpo:\n  loss: ppx\n", "grpo.loss: 'ppx' is not one of 'pg', 'is', 'ppo'"),
    ("optim:\n  lrr: 0.1\n", "unknown config key 'optim.lrr'; did you mean 'optim.lr'?"),
    ("- a\n- b\n", "a recipe must be a mapping of sections, got list"),
    ("train: [1, 2\n", re.compile(r"not valid YAML \(line \d+\): .+")),
    ("base: 5\n", "base: expected a recipe name or path, got int 5"),
    (b"prompt:\n  user: caf\xe9\n", re.compile(r"cannot read the recipe \(UnicodeDecodeError: .+\)")),
]


@pytest.mark.parametrize(("text", "expected"), RECIPES, ids=[f"recipe-{i}" for i in range(len(RECIPES))])
def test_recipe_with_wrong_types_names_file_and_key(tmp_path, text, expected):
    from vlmgrpo.config import load_config

    p = _write(tmp_path / "mine.yaml", text)
    with pytest.raises(ConfigError) as e:
        load_config(str(p))
    _check_line(e.value, str(p), expected)


def test_error_in_a_base_recipe_names_the_base(tmp_path):
    from vlmgrpo.config import load_config

    base = _write(tmp_path / "base.yaml", "train:\n  seed: abc\n")
    child = _write(tmp_path / "child.yaml", f"base: {base}\noptim:\n  lr: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(child))
    _check_line(e.value, str(base), "train.seed: expected an integer, got str 'abc'")
    loop = _write(tmp_path / "loop.yaml", f"base: {tmp_path / 'loop.yaml'}\n")
    with pytest.raises(ConfigError, match="loops back on itself"):
        load_config(str(loop))


def test_cli_prints_the_line_without_a_traceback(tmp_path):
    p = _write(tmp_path / "mine.yaml", "base: demo\ntrain:\n  steps: many\n")
    r = subprocess.run(
        [sys.executable, "-m", "vlmgrpo.cli", "train", "--recipe", str(p)], capture_output=True, text=True
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert (
        r.stderr.strip().splitlines()[-1] == f"error: {p}: train.steps: expected an integer, got str 'many'"
    )


# --------------------------------------------------------------------------- skip and count, or stop


def _corpus_folder(root: Path, good: int = 2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, make, _ in IMAGE_FILES:
        (root / f"bad-{name}").write_bytes(make())  # "bad-" sorts before "good-"
    for i in range(good):
        Image.new("RGB", (40, 30), (200, 30 * i, 0)).save(root / f"good-{i}.png")
    return root


def test_sampler_skips_and_counts_bad_samples_or_stops(tmp_path):
    from vlmgrpo.data import build_folder
    from vlmgrpo.sampling import PromptSampler

    ds = build_folder({"path": str(_corpus_folder(tmp_path / "imgs"))}, "train", 0)
    n_bad = len(IMAGE_FILES)
    assert len(ds) == n_bad + 2
    sampler = PromptSampler(ds, seed=0, skip_bad=True)
    drawn = [sampler.next()["id"] for _ in range(30)]
    assert set(drawn) <= {"good-0", "good-1"}
    assert sampler.bad > 30  # about n_bad / 2 bad draws for each good one
    strict = PromptSampler(ds, seed=0, skip_bad=False)
    with pytest.raises(DataError) as e:
        for _ in range(30):
            strict.next()
    assert str(e.value).startswith(str(tmp_path / "imgs" / "bad-")) and "\n" not in str(e.value)


def _folder_cfg(model_dir, out, folder, *extra):
    from vlmgrpo.config import load_config

    return load_config(
        "demo",
        [f"model.name_or_path={model_dir}", f"train.output_dir={out}", "train.steps=2", "train.eval_every=1",
         "train.save_every=0", "train.log_samples_every=0", "train.tensorboard=false", "warmup.steps=0",
         "data.dataset=folder", f"data.kwargs={{path: {folder}}}", "data.eval_kwargs={}",
         f"eval.num_items={len(IMAGE_FILES) + 2}",
         "eval.num_chains=1", "rollout.prompts_per_step=1", "rollout.group_size=2", "rollout.max_new_tokens=2",
         "rewards=[{name: length}]", "train.threads=1", *extra],
    )  # fmt: skip


def test_training_and_evaluation_skip_and_count_bad_images(tiny_vlm_dir, tmp_path):
    from vlmgrpo.trainer import Trainer

    folder = _corpus_folder(tmp_path / "imgs")
    Trainer(_folder_cfg(tiny_vlm_dir, tmp_path / "run", folder)).fit()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert rows[-1]["data/bad_samples"] >= 1
    assert all(r["eval/bad_samples"] == len(IMAGE_FILES) for r in rows)  # evaluated on the 2 good ones
    assert all(r["eval/reward/skipped"] == 0 for r in rows)


def test_bad_sample_stops_the_run_when_skipping_is_off(tiny_vlm_dir, tmp_path):
    from vlmgrpo.trainer import Trainer

    folder = _corpus_folder(tmp_path / "imgs")
    with pytest.raises(DataError) as e:
        Trainer(_folder_cfg(tiny_vlm_dir, tmp_path / "run", folder, "data.skip_bad_samples=false")).fit()
    assert str(e.value).startswith(str(folder / "bad-")) and "\n" not in str(e.value)


def test_output_piped_into_a_reader_that_leaves_early_is_no_traceback():
    """`vlmgrpo recipes NAME | head -1` ended in a BrokenPipeError traceback."""
    import subprocess
    import sys

    # `true` exits before the interpreter has started: every write meets a closed pipe
    cmd = f"{sys.executable} -m vlmgrpo.cli recipes geometry3k | true; echo ${{PIPESTATUS[0]}}"
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert r.stderr == "" and r.stdout.strip() == "141", (r.stdout, r.stderr)
