"""DreamBooth on the tiny demo model: class images interleaved with the training images as kohya does
(as many class samples per epoch, same buckets), prior_loss_weight on the class samples' loss,
instance_prompt and class_prompt for images without captions, the missing class images generated
before training, stop and resume (while generating and while training), preflight and the GUI's job."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from trainkit import assert_same_weights, events, prompt_encoder, train, train_values

from core.config import ClassImagesConfig, ConfigError, TrainConfig, field_meta, validate
from core.config.dreambooth import PriorPreservationSettings
from core.jobs.protocol import JobContext, JobStopped
from core.train import loop, step
from core.train.data import BucketBatchSampler, balanced_repeats, build_examples, make_dataloader
from core.train.preflight import check_training
from core.train.subsets import balance_class_images, source_examples, sources

CLASS_PROMPT = "a photo of a shape"
INSTANCE_PROMPT = "a photo of sks shape"
INSTANCE_SAMPLES = 24  # the kit's dataset: 4 images in 5_demo, 2 in 2_shapes
DREAMBOOTH_FIELDS = ("class_data_dir", "class_prompt", "num_class_images", "instance_prompt", "prior_loss_weight")


@pytest.fixture(scope="module")
def kit(demo_kit):
    return demo_kit("sd1", 6, 0)


@pytest.fixture
def dataset(kit, copy_dataset):
    return copy_dataset(kit)


def make_class_folder(folder: Path, sizes: list[tuple[int, int]], captioned: bool = True) -> Path:
    """Hand-made class images (`photo-N.png`), each with a caption file when `captioned`."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, size in enumerate(sizes):
        Image.new("RGB", size, (40 * i, 90, 200)).save(folder / f"photo-{i}.png")
        if captioned:
            (folder / f"photo-{i}.txt").write_text(f"class caption {i}", encoding="utf-8")
    return folder


def dreambooth_values(kit: Path, out: Path, class_dir: Path, **overrides) -> dict:
    """A small DreamBooth run: every image in one 64x64 bucket, so class and training samples share batches."""
    return train_values(kit, out, **{"class_data_dir": str(class_dir), "class_prompt": CLASS_PROMPT,
                                     "num_class_images": 3, "max_resolution": "64,64", **overrides})


def test_balanced_repeats_as_kohya():
    assert balanced_repeats([1, 1, 1], 7) == [3, 2, 2]  # first pass, then one more each in order
    assert balanced_repeats([1] * 5, 3) == [1, 1, 1, 0, 0]  # more class images than needed: the rest unused
    assert balanced_repeats([2, 3], 4) == [2, 3]  # a folder's own repeats are kept in the first pass
    assert balanced_repeats([2, 1], 6) == [4, 2]
    assert balanced_repeats([1, 1], 0) == [0, 0] and balanced_repeats([], 5) == []


def test_the_fields_are_declared_once_and_shown_as_dreambooth():
    for name in DREAMBOOTH_FIELDS:
        assert field_meta(TrainConfig, name)["group"] == "DreamBooth"
    assert set(PriorPreservationSettings.model_fields) == set(DREAMBOOTH_FIELDS[:3])
    assert issubclass(TrainConfig, PriorPreservationSettings) and issubclass(ClassImagesConfig, PriorPreservationSettings)
    with pytest.raises(ValueError, match="class_data_dir"):
        ClassImagesConfig(pretrained_model_name_or_path="m", class_prompt=CLASS_PROMPT)


def class_examples(cfg, ctx) -> list:
    """The class folder's examples as the trainer balances them against the training images."""
    parts = [(source, source_examples(source, ctx)) for source in sources(cfg)]
    training = [(source, examples) for source, examples in parts if not source.is_reg]
    balanced = balance_class_images([part for part in parts if part[0].is_reg], training, cfg, ctx)
    return [e for _, examples in balanced for e in examples]


