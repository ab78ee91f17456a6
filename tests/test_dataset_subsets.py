"""Dataset subsets (sd-scripts' dataset_config): the epoch is composed as sd-scripts composes it (repeats, class
images balanced per dataset), each subset's captions and flips follow its own settings, the TOML reads and writes
back unchanged, a bad TOML names its file and key, the table round-trips through the form and the command line, and
a tiny run with two subsets trains and logs its composition."""
from __future__ import annotations

import json
import tomllib
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image
from trainkit import train, train_values

from core.config import ConfigError, TrainConfig, validate
from core.config.dataset_toml import dataset_config_text, read_dataset_config, write_dataset_config
from core.config.subsets import DatasetSubset
from core.dataset.buckets import training_image
from core.dataset.latents import pixels_of
from core.jobs.flags import build_parser, resolve_config
from core.jobs.registry import JOBS
from core.train import subsets
from core.train.data import TrainDataset
from core.train.preflight import check_training


class OneProcess:
    """What prepare_data asks of the accelerator in a one-process run."""
    is_main_process = True

    def wait_for_everyone(self) -> None:
        pass


def make_folder(folder: Path, count: int, size: tuple[int, int] = (64, 64), captions: dict | None = None,
                extension: str = ".txt") -> Path:
    """`count` images (left-to-right gradients, so a flip shows), each with a caption unless `captions` is {}."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = Image.new("RGB", size)
        image.putdata([(x * 255 // size[0], 40 * i % 255, 90) for _ in range(size[1]) for x in range(size[0])])
        image.save(folder / f"{folder.name}-{i}.png")
        caption = (captions or {}).get(i, f"{folder.name}, tag one, tag two, tag three") if captions != {} else None
        if caption is not None:
            (folder / f"{folder.name}-{i}{extension}").write_text(caption, encoding="utf-8")
    return folder


def run_values(tmp_path: Path, **overrides) -> dict:
    return {"pretrained_model_name_or_path": "unused", "output_dir": str(tmp_path / "out"),
            "max_resolution": "64,64", "min_bucket_reso": 64, "max_bucket_reso": 256, "cache_latents": False,
            "seed": 3, **overrides}


def sd_scripts_epoch(toml_path: Path) -> Counter:
    """Image file name -> samples per epoch as sd-scripts' DreamBoothDataset registers them (written from its
    loop: training images num_repeats times; the class images of each dataset in subset order, first with their
    own num_repeats, then one more each in turn, until there are as many as training samples)."""
    config = tomllib.loads(toml_path.read_text(encoding="utf-8"))
    general, counts = config.get("general", {}), Counter()
    for dataset in config["datasets"]:
        num_train, reg_infos = 0, []
        for subset in dataset["subsets"]:
            repeats = subset.get("num_repeats", dataset.get("num_repeats", general.get("num_repeats", 1)))
            folder = Path(subset["image_dir"])
            images = sorted(p.name for p in folder.iterdir() if p.suffix == ".png")
            if subset.get("is_reg", False):
                reg_infos += [[name, repeats] for name in images]
            else:
                num_train += repeats * len(images)
                counts.update({name: repeats for name in images})
        n, first_loop = 0, True
        while reg_infos and n < num_train:
            for info in reg_infos:
                if first_loop:
                    counts[info[0]] += info[1]
                    n += info[1]
                else:
                    counts[info[0]] += 1
                    n += 1
                if n >= num_train:
                    break
            first_loop = False
    return counts


@pytest.fixture
def two_datasets(tmp_path) -> Path:
    """An sd-scripts TOML: a 64px dataset of two training and two class subsets, a 128px one of one each."""
    for name, count in (("alice", 3), ("bob", 2), ("reg1", 2), ("reg2", 4), ("carol", 2), ("reg3", 3)):
        make_folder(tmp_path / name, count, (64, 64) if name != "carol" else (128, 128))
    text = """
[general]
shuffle_caption = true
keep_tokens = 1

