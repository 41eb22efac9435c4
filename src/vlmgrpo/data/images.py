"""Image loading that turns every kind of bad file into one clear line.

All images enter vlmgrpo through `load_image`: it accepts a path, raw bytes or a PIL image,
converts any mode (CMYK, 16-bit, 32-bit and float greyscale, palette, RGBA, animated: first frame)
to RGB, refuses decompression-bomb sizes and empty, truncated or damaged files with a `DataError`
naming the source (and, for a file that is no image at all, what it looks like instead: an HTML
error page saved under an image name is a common one), and optionally thumbnails to a longest side
(aspect kept, LANCZOS, as seed A did). `tests/test_bad_inputs.py` holds the corpus of bad inputs.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vlmgrpo.errors import DataError

MAX_PIXELS = 64_000_000  # refuse bigger: a decompression bomb, or a mistake
# leading bytes of the formats PIL reads here: a file that starts like one but does not open is damaged
SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"BM": "BMP",
}


def _what_it_is(data: bytes) -> str:
    """'not an image' made specific: a damaged known format, or text (an error page, JSON)."""
    for sig, fmt in SIGNATURES.items():
        if data.startswith(sig):
            return f"corrupt or truncated {fmt} file (its header does not parse)"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "corrupt or truncated WEBP file (its header does not parse)"
    head = data[:64]
    if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        start = data[:1024].lstrip().lower()
        if start.startswith((b"<!doctype html", b"<html")):
            return "is an HTML page, not an image (an error page saved under an image name?)"
        if b"<svg" in start:
            return "is an SVG drawing, which is not supported: convert it to PNG"
        shown = head.decode("ascii").strip().splitlines()[0][:40] if head.strip() else ""
        return f"is text, not an image (starts with {shown!r})"
    return "not an image file, or an unsupported format"


def _to_rgb(img: Image.Image) -> Image.Image:
    if getattr(img, "is_animated", False):
        img.seek(0)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit integer or float greyscale: scale to 8 bits instead of clipping to white (or,
        # for floats in [0, 1], to black)
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size and arr.max() > 0 else 1.0
        img = Image.fromarray(np.clip(arr / hi * 255, 0, 255).astype("uint8"), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))  # transparent -> white, as matplotlib draws
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return img.convert("RGB")


def thumbnail(img: Image.Image, max_side: int) -> Image.Image:
    """Longest side <= max_side, aspect kept (PIL's thumbnail never enlarges)."""
    if max_side and max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return img


def load_image(src: str | Path | bytes | Image.Image, max_side: int = 0, name: str = "") -> Image.Image:
    """Open `src` as an RGB image (thumbnailed to `max_side` if > 0) or raise a one-line DataError."""
    label = name or (str(src) if isinstance(src, str | Path) else "<image bytes>")
    if isinstance(src, Image.Image):
        img = src
    else:
        if isinstance(src, str | Path):
            path = Path(src)
            if not path.exists():
                raise DataError(f"{label}: image file not found")
            if path.is_dir():
                raise DataError(f"{label}: is a folder, expected an image file")
            if path.stat().st_size == 0:
                raise DataError(f"{label}: image file is empty (0 bytes)")
            data = path.read_bytes()
        else:
            data = bytes(src)
            if not data:
                raise DataError(f"{label}: image data is empty (0 bytes)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data))
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise DataError(f"{label}: image is {w}x{h}, over the {MAX_PIXELS:,}-pixel limit")
                img.load()
        except DataError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise DataError(f"{label}: image is too large (decompression-bomb sized)") from None
        except UnidentifiedImageError:
            raise DataError(f"{label}: {_what_it_is(data)}") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise DataError(f"{label}: corrupt or truncated image ({e})") from None
    if img.size[0] == 0 or img.size[1] == 0:
        raise DataError(f"{label}: image has zero width or height")
    img = _to_rgb(img)
    return thumbnail(img, max_side)