def test_class_samples_match_the_training_samples_in_the_same_buckets(kit, dataset, tmp_path, ctx):
    class_dir = make_class_folder(tmp_path / "class", [(512, 512), (768, 512), (512, 512)])
    cfg = validate(TrainConfig, train_values(kit, tmp_path / "out", train_data_dir=[str(dataset)],
                                             class_data_dir=str(class_dir), class_prompt=CLASS_PROMPT,
                                             prior_loss_weight=0.25, cache_latents=False), "test")
    instance = build_examples(cfg, ctx)
    assert sum(e.repeats for e in instance) == INSTANCE_SAMPLES
    classes = class_examples(cfg, ctx)
    assert [e.repeats for e in classes] == [8, 8, 8]
    assert {e.loss_weight for e in classes} == {0.25} and {e.loss_weight for e in instance} == {1.0}
    assert {e.bucket for e in classes} <= {e.bucket for e in instance}
    examples, n = instance + classes, len(instance)

    sampler = BucketBatchSampler(examples, [e.repeats for e in examples], 2, cfg.seed)
    for epoch in (0, 1):
        batches = sampler.batches(epoch)
        keys = [key for batch in batches for key in batch]
        assert sum(key % len(examples) >= n for key in keys) == INSTANCE_SAMPLES == len(keys) // 2
        assert all(len({examples[key % len(examples)].bucket for key in batch}) == 1 for batch in batches)
        assert any(len({key % len(examples) >= n for key in batch}) == 2 for batch in batches)  # mixed batches

    for batch in make_dataloader(examples, cfg):
        expected = [0.25 if index >= n else 1.0 for index in batch["indices"]]
        assert batch["loss_weights"].tolist() == expected


def test_instance_prompt_and_class_prompt_caption_images_without_a_caption_file(kit, dataset, tmp_path, ctx):
    (dataset / "5_demo" / "demo_000.txt").unlink()
    class_dir = make_class_folder(tmp_path / "class", [(512, 512)] * 2, captioned=False)
    (class_dir / "photo-1.txt").write_text("its own caption", encoding="utf-8")
    cfg = validate(TrainConfig, train_values(kit, tmp_path / "out", train_data_dir=[str(dataset)],
                                             class_data_dir=str(class_dir), class_prompt=CLASS_PROMPT,
                                             instance_prompt=INSTANCE_PROMPT, cache_latents=False), "test")
    instance = {e.image.name: e.caption for e in build_examples(cfg, ctx)}
    assert instance["demo_000.png"] == INSTANCE_PROMPT
    assert instance["demo_003.png"] == (dataset / "5_demo" / "demo_003.txt").read_text(encoding="utf-8").strip()
    classes = {e.image.name: e.caption for e in class_examples(cfg, ctx)}
    assert classes == {"photo-0.png": CLASS_PROMPT, "photo-1.png": "its own caption"}
    assert not [e for e in events(ctx.run.path) if e["event"] == "warning"]

    build_examples(cfg.model_copy(update={"instance_prompt": ""}), ctx)  # without it: an empty caption, reported
    [warning] = [e for e in events(ctx.run.path) if e["event"] == "warning"]
    assert "no caption file" in warning["message"] and warning["path"].endswith("demo_000.png")


@pytest.fixture(scope="module")
def sd1_model(kit):
    from core.models.sd import load_sd_model

    return load_sd_model(str(kit / "model"))


@pytest.mark.parametrize("options", [{}, {"min_snr_gamma": 5.0}])
def test_the_step_loss_weights_each_sample(sd1_model, kit, options):
    cfg = validate(TrainConfig, train_values(kit, kit / "unused", **options), "test")

    def loss(weights: list[float] | None) -> float:
        batch = {"latents": torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)),
                 "captions": ["a red circle", CLASS_PROMPT]}
        if weights is not None:
            batch["loss_weights"] = torch.tensor(weights)
        torch.manual_seed(0)  # the same noise and timesteps for every call
        with torch.no_grad():
            return step.loss_of_batch(batch, sd1_model, sd1_model.unet, prompt_encoder(sd1_model, cfg), cfg,
                                      torch.float32, torch.device("cpu")).item()

    instance_only, class_only = loss([1.0, 0.0]), loss([0.0, 1.0])
    assert instance_only > 0 and class_only > 0
    assert loss([1.0, 1.0]) == pytest.approx(instance_only + class_only)
    assert loss([1.0, 0.25]) == pytest.approx(instance_only + 0.25 * class_only)
    assert loss(None) == loss([1.0, 1.0])  # batches without weights (and instance-only runs) are unchanged