[[datasets]]
resolution = 64

  [[datasets.subsets]]
  image_dir = 'alice'
  num_repeats = 3

  [[datasets.subsets]]
  image_dir = 'bob'
  num_repeats = 2
  keep_tokens = 2

  [[datasets.subsets]]
  image_dir = 'reg1'
  is_reg = true
  class_tokens = 'a person'

  [[datasets.subsets]]
  image_dir = 'reg2'
  is_reg = true
  num_repeats = 2

[[datasets]]
resolution = [128, 128]
max_bucket_reso = 256

  [[datasets.subsets]]
  image_dir = 'carol'

  [[datasets.subsets]]
  image_dir = 'reg3'
  is_reg = true
"""
    path = tmp_path / "dataset.toml"
    path.write_text(text, encoding="utf-8")
    resolved = text.replace("image_dir = '", f"image_dir = '{tmp_path.as_posix()}/")
    (tmp_path / "absolute.toml").write_text(resolved, encoding="utf-8")
    return path


def test_the_epoch_is_composed_as_sd_scripts_composes_it(two_datasets, tmp_path, ctx):
    cfg = validate(TrainConfig, run_values(tmp_path, dataset_config=str(two_datasets), prior_loss_weight=0.5), "test")
    examples, validation = subsets.prepare_data(cfg, ctx, OneProcess())
    ours = Counter()
    for e in examples:
        ours[e.image.name] += e.repeats
    expected = sd_scripts_epoch(tmp_path / "absolute.toml")
    assert ours == +expected and not validation
    # By hand: 13 training samples in the 64px dataset, class images [2, 2] and [3, 2, 2, 2]; the 128px dataset
    # has 2, so its third class image is left out (as sd-scripts leaves it out).
    assert [ours[f"reg1-{i}.png"] for i in range(2)] == [2, 2] and [ours[f"reg2-{i}.png"] for i in range(4)] == [3, 2, 2, 2]
    assert "reg3-2.png" not in ours and ours["reg3-0.png"] == ours["reg3-1.png"] == 1
    weights = {e.image.name.split("-")[0]: e.loss_weight for e in examples}
    assert weights == {"alice": 1.0, "bob": 1.0, "carol": 1.0, "reg1": 0.5, "reg2": 0.5, "reg3": 0.5}
    assert {e.bucket for e in examples if e.image.name.startswith("carol")} == {(128, 128)}
    log = (ctx.run.path / "log.txt").read_text(encoding="utf-8")
    assert "epoch: 30 samples from 6 subset(s)" in log
    assert f"{tmp_path / 'alice'}: 3 images x repeats 3 = 9 samples (30.0% of an epoch)" in log
    assert f"{tmp_path / 'reg2'}: 4 class images x repeats balanced = 9 samples (30.0% of an epoch)" in log
    assert "1 of 3 class images will not be used" in log


def test_the_validation_split_holds_out_part_of_each_training_subset(two_datasets, tmp_path, ctx):
    cfg = validate(TrainConfig, run_values(tmp_path, dataset_config=str(two_datasets), validation_split=0.5), "test")
    examples, validation = subsets.prepare_data(cfg, ctx, OneProcess())
    held = Counter(e.image.name.split("-")[0] for e in validation)
    assert held == {"alice": 2, "bob": 1, "carol": 1}  # round(half) of each, never class images
    assert not {e.image for e in validation} & {e.image for e in examples}
    samples = sum(e.repeats for e in examples if e.image.name.startswith(("reg1", "reg2")))
    # Balanced against the 1 x 3 + 1 x 2 samples left to train: reg1's 1 + 1, then reg2's first image with its
    # own 2 repeats passes 5 (sd-scripts' first pass takes whole repeats), its other images are left out.
    assert samples == 6


def test_each_subset_captions_and_flips_with_its_own_settings(tmp_path, ctx):
    plain = make_folder(tmp_path / "plain", 2)
    tags = make_folder(tmp_path / "tags", 2, extension=".caption")
    silent = make_folder(tmp_path / "silent", 1)
    bare = make_folder(tmp_path / "bare", 1, captions={})
    rows = [{"image_dir": str(plain)},
            {"image_dir": str(tags), "caption_extension": ".caption", "shuffle_caption": True, "keep_tokens": 1,
             "flip_aug": True, "caption_prefix": "sks"},
            {"image_dir": str(silent), "caption_dropout_rate": 1.0},
            {"image_dir": str(bare), "class_tokens": "a photo of zwx"}]
    cfg = validate(TrainConfig, run_values(tmp_path, subsets=rows, flip_p=1.0, instance_prompt="fallback"), "test")
    examples, _ = subsets.prepare_data(cfg, ctx, OneProcess())
    dataset = TrainDataset(examples, cfg)
    n = len(examples)
    by_folder: dict[str, list[dict]] = {}
    for i, example in enumerate(examples):
        by_folder.setdefault(example.image.parent.name, []).append(
            {"items": [dataset[i + n * r] for r in range(12)], "example": example})

    for entry in by_folder["plain"]:
        text = (entry["example"].image.with_suffix(".txt")).read_text(encoding="utf-8")
        assert {item["caption"] for item in entry["items"]} == {text}  # the run's: no shuffle, no flip
        assert (entry["items"][0]["pixels"] == pixels_of(training_image(entry["example"].assignment))).all()
    for entry in by_folder["tags"]:
        captions = [item["caption"] for item in entry["items"]]
        assert all(c.startswith("sks tags, ") for c in captions)  # the prefix joins the first tag, kept in front
        assert len(set(captions)) > 1  # the rest shuffled
        unflipped = pixels_of(training_image(entry["example"].assignment))
        assert (entry["items"][0]["pixels"] == unflipped.flip(-1)).all()  # its own flip_aug, the run's flip_p 1
    assert {item["caption"] for item in by_folder["silent"][0]["items"]} == {""}
    assert by_folder["bare"][0]["example"].caption == "a photo of zwx"


def test_the_toml_reads_back_unchanged_and_falls_back_as_sd_scripts(two_datasets, tmp_path):
    first = read_dataset_config(two_datasets)
    alice, bob, reg1 = first.subsets[:3]
    assert (alice.keep_tokens, bob.keep_tokens, alice.shuffle_caption) == (1, 2, True)  # subset > dataset > general
    assert (alice.resolution, first.subsets[4].resolution, first.subsets[4].max_bucket_reso) == ("64,64", "128,128",
                                                                                               256)
    assert reg1.is_reg and reg1.class_tokens == "a person" and alice.image_dir == str(tmp_path / "alice")
    assert alice.flip_aug is None  # not set anywhere: the run's

    exported = write_dataset_config(tmp_path / "exported.toml", first.subsets, batch_size=4)
    parsed = tomllib.loads(exported.read_text(encoding="utf-8"))
    assert parsed["general"] == {"batch_size": 4} and len(parsed["datasets"]) == 2
    assert parsed["datasets"][1]["resolution"] == [128, 128]
    again = read_dataset_config(exported)
    assert again.subsets == first.subsets and again.batch_size == 4
    with pytest.raises(ConfigError, match="already exists"):
        write_dataset_config(exported, first.subsets)  # never written over
    tricky = DatasetSubset(image_dir=str(tmp_path / "alice"), class_tokens='say "hi"\\ \x7f\tthere')
    (tmp_path / "tricky.toml").write_text(dataset_config_text([tricky]), encoding="utf-8")
    assert read_dataset_config(tmp_path / "tricky.toml").subsets == [tricky]


@pytest.mark.parametrize("text, where, problem", [
    ("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'alice'\nflip_agu = true\n", "datasets[0].subsets[0].flip_agu",
     "unknown key"),
    ("[[datasets]]\nbatch_size = 2\n[[datasets.subsets]]\nnum_repeats = 2\n", "datasets[0].subsets[0]",
     "image_dir is missing"),
    ("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'nowhere'\n", "datasets[0].subsets[0].image_dir",
     "folder not found"),
    ("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'alice'\nresolution = 512\n", "datasets[0].subsets[0].resolution",
     "a dataset's setting"),
    ("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'alice'\ncolor_aug = true\n", "datasets[0].subsets[0].color_aug",
     "not supported"),
    ("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'alice'\nnum_repeats = 'ten'\n",
     "datasets[0].subsets[0].num_repeats", "valid integer"),
    ("[general]\nbatch_size = 1\n[[datasets]]\nbatch_size = 2\n[[datasets.subsets]]\nimage_dir = 'alice'\n"
     "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'alice'\n", "batch_size", "differs between datasets"),
    ("[[datasets]]\n[[datasets.subsets]\n", "", "invalid TOML"),
    ("[dataset]\n", "dataset", "unknown key"),
])
def test_a_bad_toml_names_the_file_and_the_key(tmp_path, text, where, problem):
    make_folder(tmp_path / "alice", 1)
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        read_dataset_config(path)
    assert str(err.value).startswith(f"{path}: {where}") and problem in str(err.value)
    cfg = validate(TrainConfig, run_values(tmp_path, dataset_config=str(path)), "test")
    found = check_training(cfg.model_dump())
    assert any(p.field == "dataset_config" and problem in p.message for p in found.errors)


def test_zero_repeats_are_left_out_as_in_sd_scripts(tmp_path):
    make_folder(tmp_path / "alice", 1)
    make_folder(tmp_path / "bob", 1)
    path = tmp_path / "d.toml"
    path.write_text("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'alice'\nnum_repeats = 0\n"
                    "[[datasets.subsets]]\nimage_dir = 'bob'\n", encoding="utf-8")
    found = read_dataset_config(path)
    assert [s.image_dir for s in found.subsets] == [str(tmp_path / "bob")]
    assert "num_repeats 0, left out" in found.notes[0]


def test_settings_name_the_subset_and_need_one_source(tmp_path):
    folder = make_folder(tmp_path / "alice", 1)
    with pytest.raises(ConfigError, match="field 'train_data_dir': give at least one folder"):
        validate(TrainConfig, run_values(tmp_path), "test")
    with pytest.raises(ConfigError, match="both set"):
        validate(TrainConfig, run_values(tmp_path, subsets=[{"image_dir": str(folder)}], dataset_config="x.toml"),
                 "test")
    with pytest.raises(ConfigError, match=r"subsets\.0\.keep_tokens"):
        validate(TrainConfig, run_values(tmp_path, subsets=[{"image_dir": str(folder), "keep_tokens": -1}]), "test")
    cfg = validate(TrainConfig, run_values(tmp_path, subsets=[{"image_dir": str(folder), "resolution": "1024"}]), "t")
    with pytest.raises(ConfigError, match=f"subset {folder}.*max_resolution 1024,1024 is outside"):
        subsets.sources(cfg)
    found = check_training(validate(TrainConfig, run_values(tmp_path, subsets=[
        {"image_dir": str(folder)}, {"image_dir": str(tmp_path / "gone")}]), "t").model_dump())
    assert any(p.field == "subsets" and "not found" in p.message for p in found.errors)


def test_n_name_folders_stay_subsets_with_their_repeats(tmp_path, ctx):
    make_folder(tmp_path / "data" / "5_alice", 2)
    make_folder(tmp_path / "data" / "2_bob", 1)
    cfg = validate(TrainConfig, run_values(tmp_path, train_data_dir=[str(tmp_path / "data")]), "test")
    examples, _ = subsets.prepare_data(cfg, ctx, OneProcess())
    assert sorted((e.image.name, e.repeats) for e in examples) == [("2_bob-0.png", 2), ("5_alice-0.png", 5),
                                                                    ("5_alice-1.png", 5)]
    log = (ctx.run.path / "log.txt").read_text(encoding="utf-8")
    assert f"{tmp_path / 'data' / '5_alice'}: 2 images x repeats 5 = 10 samples (83.3% of an epoch)" in log


def test_the_table_round_trips_through_the_form_presets_and_the_command_line(tmp_path):
    from tabs.table_editor import records_of, rows_of

    folder = make_folder(tmp_path / "alice", 1)
    records = [{"image_dir": str(folder), "num_repeats": 4, "shuffle_caption": True, "keep_tokens": 2},
               {"image_dir": str(folder), "is_reg": True, "resolution": "64,64"}]
    rows = rows_of(DatasetSubset, records)
    assert rows[0][:3] == [str(folder), 4, False] and "true" in rows[0]
    back = records_of(DatasetSubset, rows + rows_of(DatasetSubset, [{}]))  # a row added and left empty: skipped
    assert [DatasetSubset.model_validate(r) for r in back] == [DatasetSubset.model_validate(r) for r in records]

    cfg = validate(TrainConfig, run_values(tmp_path, subsets=back), "test")
    preset = json.loads(json.dumps(cfg.model_dump(mode="json")))
    assert validate(TrainConfig, preset, "preset").subsets == cfg.subsets

    args = build_parser(JOBS["train"]).parse_args(
        ["--pretrained_model_name_or_path", "m", "--output_dir", str(tmp_path / "o"), "--subsets", json.dumps(records)])
    assert resolve_config(JOBS["train"], args).subsets == cfg.subsets


def test_a_tiny_run_with_two_subsets_trains_and_logs_its_composition(demo_kit, copy_dataset, tmp_path):
    kit = demo_kit("sd1", 6, 0)
    dataset = copy_dataset(kit)  # 4 images in 5_demo, 2 in 2_shapes; latent caches are written beside them
    values = train_values(kit, tmp_path / "out", train_data_dir=[], max_train_steps=3, max_resolution="64,64",
                          subsets=[{"image_dir": str(dataset / "5_demo"), "num_repeats": 1},
                                   {"image_dir": str(dataset / "2_shapes"), "num_repeats": 3, "flip_aug": True,
                                    "resolution": "128,128"}])
    result = train(values, tmp_path / "run")
    assert result["steps"] == 3
    log = (tmp_path / "run" / "log.txt").read_text(encoding="utf-8")
    assert "epoch: 10 samples from 2 subset(s)" in log
    assert f"{dataset / '5_demo'}: 4 images x repeats 1 = 4 samples (40.0% of an epoch)" in log
    assert f"{dataset / '2_shapes'}: 2 images x repeats 3 = 6 samples (60.0% of an epoch)" in log
    assert sorted(p.name for p in (dataset / "2_shapes").iterdir() if ".latents" in p.name)  # cached per subset


def test_cached_text_encodings_hold_each_subsets_captions(demo_kit, copy_dataset, tmp_path):
    """With cache_text_encoder_outputs every caption a subset trains on (its own prefix, its empty caption) and the
    validation's (the run's prefix) is in the cache: a missing one would stop the run."""
    kit = demo_kit("sd1", 6, 0)
    dataset = copy_dataset(kit)
    values = train_values(kit, tmp_path / "out", train_data_dir=[], max_train_steps=4, max_resolution="64,64",
                          cache_text_encoder_outputs=True, caption_prefix="run", validation_split=0.5,
                          validate_every_n_steps=2,
                          subsets=[{"image_dir": str(dataset / "5_demo"), "caption_prefix": "zwx"},
                                   {"image_dir": str(dataset / "2_shapes"), "caption_dropout_rate": 0.5}])
    result = train(values, tmp_path / "run")
    assert result["steps"] == 4
    log = (tmp_path / "run" / "log.txt").read_text(encoding="utf-8")
    assert "validation: 3 images held out" in log and "cached text-encoder outputs of" in log
