"""What the trainer reads: examples, the latent cache, bucket batches and the items in them.

Every batch holds images of one bucket. Each epoch the sampler shuffles every bucket's samples
(an image of a kohya `N_name` folder appears N times) and then the order of all batches, with
generators seeded by seed + epoch, so every process of a multi-GPU run computes the same list
and accelerate deals it out (rank r gets batches r, r + n, ...).

DreamBooth prior preservation (kohya's DreamBoothDataset): the class folder's images join the
examples with their repeats raised until an epoch holds as many class samples as training samples
(`balanced_repeats`); they share the buckets and the shuffle, and their items carry the loss weight
prior_loss_weight (training images: 1).

Resuming mid-epoch must give exactly the batches an uninterrupted run would have seen, so no
item draws from a global random state: the sampler yields *sample keys* that encode (epoch,
repeat, example) as one integer, and the item's flip (probability `flip_p`, only with
`flip_aug`) and caption shuffle and dropouts come from a generator seeded by (seed, key) alone.
`TrainDataset[i]` for a plain example index i is epoch 0, repeat 0.

Masked loss (core.dataset.masks): each example knows its mask source (`Example.mask`, found by the
settings' MaskFinder, so settings of its own folder can give another); with masked_loss every item has a
"mask" (the cache's, or resized, cropped and flipped with the pixels; all ones for an image without a
source, such as a class image) and a batch has "masks".

Pitfalls with accelerate (1.15), which wraps a custom batch sampler in `BatchSamplerShard`:
- The sampler has no `batch_size` attribute on purpose: with one, `BatchSamplerShard` drops
  every round of batches that ends in a partial one (ours are shuffled into the middle).
  Without it, batches are dynamic; the last round is padded by repeating the first batches.
- `DataLoaderShard.set_epoch` does not reach a sampler wrapped by `BatchSamplerShard` (nor by
  `skip_first_batches`' `SkipBatchSampler`): call `sampler.set_epoch(epoch)` on this object
  (kept from before `prepare`) at the start of each epoch, before `skip_first_batches`.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from core.captions.files import read_caption_detailed
from core.config import CacheConfig, ClassImagesConfig, TrainConfig
from core.dataset.buckets import BucketAssignment, plan_buckets, training_image
from core.dataset.discovery import caption_path
from core.dataset.images import ImageError
from core.dataset.latents import cache_path_for, load_cached, pixels_of
from core.dataset.latents import run as run_cache
from core.dataset.masks import MaskSource, mask_finder, training_sample
from core.models.text import process_caption
from core.train.class_images import class_images_in
from core.train.class_images import run as run_class_images
from core.train.start_checks import class_image_problems, refuse_or_warn

Size = tuple[int, int]


@dataclass(frozen=True)
class Example:
    """One training image (repeats are applied by the sampler)."""
    image: Path
    bucket: Size            # (w, h)
    caption: str            # raw caption text (instance_prompt or class_prompt when there is no caption file)
    cache: Path | None      # its latent cache file, None when training from pixels
    repeats: int = 1
    assignment: BucketAssignment | None = None  # resize and crop; needed to train from pixels
    loss_weight: float = 1.0  # prior_loss_weight for class images
    mask: MaskSource | None = None  # masked_loss: where its mask is (None: the whole image is trained)
    options: TrainConfig | None = None  # its subset's settings (captions, flip), when not the run's (core.train.subsets)


def cache_config(cfg: TrainConfig) -> CacheConfig:
    """The cache job's settings, taken from the trainer's fields of the same names."""
    return CacheConfig(**{key: getattr(cfg, key) for key in CacheConfig.model_fields})


def prepare_latent_cache(cfg: TrainConfig, ctx) -> dict:
    """Build the latent cache when training from it (valid files are skipped); the cache job's
    result (its `complete` is False when stopped), or {} when caching is off."""
    if not cfg.cache_latents:
        return {}
    return run_cache(cache_config(cfg), ctx)


def class_images_config(cfg: TrainConfig) -> ClassImagesConfig:
    """The class_images job's settings: the trainer's fields of the same names, defaults for the others,
    images of the training resolution."""
    shared = {key: getattr(cfg, key) for key in ClassImagesConfig.model_fields if key in TrainConfig.model_fields}
    width, height = cfg.resolution
    return ClassImagesConfig(**shared, resolution=f"{width - width % 8},{height - height % 8}")


def prepare_class_images(cfg: TrainConfig, ctx) -> bool:
    """Generate the images the class folder lacks (the class_images job: resumable, stops between
    batches); False when it stopped before the folder was full."""
    if not cfg.prior_preservation:
        return True
    return run_class_images(class_images_config(cfg), ctx)["complete"]


def class_image_count(cfg: TrainConfig) -> int:
    """Images in the class folder now (0 when it does not exist yet)."""
    return len(class_images_in(Path(cfg.class_data_dir).expanduser()))


def class_data_config(cfg: TrainConfig) -> TrainConfig:
    """The trainer's settings with the class folder (subfolders included) as the dataset."""
    return cfg.model_copy(update={"train_data_dir": [cfg.class_data_dir], "recursive": True,
                                  "conditioning_data_dir": ""})  # class images have no masks in the mask folder


