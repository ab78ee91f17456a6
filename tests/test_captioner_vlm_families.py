"""The `vlm_caption` job end to end on a tiny random-weight model of every supported family (tests/tinyvlm_*.py,
saved as downloaded models are): the bad-input corpus captioned with each bad file reported once and no caption
lost, a batch captioned as its images one by one, the preview what the run writes; on one family: seeded sampling
the same again in any batch, stop and continue, WD14 tags in the same pass, the command line."""
import importlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from badcorpus import build_corpus, unlock
from PIL import Image
from test_captioner_blip import StopAfterFirstBatch

from core.captions.files import list_caption_backups, read_caption
from core.captions.taggers.vlm import preview_captions, run
from core.config import VlmCaptionConfig
from core.jobs.protocol import JobContext
from core.jobs.run_folder import RunFolder

REPO = Path(__file__).resolve().parents[1]
BUILDERS = {  # model_type -> (module, builder) of tests/tinyvlm_*.py
    "florence2": ("tinyvlm_florence2", "build_florence2"),
    "qwen2_5_vl": ("tinyvlm_qwen", "build_qwen2_5_vl"),
    "qwen3_vl": ("tinyvlm_qwen", "build_qwen3_vl"),
    "llava": ("tinyvlm_llava", "build_llava"),
    "blip-2": ("tinyvlm_blip2", "build_blip_2"),
    "idefics3": ("tinyvlm_smolvlm", "build_smolvlm"),
}
PRESETS = {"florence2": "detailed"}  # what each family is asked (Florence-2: a task token); others: "medium"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """`models(model_type)`: the tiny model folder of a family, built once per module."""
    built = {}

    def get(model_type: str) -> Path:
        if model_type not in built:
            module, name = BUILDERS[model_type]
            built[model_type] = getattr(importlib.import_module(module), name)(
                tmp_path_factory.mktemp(model_type.replace("-", "_")) / "model")
        return built[model_type]

    return get


@pytest.fixture
def dataset(tmp_path):
    """Six images of different colours and sizes (so prompts of some families differ in length), two in a kohya
    repeat folder."""
    root = tmp_path / "data"
    (root / "5_subject").mkdir(parents=True)
    for i in range(6):
        folder = root / "5_subject" if i % 3 == 0 else root
        Image.new("RGB", (32 + 16 * (i % 3), 48 - 8 * (i % 2)), (40 * i, 200 - 30 * i, 90)).save(folder / f"i{i}.png")
    return root


def make_cfg(dataset: Path, model_dir: Path, model_type: str = "", **values) -> VlmCaptionConfig:
    return VlmCaptionConfig(**{"train_data_dir": [str(dataset)], "model_dir": str(model_dir), "batch_size": 4,
                               "max_new_tokens": 8, "max_data_loader_n_workers": 2,
                               "prompt_preset": PRESETS.get(model_type, "medium"), **values})


def caption_run(cfg: VlmCaptionConfig, run_dir: Path, context=JobContext) -> dict:
    with context(run_dir, echo=False) as ctx:
        return run(cfg, ctx)


def captions(root: Path) -> dict[str, str]:
    return {p.name: read_caption(p.with_suffix(".txt")) for p in sorted(root.rglob("*.png"))
            if p.with_suffix(".txt").exists()}


@pytest.mark.parametrize("model_type", list(BUILDERS))
def test_every_family_captions_the_bad_corpus_and_loses_no_caption(model_type, models, tmp_path):
    corpus = build_corpus(tmp_path / "my data ✓")
    try:
        cfg = make_cfg(corpus.root, models(model_type), model_type, existing_captions="overwrite")
        result = caption_run(cfg, tmp_path / "run")
        warned = Counter(Path(e["path"]) for e in RunFolder(tmp_path / "run").read_events("warning")
                         if e.get("path") and e["message"].startswith("skipped"))
        assert warned == Counter(corpus.bad) and sorted(map(Path, result["failed_paths"])) == sorted(corpus.bad)
        assert result["complete"] and result["written"] + result["unchanged"] == len(corpus.good)
        for image in corpus.good:
            assert image.with_suffix(".txt").read_text(encoding="utf-8").strip(), image
        for caption, before in corpus.captions.items():
            if any(caption == bad.with_suffix(".txt") for bad in corpus.bad):
                assert caption.read_bytes() == before  # nothing written for an image that could not be read
            elif caption.read_bytes() != before:
                assert list_caption_backups(caption), f"{caption} replaced without a backup"
        log = (tmp_path / "run" / "log.txt").read_text(encoding="utf-8")
        assert f"({model_type})" in log and "on cpu in float32" in log
    finally:
        unlock(corpus)


