"""The defensive image loader on a corpus of good and bad files made in the test."""
from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from core.dataset import images
from core.dataset.images import IMAGE_EXTENSIONS, ImageError, is_image_file, open_image, probe_image


def _save(im: Image.Image, path, **kwargs):
    im.save(path, **kwargs)
    return path


def _gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)
    rgb = np.stack([np.tile(x, (height, 1))] * 3, axis=-1)
    rgb[..., 2] = 255 - rgb[..., 2]
    return Image.fromarray(rgb)


def _png_header_only(path, width: int, height: int):
    """A PNG whose header claims width x height (the pixel data is a stub)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("fmt,suffix,size", [
    ("PNG", ".png", (64, 48)), ("JPEG", ".jpg", (48, 64)), ("WEBP", ".webp", (33, 17)),
    ("BMP", ".bmp", (20, 20)), ("GIF", ".gif", (70, 10)), ("TIFF", ".tif", (12, 30)),
])
def test_common_formats_probe_and_open(tmp_path, fmt, suffix, size):
    path = _save(_gradient(*size), tmp_path / f"img{suffix}", format=fmt)
    info = probe_image(path)
    assert (info.width, info.height, info.format) == (*size, fmt)
    im = open_image(path)
    assert im.mode == "RGB" and im.size == size
    assert is_image_file(path) and is_image_file(str(path).upper())


def test_extensions_are_the_listed_ones():
    assert {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"} <= IMAGE_EXTENSIONS
    assert not is_image_file("notes.txt") and not is_image_file("x.jxl")


@pytest.mark.skipif(".avif" not in IMAGE_EXTENSIONS, reason="this Pillow build has no AVIF")
def test_avif_when_supported(tmp_path):
    path = _save(_gradient(40, 24), tmp_path / "a.avif")
    assert open_image(path).size == (40, 24)


def test_exif_orientation_6_swaps_size_and_rotates_pixels(tmp_path):
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    path = _save(stored, tmp_path / "rotated.jpg", exif=exif, quality=95)
    info = probe_image(path)
    assert (info.width, info.height) == (20, 40)
    im = open_image(path)
    assert im.size == (20, 40)
    top, bottom = im.getpixel((10, 5)), im.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60      # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60
    assert probe_image(path, verify_pixels=True).width == 20


def test_palette_with_transparency_goes_on_white(tmp_path):
    im = Image.new("P", (4, 1))
    im.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    im.putdata([0, 1, 1, 0])
    path = _save(im, tmp_path / "pal.png", transparency=0)
    rgb = open_image(path)
    assert rgb.getpixel((0, 0)) == (255, 255, 255)
    assert rgb.getpixel((1, 0)) == (10, 200, 30)
    gif = open_image(_save(im, tmp_path / "pal.gif", transparency=0))
    assert gif.getpixel((3, 0)) == (255, 255, 255) and gif.getpixel((2, 0)) == (10, 200, 30)


def test_alpha_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(255, 0, 0, 0), (0, 0, 255, 255), (0, 0, 0, 128)])
    rgb = open_image(_save(rgba, tmp_path / "rgba.png"))
    assert rgb.getpixel((0, 0)) == (255, 255, 255)
    assert rgb.getpixel((1, 0)) == (0, 0, 255)
    assert all(abs(v - 127) <= 1 for v in rgb.getpixel((2, 0)))
    la = Image.new("LA", (2, 1))
    la.putdata([(0, 0), (40, 255)])
    assert open_image(_save(la, tmp_path / "la.png")).getpixel((0, 0)) == (255, 255, 255)
    assert open_image(tmp_path / "la.png").getpixel((1, 0)) == (40, 40, 40)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    cmyk = Image.new("CMYK", (8, 8), (0, 0, 0, 0))
    cmyk.paste((255, 0, 0, 0), (4, 0, 8, 8))  # right half pure cyan
    path = _save(cmyk, tmp_path / "cmyk.jpg", quality=100)
    assert probe_image(path).mode == "CMYK"
    rgb = open_image(path)
    assert rgb.mode == "RGB"
    assert all(v > 245 for v in rgb.getpixel((1, 4)))
    red, green, blue = rgb.getpixel((6, 4))
    assert red < 10 and green > 245 and blue > 245


def test_16_bit_png_scales_to_8_bit(tmp_path):
    values = np.array([[65535, 32896, 0, 257]], dtype=np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "deep.png")
    assert probe_image(path).mode.startswith("I")
    rgb = open_image(path)
    assert [rgb.getpixel((x, 0)) for x in range(4)] == [(255,) * 3, (128,) * 3, (0,) * 3, (1,) * 3]


def test_32_bit_int_and_float_tiff_scale_to_8_bit(tmp_path):
    ints = Image.fromarray(np.array([[65535, 32896]], dtype=np.int32))
    assert ints.mode == "I"
    rgb = open_image(_save(ints, tmp_path / "int.tif"))
    assert rgb.getpixel((0, 0)) == (255,) * 3 and rgb.getpixel((1, 0)) == (128,) * 3
    floats = Image.fromarray(np.array([[1.0, 0.5, 0.0]], dtype=np.float32))
    rgb = open_image(_save(floats, tmp_path / "float.tif"))
    assert [rgb.getpixel((x, 0))[0] for x in range(3)] == [255, 128, 0]


def test_one_bit_and_grayscale_become_rgb(tmp_path):
    bits = Image.new("1", (2, 1))
    bits.putpixel((1, 0), 1)
    rgb = open_image(_save(bits, tmp_path / "bits.png"))
    assert rgb.getpixel((0, 0)) == (0, 0, 0) and rgb.getpixel((1, 0)) == (255, 255, 255)
    gray = open_image(_save(Image.new("L", (2, 2), 77), tmp_path / "gray.bmp"))
    assert gray.mode == "RGB" and gray.getpixel((1, 1)) == (77, 77, 77)


def _reason(path, **kwargs) -> str:
    with pytest.raises(ImageError) as caught:
        open_image(path, **kwargs) if kwargs.pop("decode", True) else probe_image(path, **kwargs)
    assert caught.value.path == path and str(path) in str(caught.value)
    return caught.value.reason


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    assert "empty" in _reason(tmp_path / "empty.png", decode=False)


def test_text_file_named_jpg(tmp_path):
    (tmp_path / "fake.jpg").write_text("this is not an image\n")
    assert "not an image" in _reason(tmp_path / "fake.jpg", decode=False)


def test_missing_file_and_folder(tmp_path):
    assert "not found" in _reason(tmp_path / "gone.png")
    (tmp_path / "dir.png").mkdir()
    assert "folder" in _reason(tmp_path / "dir.png")


@pytest.mark.parametrize("fmt,suffix", [("PNG", ".png"), ("JPEG", ".jpg")])
def test_truncated_files_fail_only_when_decoded(tmp_path, fmt, suffix):
    noise = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    path = _save(Image.fromarray(noise), tmp_path / f"cut{suffix}", format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    assert probe_image(path).width == 128  # the header alone looks fine
    assert "truncated" in _reason(path)
    with pytest.raises(ImageError):
        probe_image(path, verify_pixels=True)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    limit_before = Image.MAX_IMAGE_PIXELS
    path = _save(Image.new("RGB", (1200, 1000), (9, 9, 9)), tmp_path / "big.png")
    decoded = []
    monkeypatch.setattr(images, "to_rgb", lambda im: decoded.append(im) or im)
    reason = _reason(path, max_pixels=1_000_000)
    assert "1200x1000" in reason and "bomb" in reason and not decoded
    assert "bomb" in _reason(path, max_pixels=1_000_000, decode=False)
    assert probe_image(path, max_pixels=1_200_000).width == 1200
    assert Image.MAX_IMAGE_PIXELS == limit_before


def test_header_claiming_huge_size_is_refused(tmp_path):
    path = _png_header_only(tmp_path / "huge.png", 30_000, 30_000)
    assert "pixels" in _reason(path, decode=False)
    assert "pixels" in _reason(path, max_pixels=10**12, decode=False)  # PIL's own hard limit


@pytest.mark.skipif(os.name == "nt" or os.geteuid() == 0, reason="needs POSIX permissions as non-root")
def test_unreadable_file_real_permissions(tmp_path):
    path = _save(_gradient(8, 8), tmp_path / "locked.png")
    path.chmod(0)
    try:
        assert "permission" in _reason(path)
    finally:
        path.chmod(0o644)


def test_unreadable_file_reports_permission(tmp_path, monkeypatch):
    path = _save(_gradient(8, 8), tmp_path / "locked.png")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(images.Image, "open", refuse)
    assert _reason(path) == "permission denied"