def build_examples(cfg: TrainConfig, ctx, default_caption: str | None = None,
                   loss_weight: float = 1.0) -> list[Example]:
    """One Example per usable image of the dataset, in the bucket plan's order.

    Broken images are reported and skipped by the planner; an image without a caption file is
    trained with `default_caption` (instance_prompt when not given; reported when empty), and so is
    one with something else at its caption path (reported once, see core.captions.files). With
    cache_latents, images without a cache file (the cache job reported them) are skipped too: call
    `prepare_latent_cache` first."""
    default_caption = cfg.instance_prompt if default_caption is None else default_caption
    assignments, _ = plan_buckets(cfg, ctx)
    caches = cache_config(cfg) if cfg.cache_latents else None
    masks = mask_finder(cfg)
    examples = []
    for a in assignments:
        try:
            mask = masks.find(a.path)
        except ImageError as err:
            ctx.skipped(err.path, err.reason)
            continue
        caption = caption_path(a.path, cfg.caption_extension)
        text = read_caption_detailed(caption)
        if text.problem:
            ctx.skipped(caption, text.problem)
        elif not text.encoding and not default_caption:
            ctx.warning(f"no caption file ({cfg.caption_extension}): training with an empty caption",
                        a.path)
        cache = cache_path_for(a.path, caches) if caches else None
        examples.append(Example(Path(a.path), tuple(a.bucket), text.text if text.encoding else default_caption,
                                cache, a.repeats, a, loss_weight, mask))
    if caches:
        present = [e for e in examples if e.cache.is_file()]
        if examples and not present:
            raise RuntimeError("no latent cache files found: call prepare_latent_cache first")
        for e in examples:
            if not e.cache.is_file():
                ctx.skipped(e.image, "no latent cache file (the cache job could not encode it)")
        examples = present
    if masks.active:
        ctx.log(f"masked loss: {len(examples)} images with masks from {masks.describe()}")
    return examples


def balance_class_examples(examples: list[Example], instance_samples: int, ctx,
                           prior_loss_weight: float) -> list[Example]:
    """The class images with the repeats that give `instance_samples` class samples per epoch
    (`balanced_repeats`, 0 for an image left out), reported in the log and a warning for those left out."""
    repeats = balanced_repeats([e.repeats for e in examples], instance_samples)
    unused = repeats.count(0)
    refuse_or_warn(class_image_problems(unused, len(examples)), ctx.warning)
    ctx.log(f"prior preservation: {len(examples) - unused} class images, {sum(repeats)} class samples per epoch "
            f"with {instance_samples} training samples, prior_loss_weight {prior_loss_weight}")
    return [replace(e, repeats=r) for e, r in zip(examples, repeats)]


