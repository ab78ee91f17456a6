"""The trainer's data on the demo kit: examples and captions, bucket batches with repeats, resuming
mid-epoch through accelerate's skip_first_batches (one and two processes), reproducible items,
cached latents and pixels."""
from __future__ import annotations

import os
from collections import Counter
from itertools import pairwise

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from accelerate import Accelerator
from accelerate.data_loader import prepare_data_loader, skip_first_batches
from accelerate.state import AcceleratorState

from core.config import TrainConfig
from core.dataset.latents import load_cached
from core.train.data import (
    BucketBatchSampler,
    TrainDataset,
    build_examples,
    cache_config,
    make_dataloader,
    prepare_latent_cache,
)

NUM_IMAGES = 10  # 7 images in 5_demo, 3 in 2_shapes


@pytest.fixture(scope="module")
def demo(demo_kit):
    return demo_kit("sd1", NUM_IMAGES, 3)


@pytest.fixture
def dataset(demo, copy_dataset):
    return copy_dataset(demo)


def make_cfg(demo, dataset, tmp_path, **overrides) -> TrainConfig:
    values = dict(train_data_dir=[str(dataset)], pretrained_model_name_or_path=str(demo / "model"),
                  output_dir=str(tmp_path / "out"), latents_dir=str(tmp_path / "cache"),
                  max_resolution="128,128", min_bucket_reso=64, max_bucket_reso=256,
                  bucket_reso_steps=32, cache_latents=False, train_batch_size=3, seed=7,
                  max_data_loader_n_workers=0)
    return TrainConfig(**{**values, **overrides})


def warnings(ctx) -> list[dict]:
    return ctx.run.read_events("warning")


def batch_rows(dataloader) -> list[tuple]:
    """Every batch as comparable values: keys, captions and the tensor's bytes."""
    rows = []
    for batch in dataloader:
        tensor = batch.get("latents", batch.get("pixels"))
        rows.append((tuple(batch["keys"]), tuple(batch["captions"]), tensor.numpy().tobytes()))
    return rows


def test_examples_captions_and_skipped_files(demo, dataset, tmp_path, ctx):
    (dataset / "5_demo" / "demo_000.txt").unlink()
    (dataset / "5_demo" / "broken.png").write_bytes(b"not an image")
    cfg = make_cfg(demo, dataset, tmp_path)
    examples = build_examples(cfg, ctx)
    assert len(examples) == NUM_IMAGES
    by_name = {e.image.name: e for e in examples}
    assert "broken.png" not in by_name
    assert by_name["demo_000.png"].caption == ""
    for e in examples:
        assert e.repeats == (5 if e.image.parent.name == "5_demo" else 2)
        assert e.cache is None and e.bucket == e.assignment.bucket
        if e.image.name != "demo_000.png":
            assert e.caption == e.image.with_suffix(".txt").read_text(encoding="utf-8") != ""
    paths = [w.get("path", "") for w in warnings(ctx)]
    assert sum(p.endswith("demo_000.png") for p in paths) == 1
    assert sum(p.endswith("broken.png") for p in paths) == 1


def test_sampler_batches_one_bucket_repeats_and_seeded_order(demo, dataset, tmp_path, ctx):
    examples = build_examples(make_cfg(demo, dataset, tmp_path), ctx)
    repeats = [e.repeats for e in examples]
    assert len({e.bucket for e in examples}) >= 3
    sampler = BucketBatchSampler(examples, repeats, batch_size=3, seed=7)
    epochs = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert all(1 <= len(b) <= 3 for b in batches)
        buckets = [{examples[k % len(examples)].bucket for k in b} for b in batches]
        assert all(len(b) == 1 for b in buckets)
        counts = Counter(k % len(examples) for b in batches for k in b)
        assert counts == dict(enumerate(repeats)) and sum(counts.values()) == sum(repeats)
        assert len({k for b in batches for k in b}) == sum(repeats)  # each repeat its own key
        same = BucketBatchSampler(examples, repeats, batch_size=3, seed=7)
        same.set_epoch(epoch)
        assert list(same) == batches
        order = [next(iter(b)) for b in buckets]
        changes = sum(a != b for a, b in pairwise(order))
        epochs.append((batches, changes))
    assert len({str(b) for b, _ in epochs}) == 4
    assert max(changes for _, changes in epochs) > len(set(order)) - 1  # buckets interleaved
    sampler.set_epoch(0)
    other_seed = BucketBatchSampler(examples, repeats, batch_size=3, seed=8)
    assert list(other_seed) != list(sampler)