@pytest.mark.parametrize("model_type", list(BUILDERS))
def test_a_batch_captions_as_one_by_one_and_the_preview_as_the_run(model_type, models, dataset, tmp_path):
    if model_type == "blip-2":  # its plain caption: the image alone, no question (the corpus test asks one)
        preset = {"prompt_preset": "short"}
    else:
        preset = {}

    def make(**values):
        return make_cfg(dataset, models(model_type), model_type, **{**preset, **values})

    one_by_one = caption_run(make(batch_size=1), tmp_path / "single")
    assert one_by_one["written"] == 6
    single = captions(dataset)
    assert all(single.values()), single
    previewed = preview_captions(make(existing_captions="overwrite"), 4)
    assert [read_caption(Path(path).with_suffix(".txt")) for path, _ in previewed] == [c for _, c in previewed]
    assert captions(dataset) == single  # the preview wrote nothing
    for text in dataset.rglob("*.txt"):
        text.unlink()
    batched = caption_run(make(batch_size=4), tmp_path / "batched")
    assert batched["written"] == 6 and captions(dataset) == single


def test_seeded_sampling_writes_the_same_captions_in_any_batch(models, dataset, tmp_path):
    sampling = {"do_sample": True, "temperature": 1.5, "top_p": 1.0, "seed": 3, "max_new_tokens": 12}

    def written(name: str, **values) -> dict[str, str]:
        """The captions a fresh run writes (an image whose text came out empty gets no file)."""
        for text in dataset.rglob("*.txt"):
            text.unlink()
        caption_run(make_cfg(dataset, models("qwen2_5_vl"), **values), tmp_path / name)
        return captions(dataset)

    first = written("first", batch_size=4, **sampling)
    assert first
    assert written("greedy", batch_size=4, max_new_tokens=12) != first  # sampling chose other words
    assert written("again", batch_size=3, **sampling) == first
    assert written("other", batch_size=4, **{**sampling, "seed": 4}) != first


def test_stop_between_batches_then_continue(models, dataset, tmp_path):
    cfg = make_cfg(dataset, models("qwen2_5_vl"), batch_size=2)
    first = caption_run(cfg, tmp_path / "stopped", StopAfterFirstBatch)
    assert not first["complete"] and first["written"] == 2 and len(captions(dataset)) == 2
    second = caption_run(cfg, tmp_path / "continued")
    assert second["complete"] and (second["skipped"], second["written"]) == (2, 4)
    assert len(captions(dataset)) == 6 and all(captions(dataset).values())


def test_wd14_tags_and_the_trigger_word_in_the_same_pass(models, dataset, tmp_path):
    from test_tagger_wd14 import build_model

    from core.captions.taggers.wd14 import preview_tags
    from core.config import TagConfig

    tagger = build_model(tmp_path / "tagger")
    tags = dict(preview_tags(TagConfig(train_data_dir=[str(dataset)], model_dir=str(tagger), general_threshold=0.2),
                             6))
    assert len(tags) == 6 and all(tags.values())
    cfg = make_cfg(dataset, models("qwen2_5_vl"), wd14_model_dir=str(tagger), wd14_threshold=0.2,
                   trigger_word="ohwx")
    result = caption_run(cfg, tmp_path / "run")
    assert result["written"] == 6
    for path, image_tags in tags.items():
        caption = read_caption(Path(path).with_suffix(".txt"))
        assert caption.startswith(image_tags + ", ") and "ohwx" in caption.removeprefix(image_tags), caption
    assert "WD14 tags from" in (tmp_path / "run" / "log.txt").read_text(encoding="utf-8")


def test_command_line_run_and_a_prompt_florence_cannot_take(models, dataset, tmp_path):
    run_dir = tmp_path / "cli-run"
    proc = subprocess.run(
        [sys.executable, "-m", "core", "vlm_caption", "--train_data_dir", str(dataset), "--model_dir",
         str(models("florence2")), "--run-dir", str(run_dir), "--caption_extension", ".caption",
         "--prompt_preset", "short", "--max_new_tokens", "6"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
    assert (result["written"], result["failed"]) == (6, 0) and len(list(dataset.rglob("*.caption"))) == 6
    assert "'<CAPTION>'" in (run_dir / "log.txt").read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="Florence-2 answers task tokens"):
        caption_run(make_cfg(dataset, models("florence2"), prompt_preset="tags"), tmp_path / "refused")
    assert not list(dataset.rglob("*.txt"))


def test_the_model_kept_for_previews_is_freed_when_a_run_starts(models):
    from core.captions.taggers.vlm import load_vlm
    from tabs.captioning import release_preview_model

    kept = load_vlm(str(models("idefics3")))
    assert load_vlm(str(models("idefics3"))) is kept  # previews after the first do not load it again
    release_preview_model("vlm_caption")  # what the GUI does on Caption images / Add to queue
    assert load_vlm(str(models("idefics3"))) is not kept
