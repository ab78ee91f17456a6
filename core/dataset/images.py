"""The one defensive image loader: every job opens images through this module.

`open_image` returns an RGB image with EXIF orientation applied; palette, alpha, CMYK,
1-bit, grayscale and 16-bit/float images are converted properly. `probe_image` reads only
the header (or decodes fully with `verify_pixels=True`). Anything wrong with a file is raised
as one exception type, `ImageError(path, reason)`, so a job can report it and move on.
PIL's globals (MAX_IMAGE_PIXELS, LOAD_TRUNCATED_IMAGES) are never changed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError, features

from core.filenames import IMAGE_SUFFIXES

DEFAULT_MAX_PIXELS = 178_956_970

IMAGE_EXTENSIONS = frozenset(s for s in IMAGE_SUFFIXES if s != ".avif" or features.check("avif"))

_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}


class ImageError(Exception):
    """A file that cannot be used as an image, with a reason a user can act on."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


@dataclass(frozen=True)
class ImageInfo:
    path: Path
    width: int   # after EXIF orientation
    height: int  # after EXIF orientation
    format: str  # PIL format name: PNG, JPEG, WEBP, ...
    mode: str    # PIL mode of the file, before conversion to RGB


def is_image_file(path: str | os.PathLike) -> bool:
    """True when the file name has one of IMAGE_EXTENSIONS (any case)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def probe_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS,
                verify_pixels: bool = False) -> ImageInfo:
    """Size, format and mode of an image; with `verify_pixels` it is fully decoded too.

    Header-only probing is fast but cannot see a truncated file; decoding can.
    """
    return _read(path, max_pixels, decode=verify_pixels)[0]


def open_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The fully decoded image as RGB, EXIF orientation applied, transparency on white."""
    return _read(path, max_pixels, decode=True)[1]


def open_image_and_alpha(path: str | os.PathLike,
                         max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, Image.Image | None]:
    """(the RGB image as `open_image` gives it, its alpha channel as an "L" image taken before the
    transparency went onto white; None when the image has no transparency), from one decode."""
    _, rgb, alpha = _read(path, max_pixels, decode=True, with_alpha=True)
    return rgb, alpha


def _read(path: str | os.PathLike, max_pixels: int, decode: bool,
          with_alpha: bool = False) -> tuple[ImageInfo, Image.Image | None] | tuple:
    path = Path(path)
    _check_file(path)
    try:
        with Image.open(path) as im:
            _check_pixels(path, im.size, max_pixels)
            fmt, mode = im.format or "unknown", im.mode
            if decode:
                im.load()
                oriented = _apply_orientation(im)
                alpha = alpha_channel(oriented) if with_alpha else None
                rgb = to_rgb(oriented)
                size = rgb.size
            else:
                rgb, alpha, size = None, None, _oriented_size(im)
    except ImageError:
        raise
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except UnidentifiedImageError:
        raise ImageError(path, "not an image, or a format that cannot be read") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(path, f"too many pixels, possible decompression bomb ({exc})") from None
    except MemoryError:
        raise ImageError(path, "not enough memory to decode it") from None
    except Exception as exc:  # image plugins raise many types on damaged data
        raise ImageError(path, _decode_failure(exc)) from None
    info = ImageInfo(path, size[0], size[1], fmt, mode)
    return (info, rgb, alpha) if with_alpha else (info, rgb)


def _check_file(path: Path) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except OSError as exc:  # a symlink loop, a name too long, an I/O error
        raise ImageError(path, f"cannot read it: {exc.strerror or exc}") from None
    if path.is_dir():
        raise ImageError(path, "is a folder, not an image file")
    if st.st_size == 0:
        raise ImageError(path, "empty file (0 bytes)")


def _check_pixels(path: Path, size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageError(path, f"too many pixels: {width}x{height} = {width * height:,} is over "
                               f"the limit of {max_pixels:,} (possible decompression bomb)")


def _decode_failure(exc: Exception) -> str:
    message = str(exc) or type(exc).__name__
    if "truncated" in message.lower():
        return f"truncated file: the image data ends early ({message})"
    return f"damaged image data, cannot decode it ({type(exc).__name__}: {message})"


def _orientation(im: Image.Image) -> int:
    """EXIF orientation (1 = as stored) read without decoding pixels; 1 when EXIF is broken."""
    if im.format == "PNG" and "exif" not in im.info:
        return 1  # PNG's getexif() would decode the whole image to look for a late eXIf chunk
    try:
        return int(im.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:
        return 1


def _oriented_size(im: Image.Image) -> tuple[int, int]:
    width, height = im.size
    if _orientation(im) in _SWAPPING_ORIENTATIONS:
        return height, width
    return width, height


def _apply_orientation(im: Image.Image) -> Image.Image:
    """Rotate/flip as EXIF says; an unreadable EXIF block leaves the pixels as stored."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:
        return im


def alpha_channel(im: Image.Image) -> Image.Image | None:
    """The alpha channel ("L", 255 = opaque) of an image with transparency (an alpha mode or a
    transparent palette/colour entry); None for an image without."""
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        if im.mode in _SIXTEEN_BIT_MODES:
            im = _to_8bit_gray(im)
        return im.convert("RGBA").getchannel("A")
    return None


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB: high bit depths scaled to 8 bits, transparency on white."""
    if im.mode in _SIXTEEN_BIT_MODES:
        im = _to_8bit_gray(im)
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _to_8bit_gray(im: Image.Image) -> Image.Image:
    """16-bit integers map 0..65535 to 0..255; floats in 0..1 map to 0..255; others stretch."""
    values = np.asarray(im)
    if im.mode != "F" and values.min() >= 0 and values.max() <= 65535:
        scaled = (values.astype(np.uint32) * 255 + 32767) // 65535
    else:
        values = np.nan_to_num(values.astype(np.float32))
        low, high = float(values.min()), float(values.max())
        if im.mode == "F" and low >= 0 and high <= 1:
            low, high = 0.0, 1.0
        scaled = np.rint((values - low) * (255.0 / max(high - low, 1e-6)))
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8))


def thumbnail(path: str | os.PathLike, size: int = 256, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A small RGB preview (longest side at most `size`) for galleries."""
    im = open_image(path, max_pixels)
    im.thumbnail((size, size))
    return im
