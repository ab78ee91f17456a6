"""Dataset discovery and the scan job's report on a corpus of good and bad files."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from core.config import ScanConfig
from core.dataset import scan
from core.dataset.discovery import caption_path, find_images, parse_repeat_folder
from core.jobs.protocol import JobContext
from core.jobs.run_folder import RunFolder


def _image(path, size, fmt=None, caption=None, caption_bytes=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 60, 30)).save(path, format=fmt)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    if caption_bytes is not None:
        path.with_suffix(".txt").write_bytes(caption_bytes)
    return path


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    """11 image files: 8 readable (35 effective), 3 broken, plus files that must be ignored."""
    monkeypatch.setenv("STUDIO_HOME", str(tmp_path / "studio"))
    root = tmp_path / "data set"
    _image(root / "10_alice" / "a1.png", (64, 64), caption="alice, smiling")
    _image(root / "10_alice" / "a2.jpg", (96, 64))                          # missing caption
    _image(root / "10_alice" / "sub" / "a3.webp", (32, 64), caption=" \n")  # empty caption
    _image(root / "0_bad" / "b1.png", (40, 40), caption="bad")
    _image(root / "plain" / "p1.bmp", (640, 520), caption_bytes="\ufeffcaf\u00e9".encode("utf-8"))
    _image(root / "plain" / "p2.gif", (20, 40), caption_bytes="tall one".encode("utf-16"))
    (root / "plain" / "zero.png").write_bytes(b"")
    (root / "plain" / "fake.JPG").write_text("not an image")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "plain" / "cut.png")
    data = (root / "plain" / "cut.png").read_bytes()
    (root / "plain" / "cut.png").write_bytes(data[: len(data) // 2])
    (root / "plain" / "cut.txt").write_text("cut")
    _image(root / "3_outer" / "2_inner" / "n.png", (300, 100), caption="nested")
    _image(root / "top.png", (1100, 800), caption_bytes=b"na\xefve caf\xe9")  # cp1252
    _image(root / ".hidden" / "h.png", (8, 8))
    _image(root / ".dot.png", (8, 8))
    (root / "notes.md").write_text("ignored")
    (root / "plain" / "p1.bmp.bak").write_text("ignored")
    return root


def test_parse_repeat_folder():
    assert parse_repeat_folder("10_alice") == (10, "alice")
    assert parse_repeat_folder("007_bond_film") == (7, "bond_film")
    assert parse_repeat_folder("0_x") == (0, "x")
    for name in ("alice", "10_", "_x", "x_10", "10alice"):
        assert parse_repeat_folder(name) is None


def test_caption_path_is_same_stem():
    assert caption_path("/d/img.png", ".txt").as_posix() == "/d/img.txt"
    assert caption_path("/d/img.v2.PNG", ".caption").as_posix() == "/d/img.v2.caption"


def test_find_images_sorted_with_repeats(corpus):
    found = find_images([corpus])
    rel = [img.path.relative_to(corpus).as_posix() for img in found]
    assert rel == ["0_bad/b1.png", "10_alice/a1.png", "10_alice/a2.jpg", "10_alice/sub/a3.webp",
                   "3_outer/2_inner/n.png", "plain/cut.png", "plain/fake.JPG", "plain/p1.bmp",
                   "plain/p2.gif", "plain/zero.png", "top.png"]
    by_name = {img.path.name: img for img in found}
    assert by_name["a3.webp"].repeats == 10 and by_name["a3.webp"].concept_dir.name == "10_alice"
    assert by_name["a3.webp"].concept_name == "alice" and by_name["a3.webp"].folder.name == "sub"
    assert by_name["n.png"].repeats == 2 and by_name["n.png"].concept_name == "inner"
    assert by_name["b1.png"].repeats == 0 and "0 repeats" in by_name["b1.png"].problem
    assert by_name["p1.bmp"].repeats == 1 and by_name["p1.bmp"].concept_dir == corpus / "plain"
    assert by_name["top.png"].repeats == 1 and by_name["top.png"].concept_dir == corpus
    assert all(img.root == corpus and img.path.is_absolute() for img in found)


def test_find_images_not_recursive_and_root_as_repeat_folder(corpus):
    assert [img.path.name for img in find_images([corpus], recursive=False)] == ["top.png"]
    alice = find_images([corpus / "10_alice"])
    assert [(img.path.name, img.repeats) for img in alice] == [
        ("a1.png", 10), ("a2.jpg", 10), ("a3.webp", 10)]


def test_repeat_folders_above_the_dataset_folder_do_not_count(tmp_path):
    _image(tmp_path / "5_outside" / "data" / "plain" / "x.png", (8, 8))
    (image,) = find_images([tmp_path / "5_outside" / "data"])
    assert image.repeats == 1 and image.concept_dir == tmp_path / "5_outside" / "data" / "plain"


def test_overlapping_folders_count_each_image_once(corpus):
    found = find_images([corpus / "plain", corpus])
    assert len(found) == 11
    assert [img.path.name for img in found[:5]] == ["cut.png", "fake.JPG", "p1.bmp", "p2.gif",
                                                   "zero.png"]


def test_studio_backup_folder_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_HOME", str(tmp_path / "data"))
    _image(tmp_path / "data" / "backups" / "captions" / "x.png", (8, 8))
    _image(tmp_path / "data" / "keep.png", (8, 8))
    assert [img.path.name for img in find_images([tmp_path / "data"])] == ["keep.png"]


def test_missing_folder_and_file_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="not found.*nowhere"):
        find_images([tmp_path / "nowhere"])
    file = _image(tmp_path / "one.png", (8, 8))
    with pytest.raises(ValueError, match="not a folder.*one.png"):
        find_images([file])


def _run_scan(folders, tmp_path, ctx_class=JobContext, **options):
    cfg = ScanConfig(train_data_dir=[str(f) for f in folders], **options)
    with ctx_class(tmp_path / "run", echo=False) as ctx:
        summary = scan.run(cfg, ctx)
    report = json.loads((tmp_path / "run" / "report.json").read_text(encoding="utf-8"))
    return summary, report


def test_scan_report_numbers(corpus, tmp_path):
    summary, report = _run_scan([corpus], tmp_path)
    assert summary == {"complete": True, "total_files": 11, "readable": 8, "broken": 3,
                       "missing_captions": 1, "empty_captions": 1, "effective_images": 35}
    assert report["complete"] is True and report["folders"] == [str(corpus)]
    assert report["caption_extension"] == ".txt"
    assert (report["total_files"], report["readable"], report["effective_images"]) == (11, 8, 35)
    assert report["by_format"] == {"BMP": 1, "GIF": 1, "JPEG": 1, "PNG": 4, "WEBP": 1}
    assert [(b["label"], b["count"]) for b in report["size_histogram"]] == [
        ("<512", 6), ("512-767", 1), ("768-1023", 1), ("1024-1535", 0), ("1536-2047", 0),
        ("2048+", 0)]
    assert [(b["label"], b["count"]) for b in report["aspect_histogram"]] == [
        ("1:2 or taller", 2), ("9:16", 0), ("2:3", 0), ("3:4", 0), ("1:1", 2), ("4:3", 2),
        ("3:2", 1), ("16:9", 0), ("2:1 or wider", 1)]
    broken = {item["path"].rsplit("/", 1)[-1]: item["reason"] for item in report["broken"]}
    assert sorted(broken) == ["cut.png", "fake.JPG", "zero.png"]
    assert "truncated" in broken["cut.png"] and "empty" in broken["zero.png"]
    assert "not an image" in broken["fake.JPG"]
    assert report["missing_captions"] == [str(corpus / "10_alice" / "a2.jpg")]
    assert report["empty_captions"] == [str(corpus / "10_alice" / "sub" / "a3.webp")]
    assert report["invalid_folders"] == [
        {"path": str(corpus / "0_bad"), "reason": report["invalid_folders"][0]["reason"]}]
    assert "0 repeats" in report["invalid_folders"][0]["reason"]


def test_scan_repeat_folders_and_images(corpus, tmp_path):
    _, report = _run_scan([corpus], tmp_path)
    folders = {f["path"]: (f["name"], f["repeats"], f["images"], f["effective"])
               for f in report["repeat_folders"]}
    assert folders == {
        str(corpus / "0_bad"): ("bad", 0, 1, 0),
        str(corpus / "10_alice"): ("alice", 10, 3, 30),
        str(corpus / "3_outer" / "2_inner"): ("inner", 2, 1, 2),
        str(corpus / "plain"): ("plain", 1, 2, 2),
        str(corpus): ("data set", 1, 1, 1),
    }
    entries = {e["path"]: e for e in report["images"]}
    assert len(entries) == 8
    assert entries[str(corpus / "10_alice" / "a1.png")] == {
        "path": str(corpus / "10_alice" / "a1.png"),
        "caption_path": str(corpus / "10_alice" / "a1.txt"),
        "width": 64, "height": 64, "format": "PNG", "repeats": 10, "caption": "ok"}
    assert entries[str(corpus / "plain" / "p2.gif")]["caption"] == "ok"  # UTF-16 caption
    assert entries[str(corpus / "top.png")]["caption"] == "ok"          # cp1252 caption


def test_scan_warns_per_broken_image_and_logs_summary(corpus, tmp_path):
    _run_scan([corpus], tmp_path)
    events = RunFolder(tmp_path / "run").read_events()
    warned = sorted(e["path"].rsplit("/", 1)[-1] for e in events if e["event"] == "warning")
    assert warned == ["cut.png", "fake.JPG", "zero.png"]
    progress = [(e["step"], e["total"]) for e in events if e["event"] == "progress"]
    assert progress[0] == (0, 11) and progress[-1] == (11, 11)
    log = (tmp_path / "run" / "log.txt").read_text(encoding="utf-8")
    assert "11 image files, 8 readable, 3 broken" in log
    assert "1 missing, 1 empty" in log and "effective images (with repeats): 35" in log


def test_scan_header_only_misses_truncation_and_other_extension(corpus, tmp_path):
    summary, report = _run_scan([corpus], tmp_path, verify_pixels=False,
                                caption_extension=".caption")
    assert (summary["readable"], summary["broken"]) == (9, 2)  # cut.png passes on its header
    assert summary["missing_captions"] == 9 and report["caption_extension"] == ".caption"
    assert report["images"][0]["caption_path"].endswith("b1.caption")


def test_scan_reports_images_over_the_pixel_limit(tmp_path):
    _image(tmp_path / "data" / "huge.png", (1001, 1000), caption="big")
    _image(tmp_path / "data" / "fine.png", (1000, 1000), caption="fine")
    summary, report = _run_scan([tmp_path / "data"], tmp_path, max_image_pixels=1_000_000)
    assert (summary["readable"], summary["broken"]) == (1, 1)
    assert report["broken"][0]["path"].endswith("huge.png")
    assert "bomb" in report["broken"][0]["reason"]


class _StopAfter(JobContext):
    """Asks to stop once three images have been looked at."""
    checks = 0

    def should_stop(self) -> bool:
        self.checks += 1
        return self.checks > 3


def test_stopped_scan_writes_partial_report(corpus, tmp_path):
    summary, report = _run_scan([corpus], tmp_path, ctx_class=_StopAfter)
    assert report["complete"] is False and summary["complete"] is False
    assert report["total_files"] == 11
    assert report["readable"] + len(report["broken"]) == 3
    assert "partial" in (tmp_path / "run" / "log.txt").read_text(encoding="utf-8")


def test_scan_of_missing_folder_names_it(tmp_path):
    with pytest.raises(ValueError, match="nowhere"):
        _run_scan([tmp_path / "nowhere"], tmp_path)


def test_scan_of_the_demo_dataset(tmp_path):
    from core.dataset.demo import write_dataset

    counts = write_dataset(tmp_path / "dataset", num_images=24, seed=1)
    with JobContext(tmp_path / "run", echo=False) as ctx:
        result = scan.run(ScanConfig(train_data_dir=[str(tmp_path / "dataset")]), ctx)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert result["total_files"] == result["readable"] == 24
    assert (result["broken"], result["missing_captions"], result["empty_captions"]) == (0, 0, 0)
    repeats = {f["name"]: (f["repeats"], f["images"]) for f in report["repeat_folders"]}
    assert repeats == {"demo": (5, counts["5_demo"]), "shapes": (2, counts["2_shapes"])}
    assert result["effective_images"] == 5 * counts["5_demo"] + 2 * counts["2_shapes"]
    assert set(report["by_format"]) == {"PNG", "JPEG", "WEBP"} and sum(report["by_format"].values()) == 24
    assert sum(b["count"] for b in report["aspect_histogram"]) == 24
    assert len({(i["width"], i["height"]) for i in report["images"]}) >= 5  # varied sizes
