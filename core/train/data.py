"""What the trainer reads: examples, the latent cache, bucket batches and the items in them.

Every batch holds images of one bucket. Each epoch the sampler shuffles every bucket's samples
(an image of a kohya `N_name` folder appears N times) and then the order of all batches, with
generators seeded by seed + epoch, so every process of a multi-GPU run computes the same list
and accelerate deals it out (rank r gets batches r, r + n, ...).

Resuming mid-epoch must give exactly the batches an uninterrupted run would have seen, so no
item draws from a global random state: the sampler yields *sample keys* that encode (epoch,
repeat, example) as one integer, and the item's flip (probability `flip_p`, only with
`flip_aug`) and caption shuffle and dropouts come from a generator seeded by (seed, key) alone.
`TrainDataset[i]` for a plain example index i is epoch 0, repeat 0.

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
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from core.buckets import BucketAssignment, crop_to_bucket, plan_buckets
from core.captions import read_caption_detailed
from core.config import CacheConfig, TrainConfig
from core.dataset import caption_path
from core.images import open_image
from core.latents import cache_path_for, load_cached, pixels_of
from core.text import process_caption

Size = tuple[int, int]


@dataclass(frozen=True)
class Example:
    """One training image (repeats are applied by the sampler)."""
    image: Path
    bucket: Size            # (w, h)
    caption: str            # raw caption text ("" when there is no caption file)
    cache: Path | None      # its latent cache file, None when training from pixels
    repeats: int = 1
    assignment: BucketAssignment | None = None  # resize and crop; needed to train from pixels


def cache_config(cfg: TrainConfig) -> CacheConfig:
    """The cache job's settings, taken from the trainer's fields of the same names."""
    return CacheConfig(**{key: getattr(cfg, key) for key in CacheConfig.model_fields})


def prepare_latent_cache(cfg: TrainConfig, ctx) -> dict:
    """Build the latent cache when training from it (valid files are skipped); the cache job's
    result (its `complete` is False when stopped), or {} when caching is off."""
    if not cfg.cache_latents:
        return {}
    from core.latents import run as run_cache

    return run_cache(cache_config(cfg), ctx)


def build_examples(cfg: TrainConfig, ctx) -> list[Example]:
    """One Example per usable image of the dataset, in the bucket plan's order.

    Broken images are reported and skipped by the planner; a missing caption is trained with an
    empty one (and reported). With cache_latents, images without a cache file (the cache job
    reported them) are skipped too: call `prepare_latent_cache` first."""
    assignments, _ = plan_buckets(cfg, ctx)
    caches = cache_config(cfg) if cfg.cache_latents else None
    examples = []
    for a in assignments:
        text = read_caption_detailed(caption_path(a.path, cfg.caption_extension))
        if not text.encoding:
            ctx.warning(f"no caption file ({cfg.caption_extension}): training with an empty caption",
                        a.path)
        cache = cache_path_for(a.path, caches) if caches else None
        examples.append(Example(Path(a.path), tuple(a.bucket), text.text, cache, a.repeats, a))
    if caches:
        present = [e for e in examples if e.cache.is_file()]
        if examples and not present:
            raise RuntimeError("no latent cache files found: call prepare_latent_cache first")
        for e in examples:
            if not e.cache.is_file():
                ctx.warning("skipped: no latent cache file (the cache job could not encode it)",
                            e.image)
        examples = present
    return examples


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
    """Items by sample key: cached latents or pixels, the processed caption."""

    def __init__(self, examples: list[Example], cfg: TrainConfig):
        self.examples, self.cfg = list(examples), cfg

    def __len__(self) -> int:
        return len(self.examples)

    def rng(self, key: int) -> random.Random:
        """The item's own random generator: same seed and key, same draws, whatever ran before."""
        return random.Random(f"{self.cfg.seed}:{key}")

    def __getitem__(self, key: int) -> dict:
        index = key % len(self.examples)
        example, rng = self.examples[index], self.rng(key)
        cfg = self.cfg
        # Drawn first (even without flip_aug), so it does not depend on the caption's length.
        flip = rng.random() < cfg.flip_p
        item = {"index": index, "key": key, "caption": process_caption(
            example.caption, cfg.shuffle_caption, cfg.keep_tokens, rng,
            caption_dropout_rate=cfg.caption_dropout_rate,
            caption_tag_dropout_rate=cfg.caption_tag_dropout_rate,
            caption_prefix=cfg.caption_prefix, caption_suffix=cfg.caption_suffix,
            keep_tokens_separator=cfg.keep_tokens_separator)}
        if example.cache is not None:
            cached = load_cached(example.cache)
            use_flipped = self.cfg.flip_aug and flip and "latents_flipped" in cached
            item["latents"] = cached["latents_flipped" if use_flipped else "latents"]
        else:
            image = open_image(example.image, self.cfg.max_image_pixels)
            pixels = pixels_of(crop_to_bucket(image, example.assignment))
            item["pixels"] = pixels.flip(-1) if self.cfg.flip_aug and flip else pixels
        return item


def collate(items: list[dict]) -> dict:
    """A batch: stacked "latents" or "pixels", lists of "captions", "indices" and "keys"."""
    batch = {"captions": [item["caption"] for item in items],
             "indices": [item["index"] for item in items], "keys": [item["key"] for item in items]}
    for name in ("latents", "pixels"):
        if name in items[0]:
            batch[name] = torch.stack([item[name] for item in items])
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
