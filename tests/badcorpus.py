"""A dataset of the files real datasets hold, made by the tests: good images in odd formats and names,
broken files, odd caption encodings, an unreadable file and symlink loops.

`build_corpus(root)` returns a Corpus: which files every job must read, which it must report (each
once), and the caption bytes it must never lose.
"""
from __future__ import annotations

import functools
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

CAPTION = "shapes, red, square"


@dataclass
class Corpus:
    root: Path
    good: list[Path] = field(default_factory=list)    # readable images: every job uses them
    bad: list[Path] = field(default_factory=list)     # image files every job reports once
    captions: dict[Path, bytes] = field(default_factory=dict)  # caption file -> bytes at the start

    def caption_bytes_now(self) -> dict[Path, bytes]:
        return {path: path.read_bytes() for path in self.captions if path.exists()}


def _picture(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), np.full_like(x, 90)], -1)
    noise = rng.integers(0, 40, (h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


@functools.cache
def _bomb() -> bytes:
    """A 48 KB PNG of 20000x20000 pixels (400 Mpx: over the default limit of every job)."""
    data = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(data, format="PNG")
    return data.getvalue()


def build_corpus(root: Path) -> Corpus:
    corpus = Corpus(root)
    folder = root / "1_subject"
    folder.mkdir(parents=True)

    def good(name: str, image: Image.Image, caption: bytes | None = CAPTION.encode(), **save) -> Path:
        path = folder / name
        image.save(path, **save)
        corpus.good.append(path)
        if caption is not None:
            path.with_suffix(".txt").write_bytes(caption)
        return path

    def bad(name: str, data: bytes, caption: bytes | None = b"broken, but my caption") -> Path:
        path = folder / name
        path.write_bytes(data)
        corpus.bad.append(path)
        if caption is not None:
            path.with_suffix(".txt").write_bytes(caption)
        return path

    good("plain.png", _picture((96, 64), 0))
    good("name with spaces.jpg", _picture((64, 96), 1), quality=90)
    good("ünïcödé 写真.png", _picture((80, 80), 2))
    good("emoji 🐱.webp", _picture((64, 64), 3), quality=90)
    good("cmyk.jpg", _picture((72, 64), 4).convert("CMYK"), quality=90)
    sixteen = (np.array(_picture((64, 72), 5).convert("L"), dtype=np.uint16) * 257)
    good("sixteen-bit.png", Image.fromarray(sixteen))
    palette = _picture((64, 64), 6).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    good("palette-transparent.png", palette)
    rotated = _picture((96, 64), 7)
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    good("exif-rotated.jpg", rotated, exif=exif.tobytes(), quality=90)
    good("tiny-1x1.png", Image.new("RGB", (1, 1), (200, 10, 10)))
    frames = [_picture((64, 64), 8 + i) for i in range(3)]
    good("animated.gif", frames[0], save_all=True, append_images=frames[1:], duration=100, loop=0)
    good("animated.webp", frames[0], save_all=True, append_images=frames[1:], duration=100, loop=0)
    good("latin1 caption.png", _picture((64, 64), 11), caption="na\xefve caf\xe9, red".encode("cp1252"))
    good("bom caption.png", _picture((64, 64), 12), caption=("\ufeff" + CAPTION).encode("utf-8"))
    good("no caption.png", _picture((64, 64), 13), caption=None)
    png = io.BytesIO()
    _picture((64, 64), 14).save(png, format="PNG")
    good_png_named_jpg = folder / "png named.jpg"
    good_png_named_jpg.write_bytes(png.getvalue())
    good_png_named_jpg.with_suffix(".txt").write_bytes(CAPTION.encode())
    corpus.good.append(good_png_named_jpg)

    jpeg = io.BytesIO()
    _picture((128, 128), 15).save(jpeg, format="JPEG", quality=95)
    bad("truncated.jpg", jpeg.getvalue()[: len(jpeg.getvalue()) // 3])
    bad("zero-byte.png", b"")
    bad("text named.png", b"this is not an image\n", caption=None)
    bad("bomb.png", _bomb(), caption=None)

    locked = folder / "unreadable.png"
    _picture((64, 64), 16).save(locked)
    locked.chmod(0)
    if not os.access(locked, os.R_OK):  # root reads anything: then it is a good image
        corpus.bad.append(locked)
    else:
        corpus.good.append(locked)

    (folder / "loop-a.png").symlink_to(folder / "loop-b.png")
    (folder / "loop-b.png").symlink_to(folder / "loop-a.png")
    corpus.bad += [folder / "loop-a.png", folder / "loop-b.png"]
    (folder / "self").symlink_to(folder, target_is_directory=True)  # a folder loop for recursive walks

    corpus.captions = {p: p.read_bytes() for p in folder.glob("*.txt")}
    return corpus


def unlock(corpus: Corpus) -> None:
    """Let pytest delete the corpus."""
    for path in corpus.root.rglob("unreadable.png"):
        path.chmod(0o644)
