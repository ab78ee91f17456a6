"""BLIP captioning (job `caption`) with a tiny random-weight BLIP built offline."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from core.captions.files import list_caption_backups, read_caption, save_caption
from core.captions.taggers.blip import _load_blip, preview_captions, run
from core.config import BlipCaptionConfig
from core.jobs.protocol import JobContext
from core.jobs.run_folder import RunFolder

REPO = Path(__file__).resolve().parents[1]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
WORDS = "a an the cat dog sits on sofa red blue photo of in field woman man green".split()
NUM_IMAGES = 6


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import BertTokenizer

    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("\n".join(SPECIALS + WORDS) + "\n", encoding="utf-8")
    # transformers 5 ignores `vocab_file=` (a 5-token vocabulary); `vocab=` takes the file
    tok = BertTokenizer(vocab=str(vocab), bos_token="[DEC]")
    assert len(tok) == len(SPECIALS + WORDS) and tok.convert_tokens_to_ids("cat") == len(SPECIALS) + WORDS.index("cat")
    return tok


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory, tokenizer):
    """A random BLIP captioner saved like Salesforce/blip-image-captioning-*: model and processor.
    Its decoder never emits special tokens but [SEP] (the end), so caption lengths are exact."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    torch.manual_seed(0)
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in ("[DEC]", "[SEP]", "[PAD]")}
    config = BlipConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=128, bos_token_id=ids["[DEC]"],
                         sep_token_id=ids["[SEP]"], pad_token_id=ids["[PAD]"]),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=32, image_text_hidden_size=32)
    model = BlipForConditionalGeneration(config)
    with torch.no_grad():
        model.text_decoder.cls.predictions.bias[[i for i, t in enumerate(SPECIALS) if t != "[SEP]"]] = -1e4
    folder = tmp_path_factory.mktemp("blip")
    model.save_pretrained(folder)
    BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture
def dataset(tmp_path):
    """NUM_IMAGES small images of different colours and sizes, some in a kohya repeat folder."""
    root = tmp_path / "data"
    (root / "5_subject").mkdir(parents=True)
    for i in range(NUM_IMAGES):
        folder = root / "5_subject" if i % 2 else root
        Image.effect_noise((24 + 8 * i, 40 - 2 * i), 20 + 30 * i).convert("RGB").save(folder / f"img{i}.png")
    return root


def images_of(root: Path) -> list[Path]:
    return sorted(root.rglob("*.png"))


def make_cfg(dataset, blip_dir, **overrides) -> BlipCaptionConfig:
    values = dict(train_data_dir=[str(dataset)], model_dir=str(blip_dir), batch_size=4, min_length=3,
                  max_length=8, max_data_loader_n_workers=2)
    return BlipCaptionConfig(**{**values, **overrides})


def caption_run(cfg, tmp_path, name="run"):
    with JobContext(tmp_path / name, echo=False) as ctx:
        return run(cfg, ctx)


def captions(root: Path) -> dict[str, str]:
    return {p.name: read_caption(p.with_suffix(".txt")) for p in images_of(root) if p.with_suffix(".txt").exists()}


def test_beam_search_writes_deterministic_captions_within_the_length_limits(dataset, blip_dir, tokenizer,
                                                                            tmp_path):
    cfg = make_cfg(dataset, blip_dir, existing_captions="overwrite")
    result = caption_run(cfg, tmp_path)
    assert result["complete"] and result["failed_paths"] == []
    assert (result["images"], result["written"], result["skipped"], result["failed"]) == (NUM_IMAGES,) * 2 + (0, 0)
    written = captions(dataset)
    assert len(written) == NUM_IMAGES
    assert all(3 <= len(tokenizer.tokenize(text)) <= 8 for text in written.values()), written
    progress = RunFolder(tmp_path / "run").read_events("progress")
    assert progress[-1]["step"] == progress[-1]["total"] == NUM_IMAGES

    again = caption_run(make_cfg(dataset, blip_dir, existing_captions="overwrite", batch_size=1), tmp_path, "again")
    assert (again["written"], again["unchanged"]) == (0, NUM_IMAGES)
    assert captions(dataset) == written


def test_sampling_is_reproducible_for_a_seed_whatever_the_batch_size(dataset, blip_dir, tokenizer, tmp_path):
    cfg = make_cfg(dataset, blip_dir, existing_captions="overwrite", beam_search=False, top_p=0.95, seed=7)
    assert caption_run(cfg, tmp_path)["written"] == NUM_IMAGES
    sampled = captions(dataset)
    assert all(1 <= len(tokenizer.tokenize(text)) <= 8 for text in sampled.values())

    rebatched = cfg.model_copy(update={"batch_size": 1, "max_data_loader_n_workers": 0})
    assert caption_run(rebatched, tmp_path, "rebatched")["unchanged"] == NUM_IMAGES
    reseeded = caption_run(cfg.model_copy(update={"seed": 8}), tmp_path, "reseeded")
    assert reseeded["written"] > 0 and captions(dataset) != sampled


def test_preview_applies_prefix_and_postfix_writes_nothing_and_matches_the_run(dataset, blip_dir, tmp_path):
    cfg = make_cfg(dataset, blip_dir, prefix=" sks  person, ", postfix="high quality ")
    preview = preview_captions(cfg, limit=3)
    assert len(preview) == 3 and captions(dataset) == {}
    assert all(text.startswith("sks person, ") and text.endswith(" high quality") for _, text in preview)
    hits = _load_blip.cache_info().hits
    assert preview_captions(cfg, limit=3) == preview
    assert _load_blip.cache_info().hits == hits + 1  # the model was loaded once

    caption_run(cfg, tmp_path)
    assert all(read_caption(Path(path).with_suffix(".txt")) == text for path, text in preview)