def balanced_repeats(repeats: list[int], target: int) -> list[int]:
    """Repeats of the class images as kohya's DreamBoothDataset sets them: a first pass takes each image
    with its own repeats until `target` samples are reached (the rest get 0), then passes over all
    images add one repeat to one image after another until there are `target`."""
    counts, total = [0] * len(repeats), 0
    for i, count in enumerate(repeats):
        if total >= target:
            break
        counts[i], total = count, total + count
    extra = target - total if repeats else 0
    for i in range(extra):
        counts[i % len(repeats)] += 1
    return counts


def sample_key(index: int, repeat: int, epoch: int, num_examples: int, max_repeats: int) -> int:
    """The integer that names one sample of an epoch (decoded by `key % num_examples`)."""
    return index + num_examples * (repeat + max_repeats * epoch)


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of sample keys, one bucket per batch; see the module docstring."""

    def __init__(self, examples: list[Example], repeats: list[int], batch_size: int, seed: int):
        if len(repeats) != len(examples):
            raise ValueError("one repeat count per example")
        self.repeats = list(repeats)
        self.batch = batch_size  # not `batch_size`: see the module docstring
        self.seed, self.epoch = seed, 0
        self.max_repeats = max(self.repeats, default=1)
        self.buckets: dict[Size, list[int]] = {}
        for i, example in enumerate(examples):
            if self.repeats[i] > 0:
                self.buckets.setdefault(tuple(example.bucket), []).append(i)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """The epoch's batches (the current epoch by default)."""
        epoch = self.epoch if epoch is None else epoch
        generator = torch.Generator().manual_seed(self.seed + epoch)
        n = len(self.repeats)
        batches = []
        for bucket in sorted(self.buckets):
            keys = [sample_key(i, r, epoch, n, self.max_repeats)
                    for i in self.buckets[bucket] for r in range(self.repeats[i])]
            keys = [keys[j] for j in torch.randperm(len(keys), generator=generator).tolist()]
            batches += [keys[j:j + self.batch] for j in range(0, len(keys), self.batch)]
        return [batches[j] for j in torch.randperm(len(batches), generator=generator).tolist()]

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        return sum(-(-sum(self.repeats[i] for i in indices) // self.batch)
                   for indices in self.buckets.values())


class TrainDataset(Dataset):
    """Items by sample key: cached latents or pixels, the processed caption.

    Without a latent cache an image is decoded when its sample comes up; one that fails then (a
    truncated file: bucket planning reads only headers) is replaced by the next readable image of its
    bucket, and the item's "skipped" lists it for the loop to report once."""

    def __init__(self, examples: list[Example], cfg: TrainConfig):
        self.examples, self.cfg = list(examples), cfg
        self.by_bucket: dict[tuple, list[int]] = {}
        self.slot: list[int] = []  # each example's place in its bucket's list
        for i, example in enumerate(self.examples):
            mates = self.by_bucket.setdefault(tuple(example.bucket), [])
            self.slot.append(len(mates))
            mates.append(i)
        self.unreadable: set[int] = set()

    def __len__(self) -> int:
        return len(self.examples)

    def rng(self, key: int) -> random.Random:
        """The item's own random generator: same seed and key, same draws, whatever ran before."""
        return random.Random(f"{self.cfg.seed}:{key}")

    def __getitem__(self, key: int) -> dict:
        index = key % len(self.examples)
        mates, start = self.by_bucket[tuple(self.examples[index].bucket)], self.slot[index]
        skipped = []
        for candidate in (mates[(start + k) % len(mates)] for k in range(len(mates))):
            if candidate in self.unreadable:
                continue
            try:
                return {**self._item(key, candidate), "skipped": skipped}
            except ImageError as err:
                self.unreadable.add(candidate)
                skipped.append((str(err.path), err.reason))
        raise ValueError(f"no readable image left in bucket {self.examples[index].bucket}: "
                         + "; ".join(f"{path}: {reason}" for path, reason in skipped))

    def _item(self, key: int, index: int) -> dict:
        example, rng = self.examples[index], self.rng(key)
        cfg = example.options or self.cfg
        # Drawn first (even without flip_aug), so it does not depend on the caption's length.
        flip = rng.random() < cfg.flip_p
        item = {"index": index, "key": key, "loss_weight": example.loss_weight, "caption": process_caption(
            example.caption, cfg.shuffle_caption, cfg.keep_tokens, rng,
            caption_dropout_rate=cfg.caption_dropout_rate,
            caption_tag_dropout_rate=cfg.caption_tag_dropout_rate,
            caption_prefix=cfg.caption_prefix, caption_suffix=cfg.caption_suffix,
            keep_tokens_separator=cfg.keep_tokens_separator)}
        mask = None
        if example.cache is not None:
            cached = load_cached(example.cache)
            flipped = cfg.flip_aug and flip and "latents_flipped" in cached
            item["latents"] = cached["latents_flipped" if flipped else "latents"]
            if example.mask is not None:
                if "mask" not in cached:
                    raise ImageError(example.image, f"its latent cache {example.cache} has no mask: build the "
                                                    "cache again with masked_loss on")
                mask = cached["mask"]
        else:
            flipped = cfg.flip_aug and flip
            image, mask = training_sample(example.assignment, example.mask, self.cfg.max_image_pixels)
            item["pixels"] = pixels_of(image).flip(-1) if flipped else pixels_of(image)
        if self.cfg.masked_loss:  # the run's setting: a batch mixes subsets, and every item needs a mask
            shape = (item["latents"] if "latents" in item else item["pixels"]).shape[-2:]
            mask = torch.ones(1, *shape) if mask is None else mask
            item["mask"] = mask.flip(-1) if flipped else mask
        item["time_ids"] = size_conditioning(example.assignment, flipped)
        return item


def readable_examples(examples: list[Example], ctx, max_image_pixels: int) -> list[Example]:
    """The examples whose image decodes and crops as planned (each other one reported once); for the few
    validation images that are encoded without a cache."""
    readable = []
    for example in examples:
        try:
            training_image(example.assignment, max_image_pixels)
            readable.append(example)
        except ImageError as err:
            ctx.skipped(err.path, err.reason)
    return readable


def size_conditioning(assignment: BucketAssignment, flipped: bool) -> torch.Tensor:
    """SDXL's size and crop conditioning of one sample: (original height, width, crop top, left,
    target height, width), the crop in the resized image as our centre crop really made it; a
    flipped sample's crop is counted from the right edge (as kohya does)."""
    (width, height), (resized_width, _) = assignment.original, assignment.resized
    left, top, right, _ = assignment.crop
    if flipped:
        left = resized_width - right
    target_width, target_height = assignment.bucket
    return torch.tensor([height, width, top, left, target_height, target_width], dtype=torch.float32)


def collate(items: list[dict]) -> dict:
    """A batch: stacked "latents" or "pixels", SDXL "time_ids" and (masked_loss) "masks", lists of
    "captions", "indices" and "keys", the samples' "loss_weights", and the (path, reason) of images
    "skipped" for them."""
    batch = {"captions": [item["caption"] for item in items],
             "skipped": [skipped for item in items for skipped in item.get("skipped", ())],
             "indices": [item["index"] for item in items], "keys": [item["key"] for item in items],
             "loss_weights": torch.tensor([item["loss_weight"] for item in items], dtype=torch.float32)}
    for name, key in (("latents", "latents"), ("pixels", "pixels"), ("time_ids", "time_ids"), ("masks", "mask")):
        if key in items[0]:
            batch[name] = torch.stack([item[key] for item in items])
    return batch


def make_dataloader(examples: list[Example], cfg: TrainConfig, num_workers: int = 0) -> DataLoader:
    """The epoch's batches; its `batch_sampler` is the BucketBatchSampler (seeded by cfg.seed)."""
    sampler = BucketBatchSampler(examples, [e.repeats for e in examples], cfg.train_batch_size,
                                 cfg.seed)
    # Its own generator: starting an iterator must not draw from the global RNG, or a resumed
    # run (which starts one mid-epoch) would see different noise than an uninterrupted one.
    return DataLoader(TrainDataset(examples, cfg), batch_sampler=sampler, collate_fn=collate,
                      num_workers=num_workers, persistent_workers=num_workers > 0,
                      generator=torch.Generator().manual_seed(cfg.seed))
