"""Read-only views of a dataset's captions for the cleaning tab: tag counts, tag search, files that
are not plain UTF-8, and export to the metadata JSON that kohya sd-scripts' fine-tuning reads.

A tag is one of core.captions.tags.split_tags. Nothing here changes a caption file.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Iterator

from core.captions.files import check_caption_path, read_caption_detailed
from core.captions.tags import split_tags
from core.dataset.discovery import DatasetImage, OnError, caption_path, find_images
from core.fsutil import atomic_write_json

Folders = Iterable[str | os.PathLike]


def caption_files(folders: Folders, recursive: bool, extension: str, on_error: OnError | None = None,
                  outside_links: bool = True) -> list[tuple[Path, Path]]:
    """(image, caption file) for every image that has a caption file with `extension`, sorted by path.

    `on_error(path, reason)` hears about folders that are not listed (see find_images) and caption
    paths that hold something other than a file (see check_caption_path)."""
    pairs = []
    for image in find_images(folders, recursive, on_error, outside_links):
        path = caption_path(image.path, extension)
        present, problem = check_caption_path(path)
        if problem and on_error:
            on_error(path, problem)
        if present:
            pairs.append((image.path, path))
    return sorted(pairs, key=lambda pair: pair[1].parts)


def tag_frequencies(captions: Iterable[str]) -> list[tuple[str, int]]:
    """(tag, number of captions containing it), most frequent first, then by tag.

    A tag repeated within one caption counts once; tags are compared exactly (case included)."""
    counts = Counter(tag for caption in captions for tag in set(split_tags(caption)))
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def top_tags(folders: Folders, recursive: bool, extension: str, n: int) -> list[tuple[str, int]]:
    """The `n` most frequent tags of the caption files (see tag_frequencies)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, not {n}")
    return tag_frequencies(text for _, text in _captions(folders, recursive, extension))[:n]


def find_with_tag(folders: Folders, recursive: bool, extension: str, tag: str,
                  regex: bool = False) -> list[Path]:
    """Caption files with a tag equal to `tag` (stripped, case-insensitive), or with `regex`,
    a tag the pattern matches in full (case-insensitive). ValueError for an empty tag or a bad pattern."""
    matches = _tag_matcher(tag, regex)
    return [path for path, text in _captions(folders, recursive, extension)
            if any(matches(t) for t in split_tags(text))]


def encoding_report(folders: Folders, recursive: bool, extension: str) -> list[tuple[Path, str]]:
    """(caption file, note) for each caption file that is not plain UTF-8 (a BOM, UTF-16, cp1252, ...)."""
    report = []
    for _, path in caption_files(folders, recursive, extension):
        read = read_caption_detailed(path)
        if read.encoding != "utf-8":
            report.append((path, read.note))
    return report


def export_kohya_metadata(folders: Folders, recursive: bool, out_path: str | os.PathLike,
                          caption_extension: str = ".caption", tags_extension: str = ".txt",
                          full_path: bool = False, overwrite: bool = False) -> dict[str, dict[str, str]]:
    """Write the metadata JSON of sd-scripts' fine-tuning method and return it.

    The result is what finetune/merge_captions_to_metadata.py then merge_dd_tags_to_metadata.py make
    (without --in_json): `{image_key: {"caption": text, "tags": text}}`, texts stripped, images in path
    order. An image gets "caption" from its `caption_extension` file and "tags" from its `tags_extension`
    file, only the key whose file exists, and is left out when it has neither. When both extensions are
    the same the file's text goes to "tags" alone: sd-scripts trains on caption + ", " + tags, so
    writing both would double every tag.

    image_key is the image's absolute path with `full_path`, else its file name without extension, as in
    sd-scripts. sd-scripts looks such a name up in the subset's image folder only, so without `full_path`
    an image in a subfolder is refused (sd-scripts: "recursive requires full_path"), as are two images
    with the same name. Files are read in any encoding core.captions.files reads; the JSON is UTF-8, written
    atomically. An existing `out_path` is replaced only with `overwrite`.
    """
    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise ValueError(f"{out_path} exists; choose another file or allow overwriting it")
    images = find_images(folders, recursive)
    metadata: dict[str, dict[str, str]] = {}
    owners: dict[str, Path] = {}
    for image in images:
        entry = _metadata_entry(image.path, caption_extension, tags_extension)
        if not entry:
            continue
        key = _image_key(image, full_path)
        if key in owners:
            raise ValueError(f"{owners[key]} and {image.path} would both be {key!r} in the metadata; "
                             f"rename one or use full_path")
        owners[key] = image.path
        metadata[key] = entry
    if not metadata:
        raise ValueError(f"no image has a {caption_extension} or {tags_extension} file; nothing to export")
    atomic_write_json(out_path, metadata)
    return metadata


def _captions(folders: Folders, recursive: bool, extension: str) -> Iterator[tuple[Path, str]]:
    for _, path in caption_files(folders, recursive, extension):
        yield path, read_caption_detailed(path).text


def _tag_matcher(tag: str, regex: bool) -> Callable[[str], bool]:
    wanted = tag.strip()
    if not wanted:
        raise ValueError("no tag given to search for")
    if not regex:
        folded = wanted.casefold()
        return lambda candidate: candidate.casefold() == folded
    try:
        pattern = re.compile(wanted, re.IGNORECASE)
    except re.error as error:
        raise ValueError(f"invalid regular expression {wanted!r}: {error}") from None
    return lambda candidate: pattern.fullmatch(candidate) is not None


def _metadata_entry(image: Path, caption_extension: str, tags_extension: str) -> dict[str, str]:
    keys = {"tags": tags_extension} if caption_extension == tags_extension else {
        "caption": caption_extension, "tags": tags_extension}
    entry = {}
    for key, extension in keys.items():
        read = read_caption_detailed(caption_path(image, extension))
        if read.encoding:  # "" when there is no file
            entry[key] = read.text.strip()
    return entry


def _image_key(image: DatasetImage, full_path: bool) -> str:
    if full_path:
        return str(image.path)
    if image.folder != image.root:
        raise ValueError(f"{image.path} is in a subfolder of {image.root}; sd-scripts finds images by name only "
                         f"directly in the image folder: use full_path (or give that subfolder as the folder)")
    return image.path.stem