def test_resume_mid_epoch_equals_uninterrupted(demo, dataset, tmp_path, ctx):
    cfg = make_cfg(demo, dataset, tmp_path, flip_aug=True, shuffle_caption=True, keep_tokens=1)
    examples = build_examples(cfg, ctx)
    dataloader = make_dataloader(examples, cfg)
    dataloader.batch_sampler.set_epoch(2)
    full = batch_rows(dataloader)
    for k in (1, 4):
        assert batch_rows(skip_first_batches(dataloader, k)) == full[k:]

    accelerator = Accelerator(cpu=True)
    try:
        fresh = make_dataloader(examples, cfg)
        sampler, prepared = fresh.batch_sampler, accelerator.prepare(fresh)
        assert len(prepared) == len(full)
        sampler.set_epoch(2)
        prepared.set_epoch(2)
        assert batch_rows(prepared) == full
        assert batch_rows(accelerator.skip_first_batches(prepared, 3)) == full[3:]
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)  # other tests make their own


def test_two_processes_share_out_every_batch(demo, dataset, tmp_path, ctx):
    cfg = make_cfg(demo, dataset, tmp_path, train_batch_size=2)
    examples = build_examples(cfg, ctx)
    sampler = BucketBatchSampler(examples, [e.repeats for e in examples], 2, cfg.seed)
    sampler.set_epoch(1)
    full = [tuple(b) for b in sampler]
    assert len(full) % 2 == 1  # the last round is padded: the case accelerate must handle
    shards, loaders = [], []
    for rank in range(2):
        loader = make_dataloader(examples, cfg)
        loader.batch_sampler.set_epoch(1)
        prepared = prepare_data_loader(loader, num_processes=2, process_index=rank)
        assert len(prepared) == (len(full) + 1) // 2
        shards.append([tuple(b["keys"]) for b in prepared])
        loaders.append(prepared)
    assert shards[0] == full[0::2]
    assert shards[1] == full[1::2] + [full[0]]  # accelerate repeats the first batch to even out
    for rank in range(2):  # resuming: each rank skips the batches it has already trained
        assert [tuple(b["keys"]) for b in skip_first_batches(loaders[rank], 2)] == shards[rank][2:]


def test_items_are_reproducible_per_seed_epoch_and_repeat(demo, dataset, tmp_path, ctx):
    cfg = make_cfg(demo, dataset, tmp_path, flip_aug=True, shuffle_caption=True, keep_tokens=1)
    examples = build_examples(cfg, ctx)
    sampler = BucketBatchSampler(examples, [e.repeats for e in examples], 3, cfg.seed)
    keys = [k for epoch in range(3) for b in sampler.batches(epoch) for k in b]
    first, again = TrainDataset(examples, cfg), TrainDataset(examples, cfg)
    for key in keys[::7]:
        a, b = first[key], again[key]
        assert a["caption"] == b["caption"] and torch.equal(a["pixels"], b["pixels"])
        assert a["index"] == key % len(examples)
        assert a["caption"].split(", ")[0] == examples[a["index"]].caption.split(", ")[0]
    captions = {(first[k]["index"], first[k]["caption"]) for k in keys[:40]}
    assert len(captions) > len({i for i, _ in captions})  # shuffles differ between samples
    flips = {bool(first.rng(k).random() < 0.5) for k in keys}
    assert flips == {True, False}