def test_a_too_small_class_folder_is_filled_then_trained_with_the_class_samples_weighted(kit, tmp_path, monkeypatch):
    class_dir = make_class_folder(tmp_path / "class", [(64, 64)])
    seen = []

    def spy(batch, *args, **kwargs):
        seen.append((batch["indices"], batch["loss_weights"].tolist()))
        return step.loss_of_batch(batch, *args, **kwargs)

    monkeypatch.setattr(loop, "loss_of_batch", spy)
    values = dreambooth_values(kit, tmp_path / "out", class_dir, prior_loss_weight=0.25, max_train_epochs=1,
                               train_batch_size=4)
    result = train(values, tmp_path / "run")
    assert result["steps"] == 2 * INSTANCE_SAMPLES // 4
    assert sorted(p.name for p in class_dir.iterdir() if not p.name.endswith(".safetensors")) == [
        "class-00000.png", "class-00000.txt", "class-00001.png", "class-00001.txt", "photo-0.png", "photo-0.txt"]
    assert (class_dir / "class-00001.txt").read_text(encoding="utf-8") == CLASS_PROMPT
    assert (class_dir / "class-00001.png.latents.safetensors").is_file()  # cached like the training images
    generated = [Path(e["path"]).name for e in events(tmp_path / "run") if e["event"] == "image"]
    assert generated == ["class-00000.png", "class-00001.png"]

    samples = [(index, weight) for indices, weights in seen for index, weight in zip(indices, weights)]
    class_samples = [weight for index, weight in samples if index >= 6]  # 6 training images, then 3 class images
    assert len(class_samples) == len(samples) - len(class_samples) == INSTANCE_SAMPLES
    assert set(class_samples) == {0.25} and {weight for index, weight in samples if index < 6} == {1.0}
    log = (tmp_path / "run" / "log.txt").read_text(encoding="utf-8")
    assert f"prior preservation: 3 class images, {INSTANCE_SAMPLES} class samples per epoch" in log


class StopAfterFourClassImages(JobContext):
    """A user who presses Stop while the first batch of class images is generated."""

    def image(self, path):
        super().image(path)
        if Path(path).name == "class-00003.png":
            self.run.request_stop()


class StopAtTheFirstLoss(JobContext):
    """A user who presses Stop once training has started (after the class images and caches)."""

    def metric(self, name, step, value):
        super().metric(name, step, value)
        self.run.request_stop()


def test_stop_while_generating_and_while_training_then_resume_equals_an_uninterrupted_run(kit, tmp_path):
    class_dir = tmp_path / "class"
    make_class_folder(class_dir, [(64, 64)])
    reference = dreambooth_values(kit, tmp_path / "reference", class_dir, num_class_images=6, max_train_steps=4)
    train(reference, tmp_path / "run-reference")
    class_dir.rename(tmp_path / "class-reference")  # the same folder again, from the same hand-made image
    make_class_folder(class_dir, [(64, 64)])
    values = {**reference, "output_dir": str(tmp_path / "out")}

    with pytest.raises(JobStopped):  # the first batch of 4 class images, then nothing is trained
        train(values, tmp_path / "run-1", StopAfterFourClassImages)
    assert len(list(class_dir.glob("class-*.png"))) == 4 and not (tmp_path / "out" / "model.safetensors").exists()
    assert "stopped while generating class images" in (tmp_path / "run-1" / "log.txt").read_text(encoding="utf-8")

    stopped = train(values, tmp_path / "run-2", StopAtTheFirstLoss)  # generates the fifth, then trains a step
    assert stopped["stopped_at"] == 1
    result = train({**values, "resume": stopped["state"]}, tmp_path / "run-3")
    assert result["steps"] == 4

    def pngs(folder: Path) -> dict:
        return {p.name: p.read_bytes() for p in sorted(folder.glob("class-*.png"))}

    assert len(pngs(class_dir)) == 5 and pngs(class_dir) == pngs(tmp_path / "class-reference")
    assert_same_weights(tmp_path / "reference" / "model.safetensors", tmp_path / "out" / "model.safetensors")


