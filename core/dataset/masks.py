"""Loss masks (sd-scripts' `masked_loss`): which part of each image the loss is taken on.

A mask comes from a mask folder (`conditioning_data_dir`: one image per training image with the same
file stem and the same size; its red channel is read, as sd-scripts does) or from the image's own alpha
channel (`alpha_mask`: read before the transparency goes onto white). White (opaque) = train, black
(transparent) = ignore, grey = weight: value / 255.

The mask is resized and cropped exactly as its image (`core.dataset.buckets.crop_to_bucket` with the
image's plan, the same resampling), flipped with it, and reduced to the latents' size by area
interpolation (`mask_to_size`, sd-scripts' `interpolate(..., mode="area")`). The latent cache stores it
reduced; training from pixels reduces it in the loss. Both give the same values: area reduction of whole
8x8 blocks (bucket sides are multiples of 8) commutes with flipping and is exact when repeated.

Bad masks raise `ImageError` for the *image* with a reason that names the mask file, so every job
reports it and skips the image as it does any unreadable one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from core.dataset.buckets import BucketAssignment, crop_to_bucket, training_image
from core.dataset.images import DEFAULT_MAX_PIXELS, ImageError, is_image_file, open_image, open_image_and_alpha

if TYPE_CHECKING:  # torch is imported where a tensor is made: the GUI's Dataset tab imports this module at start
    import torch

OVERLAY_TINT = (255, 40, 40)  # the colour laid over the ignored part in previews


@dataclass(frozen=True)
class MaskSource:
    """Where one image's mask is: a mask file, or (`alpha`) the image's own alpha channel."""
    path: Path
    alpha: bool = False

    def as_report(self) -> str:
        """How the scan report names it: "alpha", or the mask file's path."""
        return "alpha" if self.alpha else str(self.path)

    @classmethod
    def from_report(cls, value: str, image: str | os.PathLike) -> MaskSource:
        """The source of `image` that `as_report` named `value`."""
        return cls(Path(image), alpha=True) if value == "alpha" else cls(Path(value))


class MaskFinder:
    """Finds the mask of each image: in `folder` by file stem, else the alpha channel with `alpha`, else
    none (the whole image is trained). A finder with neither finds nothing."""

    def __init__(self, folder: str = "", alpha: bool = False):
        folder = folder.strip()
        self.folder = Path(os.path.abspath(os.path.expanduser(folder))) if folder else None
        self.alpha = alpha
        self._files: dict[str, Path] | None = None

    @property
    def active(self) -> bool:
        return self.folder is not None or self.alpha

    def describe(self) -> str:
        return f"the mask folder {self.folder}" if self.folder is not None else "their alpha channels"

    def files(self) -> dict[str, Path]:
        """The mask folder's images by file stem (the first in name order when two share a stem)."""
        if self._files is None:
            self._files = {}
            if self.folder is not None and self.folder.is_dir():
                for path in sorted(self.folder.iterdir()):
                    if is_image_file(path) and path.is_file():
                        self._files.setdefault(path.stem, path)
        return self._files

    def find(self, image: str | os.PathLike) -> MaskSource | None:
        """The image's mask source; ImageError (for the image) when the mask folder has no mask for it."""
        image = Path(image)
        if self.folder is not None:
            if not self.folder.is_dir():
                raise ImageError(image, f"the mask folder (conditioning_data_dir) {self.folder} does not exist: "
                                        "choose the folder that holds the masks")
            path = self.files().get(image.stem)
            if path is None:
                raise ImageError(image, f"no mask for it in the mask folder (conditioning_data_dir) {self.folder}: "
                                        f"add a mask image named {image.stem} with an image extension (white = "
                                        "train, black = ignore), or remove the image")
            return MaskSource(path)
        return MaskSource(image, alpha=True) if self.alpha else None


def mask_finder(cfg) -> MaskFinder:
    """The finder of a job's settings (MaskSettings): none unless masked_loss is on."""
    if not cfg.masked_loss:
        return MaskFinder()
    return MaskFinder(cfg.conditioning_data_dir, cfg.alpha_mask)


def mask_image(image: str | os.PathLike, source: MaskSource, size: tuple[int, int],
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The mask of `image` at the image's size (w, h) as an "L" image (255 = train). ImageError for the
    image, naming the mask file, when the mask file is unreadable or of another size."""
    if source.alpha:
        rgb, alpha = open_image_and_alpha(image, max_pixels)
        return alpha if alpha is not None else Image.new("L", rgb.size, 255)
    try:
        mask = open_image(source.path, max_pixels).getchannel("R")
    except ImageError as err:
        raise ImageError(image, f"its mask {source.path}: {err.reason}") from None
    if mask.size != tuple(size):
        raise ImageError(image, f"its mask {source.path} is {mask.size[0]}x{mask.size[1]} but the image is "
                                f"{size[0]}x{size[1]}: a mask must have its image's size")
    return mask


def mask_tensor(mask: Image.Image) -> torch.Tensor:
    """An "L" mask as a [1, H, W] float32 tensor in [0, 1]."""
    import torch

    return torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0).unsqueeze(0)


def training_sample(assignment: BucketAssignment, source: MaskSource | None,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, torch.Tensor | None]:
    """(the training image as `training_image` gives it, its mask resized and cropped the same way as a
    [1, H, W] tensor, or None without a mask source). ImageError for anything wrong."""
    if source is None:
        return training_image(assignment, max_pixels), None
    if source.alpha:
        rgb, alpha = open_image_and_alpha(assignment.path, max_pixels)
        image = crop_to_bucket(rgb, assignment, max_pixels)
        mask = alpha if alpha is not None else Image.new("L", rgb.size, 255)
    else:
        image = training_image(assignment, max_pixels)
        mask = mask_image(assignment.path, source, assignment.original, max_pixels)
    return image, mask_tensor(crop_to_bucket(mask, assignment, max_pixels))


def mask_to_size(masks: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Masks [B, 1, H, W] reduced (or enlarged) to `size` (h, w) by area interpolation, as sd-scripts'
    apply_masked_loss does; unchanged when already of that size."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    import torch

    return torch.nn.functional.interpolate(masks, size=tuple(size), mode="area")


def mask_problem(image: str | os.PathLike, source: MaskSource | None, size: tuple[int, int],
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """Why the image's mask is unusable or useless (None when fine): unreadable, of another size, or empty
    (all black / fully transparent: nothing of the image would be trained)."""
    if source is None:
        return None
    try:
        mask = mask_image(image, source, size, max_pixels)
    except ImageError as err:
        return err.reason
    if mask.getextrema()[1] == 0:
        where = "fully transparent" if source.alpha else f"all black ({source.path})"
        return f"its mask is empty, {where}: nothing of the image would be trained"
    return None


def mask_overlay(image: str | os.PathLike, source: MaskSource, size: int = 512,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A preview of the image (longest side at most `size`) with the ignored part tinted: the tint's
    strength is 1 - mask, so grey parts are half tinted. ImageError as `mask_image`."""
    rgb = open_image(image, max_pixels)
    mask = mask_image(image, source, rgb.size, max_pixels)
    rgb.thumbnail((size, size))
    mask = mask.resize(rgb.size, Image.BOX)
    tint = Image.new("RGB", rgb.size, OVERLAY_TINT)
    strength = mask.point(lambda v: int((255 - v) * 0.6))
    return Image.composite(tint, rgb, strength)
