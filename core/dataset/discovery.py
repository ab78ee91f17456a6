"""Dataset discovery shared by every job: image files, kohya repeat folders, caption sidecars.

A dataset is one or more folders of images with sidecar captions (`img.png` + `img.txt`).
A kohya-style folder `N_name` gives its images N repeats; the nearest such folder between an
image and the dataset folder (the dataset folder itself included) counts. Nothing is renamed
or moved. Hidden files and folders and the studio's own backup folder are skipped.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from core.captions.files import backups_root
from core.dataset.images import is_image_file

REPEAT_FOLDER = re.compile(r"^(\d+)_(.+)$")
OUTSIDE_LINK = "a link to a folder outside the dataset folder: not followed by a job that writes captions"

OnError = Callable[[Path, str], None]


@dataclass(frozen=True)
class DatasetImage:
    path: Path          # absolute path of the image file
    root: Path          # the dataset folder it was found under
    concept_dir: Path   # the `N_name` folder its repeats come from, else its own folder
    repeats: int        # 0 when the `N_name` folder is invalid (see `problem`)
    problem: str | None = None  # why concept_dir is not a valid repeat folder

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def concept_name(self) -> str:
        parsed = parse_repeat_folder(self.concept_dir.name)
        return parsed[1] if parsed else self.concept_dir.name

    def caption_path(self, extension: str) -> Path:
        return caption_path(self.path, extension)


def caption_path(image_path: str | os.PathLike, extension: str) -> Path:
    """The caption sidecar of an image: same folder and stem, given extension (img.png -> img.txt)."""
    image_path = Path(image_path)
    return image_path.with_name(image_path.stem + extension)


def parse_repeat_folder(name: str) -> tuple[int, str] | None:
    """(repeats, name) for a kohya folder name like `10_alice`; None for any other name."""
    match = REPEAT_FOLDER.match(name)
    return (int(match.group(1)), match.group(2)) if match else None


def check_folders(folders: Iterable[str | os.PathLike]) -> list[Path]:
    """Absolute paths of the dataset folders; ValueError naming a missing folder or a file."""
    roots = []
    for folder in folders:
        root = Path(os.path.abspath(os.path.expanduser(str(folder))))
        if not root.exists():
            raise ValueError(f"dataset folder not found: {root}")
        if not root.is_dir():
            raise ValueError(f"not a folder (a dataset is a folder of images): {root}")
        roots.append(root)
    if not roots:
        raise ValueError("no dataset folder given")
    return roots


def find_images(folders: Iterable[str | os.PathLike], recursive: bool = True,
                on_error: OnError | None = None, outside_links: bool = True) -> list[DatasetImage]:
    """Every image under the folders, sorted; an image reachable from two folders counts once.

    Links to folders are followed; with `outside_links` False only those that stay inside the
    dataset folder (jobs that write captions never write outside it).
    `on_error(path, reason)` hears about subfolders that cannot be listed or are not followed.
    """
    images, seen = [], set()
    for root in check_folders(folders):
        for path in sorted(_image_files(root, recursive, on_error, outside_links), key=lambda p: p.parts):
            key = os.path.normcase(os.path.realpath(path))
            if key not in seen:
                seen.add(key)
                images.append(_dataset_image(path, root))
    return images


def _dataset_image(path: Path, root: Path) -> DatasetImage:
    folder = path.parent
    while True:
        parsed = parse_repeat_folder(folder.name)
        if parsed:
            repeats = parsed[0]
            problem = None if repeats > 0 else (
                "0 repeats: kohya skips this folder, so its images would not be trained")
            return DatasetImage(path, root, folder, repeats, problem)
        if folder == root or folder.parent == folder:
            return DatasetImage(path, root, path.parent, 1)
        folder = folder.parent


def _image_files(root: Path, recursive: bool, on_error: OnError | None, outside_links: bool) -> list[Path]:
    skip = {_real(backups_root())}
    inside = _real(root)
    visited: set[str] = set()
    found = []

    def report(error: OSError) -> None:
        if on_error:
            on_error(Path(error.filename or root), f"cannot list this folder: {error.strerror or error}")

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=report):
        real = _real(dirpath)
        if real in visited or real in skip:
            dirnames[:] = []
            continue
        if not outside_links and not _within(real, inside):
            dirnames[:] = []
            if on_error:
                on_error(Path(dirpath), OUTSIDE_LINK)
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        found.extend(Path(dirpath, name) for name in filenames
                     if not name.startswith(".") and is_image_file(name))
    return found


def _within(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([folder, path]) == folder
    except ValueError:  # another drive
        return False


def _real(path: str | os.PathLike) -> str:
    return os.path.normcase(os.path.realpath(path))