def preflight_values(kit: Path, dataset: Path, tmp_path: Path, **overrides) -> dict:
    return {"pretrained_model_name_or_path": str(kit / "model"), "train_data_dir": [str(dataset)],
            "output_dir": str(tmp_path / "out"), "max_resolution": "128,128", "min_bucket_reso": 64,
            "max_bucket_reso": 256, "class_data_dir": str(tmp_path / "class"), "class_prompt": CLASS_PROMPT,
            **overrides}


def test_preflight_reports_the_class_folder(kit, dataset, tmp_path):
    values = preflight_values(kit, dataset, tmp_path, num_class_images=3)
    result = check_training(values)
    assert result.ok and (result.class_images, result.num_class_images) == (0, 3)
    assert "0 of 3 class images; the missing ones are generated before training" in result.report()
    assert not (tmp_path / "class").exists()  # a check creates nothing

    make_class_folder(tmp_path / "class" / "1_dog", [(64, 64)] * 3)  # kohya's layout: images in N_name folders
    result = check_training(values)
    assert result.ok and "3 of 3 class images" in result.report() and "are generated" not in result.report()

    result = check_training({**values, "num_class_images": 30})
    [unused] = [p.message for p in result.warnings if p.field == "num_class_images"]
    assert unused.startswith("6 of 30 class images will not be used") and result.ok

    result = check_training({**values, "class_prompt": ""})
    [problem] = result.errors
    assert problem.field == "class_prompt" and "needed with class_data_dir" in problem.message

    (tmp_path / "file").write_text("x")
    result = check_training({**values, "class_data_dir": str(tmp_path / "file")})
    assert [p.field for p in result.errors] == ["class_data_dir"] and "is a file" in result.errors[0].message

    assert check_training({**values, "class_data_dir": ""}).num_class_images == 0  # no prior preservation


def test_preflight_instance_prompt_captions_the_uncaptioned_images(kit, dataset, tmp_path):
    (dataset / "5_demo" / "demo_000.txt").unlink()
    values = preflight_values(kit, dataset, tmp_path, class_data_dir="")
    assert [p.field for p in check_training(values).warnings] == ["caption_extension"]
    assert not check_training({**values, "instance_prompt": INSTANCE_PROMPT}).warnings


def test_the_training_tab_runs_the_class_images_job_with_the_trainers_settings(kit, tmp_path):
    from tabs.training import class_images_values

    values = dreambooth_values(kit, tmp_path / "out", tmp_path / "class", num_class_images=7, seed=3,
                               max_resolution="100,128", min_bucket_reso=64, clip_skip=2)
    job = class_images_values(values)
    assert ClassImagesConfig(**job).model_dump() == job
    assert {key: job[key] for key in ("class_data_dir", "class_prompt", "num_class_images", "seed", "clip_skip",
                                      "pretrained_model_name_or_path", "resolution")} == {
        "class_data_dir": str(tmp_path / "class"), "class_prompt": CLASS_PROMPT, "num_class_images": 7, "seed": 3,
        "clip_skip": 2, "pretrained_model_name_or_path": str(kit / "model"), "resolution": "96,128"}
    with pytest.raises(ConfigError, match="set class_data_dir"):
        class_images_values({**values, "class_data_dir": ""})
    assert json.dumps(job)  # it goes to the run's config.json
