"""Every job over a corpus of bad inputs (tests/badcorpus.py): truncated JPEG, zero-byte file, PNG named
.jpg, CMYK JPEG, 16-bit PNG, palette with transparency, EXIF rotation, 1x1 image, decompression bomb,
animated GIF and WebP, cp1252 and BOM captions, names with spaces, unicode and emoji, an unreadable
file, symlink loops. Each job completes, uses every good image, reports each bad file exactly once
and loses no caption."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from badcorpus import build_corpus, unlock

from core.jobs.protocol import execute
from core.jobs.registry import JOBS
from core.jobs.run_folder import RunFolder

BUCKETS = {"max_resolution": "64,64", "min_bucket_reso": 64, "max_bucket_reso": 128}


@pytest.fixture
def corpus(tmp_path):
    built = build_corpus(tmp_path / "my data ✓")
    yield built
    unlock(built)


def run_job(job: str, run_dir: Path, **values) -> tuple[list[dict], dict]:
    """Run `job` in-process with the full job protocol; (its warning events, its result)."""
    spec = JOBS[job]
    assert execute(job, spec.config(**values), run_dir, spec.load) == 0, (run_dir / "log.txt").read_text()
    events = RunFolder(run_dir).read_events()
    assert events[-1]["event"] == "done"
    return [e for e in events if e["event"] == "warning"], json.loads((run_dir / "result.json").read_text())


def reported(warnings: list[dict]) -> Counter:
    """How many times each file was reported as left out."""
    return Counter(Path(w["path"]) for w in warnings if w.get("path") and w["message"].startswith("skipped"))


def header_bad(corpus) -> list[Path]:
    """The bad files a job that reads only image headers finds (a truncated JPEG has a whole header)."""
    return [p for p in corpus.bad if p.name != "truncated.jpg"]


def test_scan_reads_every_good_file_and_reports_each_bad_one_once(corpus, tmp_path):
    warnings, result = run_job("scan", tmp_path / "run", train_data_dir=[str(corpus.root)])
    broken = Counter(Path(w["path"]) for w in warnings if "unreadable image" in w["message"])
    assert broken == Counter(corpus.bad)
    assert result["readable"] == len(corpus.good) and result["broken"] == len(corpus.bad)
    assert result["total_files"] == len(corpus.good) + len(corpus.bad)  # the folder loop is walked once
    assert corpus.caption_bytes_now() == corpus.captions


def test_bucket_plan_places_every_good_image_and_reports_each_bad_one_once(corpus, tmp_path):
    warnings, result = run_job("bucket", tmp_path / "run", train_data_dir=[str(corpus.root)], **BUCKETS)
    assert reported(warnings) == Counter(header_bad(corpus))
    plan = json.loads((tmp_path / "run" / "buckets.json").read_text(encoding="utf-8"))
    planned = {Path(entry["path"]) for entry in plan["images"]}
    assert planned == set(corpus.good) | {corpus.root / "1_subject" / "truncated.jpg"}


@pytest.mark.parametrize("cache_latents", [True, False])
def test_training_uses_every_good_image_and_reports_each_bad_one_once(corpus, tmp_path, demo_kit, cache_latents):
    warnings, result = run_job(
        "train", tmp_path / "run", train_data_dir=[str(corpus.root)], **BUCKETS, cache_latents=cache_latents,
        pretrained_model_name_or_path=str(demo_kit("sd1", 4, 0) / "model"), output_dir=str(tmp_path / "out"),
        max_train_epochs=1, train_batch_size=4, mixed_precision="no", max_data_loader_n_workers=1)
    assert reported(warnings) == Counter(corpus.bad)
    assert Path(result["model"]).is_file()
    log = (tmp_path / "run" / "log.txt").read_text(encoding="utf-8")
    # without a cache the truncated JPEG (whole header) is found when its sample is decoded, and replaced
    assert f", {len(corpus.good) + (0 if cache_latents else 1)} images," in log
    assert corpus.caption_bytes_now() == corpus.captions


def test_tagging_over_every_caption_loses_none(corpus, tmp_path):
    from test_tagger_wd14 import build_model

    from core.captions.files import list_caption_backups

    warnings, result = run_job("tag", tmp_path / "run", train_data_dir=[str(corpus.root)],
                               model_dir=str(build_model(tmp_path / "tagger")), general_threshold=0.0,
                               existing_captions="overwrite")
    assert reported(warnings) == Counter(corpus.bad)
    assert sorted(map(Path, result["failed_paths"])) == sorted(corpus.bad)
    for image in corpus.good:
        assert image.with_suffix(".txt").read_text(encoding="utf-8").strip(), image
    for caption, before in corpus.captions.items():
        image_is_bad = any(caption == bad.with_suffix(".txt") for bad in corpus.bad)
        if image_is_bad:
            assert caption.read_bytes() == before  # nothing written for an image that could not be read
        elif caption.read_bytes() != before:
            assert [b for b in list_caption_backups(caption)], f"{caption} replaced without a backup"


def test_cleaning_reports_odd_encodings_once_and_undo_restores_every_byte(corpus, tmp_path):
    warnings, result = run_job("clean", tmp_path / "clean", train_data_dir=[str(corpus.root)],
                               rules=["underscores", "dedupe", "prefix: corpus"])
    odd = Counter(Path(w["path"]).name for w in warnings)
    assert odd == Counter({"latin1 caption.txt": 1, "bom caption.txt": 1})
    assert all(c.read_text(encoding="utf-8").startswith("corpus, ") for c in corpus.captions)
    run_job("undo_clean", tmp_path / "undo", snapshot=result["snapshot"])
    assert corpus.caption_bytes_now() == corpus.captions
