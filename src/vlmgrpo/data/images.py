"""Image loading that turns every kind of bad file into one clear line.

All images enter vlmgrpo through `load_image`: it accepts a path, raw bytes or a PIL image,
converts any mode (CMYK, 16-bit, palette, RGBA, animated: first frame) to RGB, refuses
decompression-bomb sizes and empty or truncated files with a `DataError` naming the source, and
optionally thumbnails to a longest side (aspect kept, LANCZOS, as seed A did).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vlmgrpo.errors import DataError

MAX_PIXELS = 64_000_000  # refuse bigger: a decompression bomb, or a mistake


def _to_rgb(img: Image.Image) -> Image.Image:
    if getattr(img, "is_animated", False):
        img.seek(0)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of clipping everything to white
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size and arr.max() > 0 else 1.0
        img = Image.fromarray((arr / hi * 255).astype("uint8"), mode="L")
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
            raise DataError(f"{label}: not an image file, or an unsupported format") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise DataError(f"{label}: corrupt or truncated image ({e})") from None
    if img.size[0] == 0 or img.size[1] == 0:
        raise DataError(f"{label}: image has zero width or height")
    img = _to_rgb(img)
    return thumbnail(img, max_side)