def test_existing_captions_skip_append_and_overwrite(dataset, blip_dir, tmp_path):
    first, second = images_of(dataset)[:2]
    sentence = dict(preview_captions(make_cfg(dataset, blip_dir), limit=NUM_IMAGES))[str(second)]
    save_caption(first.with_suffix(".txt"), "alice, 1girl")
    save_caption(second.with_suffix(".txt"), f"Alice. {sentence.upper()}.")

    skipped = caption_run(make_cfg(dataset, blip_dir), tmp_path, "skip")
    assert (skipped["skipped"], skipped["written"]) == (2, NUM_IMAGES - 2)
    assert read_caption(first.with_suffix(".txt")) == "alice, 1girl"
    fresh = captions(dataset)

    appended = caption_run(make_cfg(dataset, blip_dir, existing_captions="append"), tmp_path, "append")
    assert (appended["written"], appended["unchanged"]) == (1, NUM_IMAGES - 1)  # the others contain it
    first_sentence = dict(preview_captions(make_cfg(dataset, blip_dir, existing_captions="overwrite"),
                                           limit=1))[str(first)]
    assert read_caption(first.with_suffix(".txt")) == f"alice, 1girl, {first_sentence}"
    assert read_caption(second.with_suffix(".txt")) == f"Alice. {sentence.upper()}."
    assert caption_run(make_cfg(dataset, blip_dir, existing_captions="append"), tmp_path, "again")["written"] == 0

    overwritten = caption_run(make_cfg(dataset, blip_dir, existing_captions="overwrite"), tmp_path, "overwrite")
    assert (overwritten["written"], overwritten["unchanged"]) == (2, NUM_IMAGES - 2)
    assert captions(dataset) == {**fresh, first.name: first_sentence, second.name: sentence}
    assert [b.preview for b in list_caption_backups(first.with_suffix(".txt"))][:2] == [
        f"alice, 1girl, {first_sentence}", "alice, 1girl"]


def test_bad_images_are_reported_and_the_rest_captioned(dataset, blip_dir, tmp_path):
    good = images_of(dataset)
    truncated, fake = dataset / "5_subject" / "truncated.png", dataset / "notes.png"
    truncated.write_bytes(good[0].read_bytes()[:80])
    fake.write_text("not an image", encoding="utf-8")
    result = caption_run(make_cfg(dataset, blip_dir, batch_size=3), tmp_path)
    assert result["complete"] and (result["written"], result["failed"]) == (NUM_IMAGES, 2)
    assert sorted(result["failed_paths"]) == sorted([str(truncated), str(fake)])
    assert not truncated.with_suffix(".txt").exists() and not fake.with_suffix(".txt").exists()
    warned = {os.path.basename(e["path"]) for e in RunFolder(tmp_path / "run").read_events("warning")}
    assert warned == {"truncated.png", "notes.png"}


class StopAfterFirstBatch(JobContext):
    """A job context whose STOP file appears once the first batch is reported."""

    def progress(self, step, total):
        super().progress(step, total)
        if step:
            self.run.request_stop()


def test_stop_between_batches_then_continue_with_skip(dataset, blip_dir, tmp_path):
    cfg = make_cfg(dataset, blip_dir, batch_size=2)
    with StopAfterFirstBatch(tmp_path / "stopped", echo=False) as ctx:
        first = run(cfg, ctx)
    assert not first["complete"] and (first["written"], len(captions(dataset))) == (2, 2)

    second = caption_run(cfg, tmp_path, "continued")
    assert second["complete"] and (second["skipped"], second["written"]) == (2, NUM_IMAGES - 2)
    assert len(captions(dataset)) == NUM_IMAGES and all(captions(dataset).values())
    assert len(list(dataset.rglob("*.txt"))) == NUM_IMAGES


def test_a_wrong_model_folder_is_a_clear_error(dataset, blip_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "config.json").write_text('{"model_type": "clip"}', encoding="utf-8")
    (tmp_path / "weights-only").mkdir()
    for name in ("config.json", "model.safetensors"):
        (tmp_path / "weights-only" / name).write_bytes((blip_dir / name).read_bytes())
    cases = {"missing": "not found", "empty": "no readable config.json", "clip": "holds a clip model",
             "weights-only": "cannot load"}
    for folder, message in cases.items():
        with pytest.raises(ValueError, match=message) as error:
            caption_run(make_cfg(dataset, tmp_path / folder), tmp_path, f"run-{folder}")
        assert str(tmp_path / folder) in str(error.value)
        assert "Salesforce/blip-image-captioning-large" in str(error.value)
    assert captions(dataset) == {}


def test_command_line_run(dataset, blip_dir, tmp_path):
    run_dir = tmp_path / "cli-run"
    proc = subprocess.run(
        [sys.executable, "-m", "core", "caption", "--train_data_dir", str(dataset), "--model_dir", str(blip_dir),
         "--run-dir", str(run_dir), "--caption_extension", ".caption", "--min_length", "2", "--max_length", "6",
         "--set", "beam_search=false"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
    assert (result["written"], result["failed"]) == (NUM_IMAGES, 0)
    assert len(list(dataset.rglob("*.caption"))) == NUM_IMAGES
    assert RunFolder(run_dir).read_events()[-1]["event"] == "done"