def test_cached_latents_equal_the_cache_files(demo, dataset, tmp_path, ctx):
    cfg = make_cfg(demo, dataset, tmp_path, cache_latents=True, flip_aug=True,
                   pretrained_model_name_or_path=str(demo / "model.safetensors"))
    assert cache_config(cfg).latents_dir == cfg.latents_dir
    with pytest.raises(RuntimeError, match="prepare_latent_cache"):
        build_examples(cfg, ctx)
    result = prepare_latent_cache(cfg, ctx)
    assert result["complete"] and result["encoded"] == NUM_IMAGES
    assert prepare_latent_cache(cfg, ctx)["skipped"] == NUM_IMAGES
    examples = build_examples(cfg, ctx)
    assert len(examples) == NUM_IMAGES and all(e.cache.is_file() for e in examples)
    dataset_ = TrainDataset(examples, cfg)
    used = set()
    for key in range(4 * len(examples)):
        item = dataset_[key]
        cached = load_cached(examples[item["index"]].cache)
        w, h = examples[item["index"]].bucket
        assert item["latents"].shape == (4, h // 8, w // 8) and "pixels" not in item
        used.add(next(name for name in ("latents", "latents_flipped")
                      if torch.equal(item["latents"], cached[name])))
    assert used == {"latents", "latents_flipped"}
    batch = next(iter(make_dataloader(examples, cfg)))
    assert batch["latents"].shape[0] == len(batch["captions"]) == len(batch["keys"])


def test_pixels_are_the_bucket_crop_in_range(demo, dataset, tmp_path, ctx):
    cfg = make_cfg(demo, dataset, tmp_path, flip_aug=False)
    examples = build_examples(cfg, ctx)
    data = TrainDataset(examples, cfg)
    for index, example in enumerate(examples):
        pixels = data[index]["pixels"]
        w, h = example.bucket
        assert pixels.shape == (3, h, w) and pixels.dtype == torch.float32
        assert pixels.min() >= -1 and pixels.max() <= 1 and pixels.std() > 0
    flipping = TrainDataset(examples, make_cfg(demo, dataset, tmp_path, flip_aug=True))
    seen = set()
    for key in range(0, 6 * len(examples), len(examples)):  # example 0 in six different samples
        plain, item = data[0]["pixels"], flipping[key]["pixels"]
        seen.add("plain" if torch.equal(item, plain) else
                 "flipped" if torch.equal(item, plain.flip(-1)) else "other")
    assert seen == {"plain", "flipped"}


def test_flip_p_decides_each_items_flip_with_flip_aug(demo, dataset, tmp_path, ctx):
    base = make_cfg(demo, dataset, tmp_path)
    examples = build_examples(base, ctx)
    plain = TrainDataset(examples, base)
    keys = [k for epoch in range(2) for b in BucketBatchSampler(
        examples, [e.repeats for e in examples], 3, base.seed).batches(epoch) for k in b][::5]

    def flipped(cfg_overrides) -> list[bool]:
        data = TrainDataset(examples, make_cfg(demo, dataset, tmp_path, **cfg_overrides))
        result = []
        for key in keys:
            item, reference = data[key]["pixels"], plain[key]["pixels"]
            assert torch.equal(item, reference) or torch.equal(item, reference.flip(-1))
            result.append(not torch.equal(item, reference))
        return result

    assert not any(flipped(dict(flip_aug=True, flip_p=0.0)))
    assert all(flipped(dict(flip_aug=True, flip_p=1.0)))
    assert not any(flipped(dict(flip_aug=False, flip_p=1.0)))  # flip_aug is the switch
    some = flipped(dict(flip_aug=True, flip_p=0.3))
    assert some == flipped(dict(flip_aug=True, flip_p=0.3))  # same seed and key, same flip
    cfg = make_cfg(demo, dataset, tmp_path, flip_aug=True, flip_p=0.3)
    assert some == [TrainDataset(examples, cfg).rng(k).random() < 0.3 for k in keys]
    other_seed = make_cfg(demo, dataset, tmp_path, flip_aug=True, flip_p=0.3, seed=8)
    assert [TrainDataset(examples, other_seed).rng(k).random() < 0.3 for k in keys] != some
    # default flip_p 0.5: the draw is unchanged from before flip_p existed
    assert TrainConfig.model_fields["flip_p"].default == 0.5


def test_caption_options_reach_the_items(demo, dataset, tmp_path, ctx):
    from core.models.text import process_caption

    options = dict(shuffle_caption=True, keep_tokens=1, caption_dropout_rate=0.3,
                   caption_tag_dropout_rate=0.2, caption_prefix="pre", caption_suffix="suf",
                   keep_tokens_separator="|||", flip_aug=True, flip_p=0.5)
    cfg = make_cfg(demo, dataset, tmp_path, **options)
    examples = build_examples(cfg, ctx)
    data, again = TrainDataset(examples, cfg), TrainDataset(examples, cfg)
    keys = [k for epoch in range(3) for b in BucketBatchSampler(
        examples, [e.repeats for e in examples], 3, cfg.seed).batches(epoch) for k in b]
    captions = []
    for key in keys[::3]:
        item = data[key]
        rng = data.rng(key)
        rng.random()  # the flip comes first
        assert item["caption"] == again[key]["caption"] == process_caption(
            examples[item["index"]].caption, True, 1, rng, caption_dropout_rate=0.3,
            caption_tag_dropout_rate=0.2, caption_prefix="pre", caption_suffix="suf",
            keep_tokens_separator="|||")
        assert item["caption"] == "" or item["caption"].startswith("pre ")
        captions.append(item["caption"])
    assert "" in captions and any(c for c in captions)
    dropped = TrainDataset(examples, make_cfg(demo, dataset, tmp_path, caption_dropout_rate=1.0,
                                               caption_prefix="pre"))
    assert all(dropped[k]["caption"] == "" for k in keys[:12])


@pytest.mark.parametrize("field", ["caption_dropout_rate", "caption_tag_dropout_rate", "flip_p"])
def test_rates_must_be_probabilities(demo, dataset, tmp_path, field):
    for value in (0.0, 1.0):
        assert getattr(make_cfg(demo, dataset, tmp_path, **{field: value}), field) == value
    for value in (-0.1, 1.5):
        with pytest.raises(ValueError, match=field):
            make_cfg(demo, dataset, tmp_path, **{field: value})
