"""What is at a caption path and is not a plain file: a folder, a FIFO, a symbolic link loop or a link
to nothing reads as no caption in every job (reported once, with one reason text, nothing opened, so a
FIFO never hangs a job); a caption file that is a symbolic link is read but never written, so clean
and undo never turn it into a file; a killed write leaves no temp file for long; tag stays inside the
dataset folder."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from test_tagger_wd14 import BLUE, RED, build_model, make_cfg, solid, tag_run

from core.captions.cleaning import run as clean_run
from core.captions.cleaning import undo
from core.captions.files import (
    CaptionFileError,
    check_caption_path,
    read_caption,
    read_caption_detailed,
    save_caption,
    write_generated_caption,
)
from core.config import CleanConfig, ScanConfig, TrainConfig
from core.dataset import scan
from core.dataset.discovery import OUTSIDE_LINK
from core.train.data import build_examples

pytestmark = pytest.mark.skipif(os.name != "posix", reason="FIFOs, symbolic links and SIGKILL")
REPO = Path(__file__).resolve().parent.parent
UNUSABLE = ["folder", "fifo", "loop", "dangling"]
NO_HANG = pytest.mark.timeout(60, method="signal")  # a FIFO opened for reading blocks until a writer comes


def make_unusable(path: Path, kind: str) -> Path:
    """Put a `kind` of thing that is not a caption file at `path` (replacing what is there)."""
    if path.is_file() or path.is_symlink():
        path.unlink()
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "loop":
        os.symlink(path.name, path)
    elif kind == "dangling":
        os.symlink("no such file.txt", path)
    return path


def reason(path: Path) -> str:
    return check_caption_path(path).problem


def warned(ctx) -> dict[str, list[str]]:
    """{path: [messages]} of the run's warning events."""
    found: dict[str, list[str]] = {}
    for event in ctx.run.read_events("warning"):
        found.setdefault(event.get("path", ""), []).append(event["message"])
    return found


@pytest.fixture
def dataset(small_dataset):
    """small_dataset (12 images in 3_cats, captions `cat i`) with img0..img3's captions replaced by a
    folder, a FIFO, a link loop and a link to nothing."""
    folder = small_dataset / "3_cats"
    for i, kind in enumerate(UNUSABLE):
        make_unusable(folder / f"img{i}.txt", kind)
    return small_dataset


@NO_HANG
@pytest.mark.parametrize("kind", UNUSABLE)
def test_unusable_caption_paths_read_as_no_caption_with_the_reason(tmp_path, kind):
    path = make_unusable(tmp_path / "img.txt", kind)
    text = read_caption_detailed(path)
    assert text.text == "" and text.encoding == "" and text.problem == text.note == reason(path) != ""
    assert read_caption(path) == ""
    with pytest.raises(CaptionFileError, match="caption path is"):
        save_caption(path, "new text")
    with pytest.raises(CaptionFileError):
        write_generated_caption(path, ["tag"], "overwrite", ", ")
    assert check_caption_path(path, writing=True).problem  # and it is still there, untouched
    assert os.path.lexists(path) and not path.is_file()


def test_an_absent_caption_is_no_problem(tmp_path):
    assert check_caption_path(tmp_path / "none.txt") == (False, "")
    assert read_caption_detailed(tmp_path / "none.txt").problem == ""


@NO_HANG
@pytest.mark.parametrize("kind", UNUSABLE)
def test_training_data_trains_them_as_uncaptioned_and_reports_each_once(small_dataset, tmp_path, ctx, kind):
    path = make_unusable(small_dataset / "3_cats" / "img0.txt", kind)
    cfg = TrainConfig(train_data_dir=[str(small_dataset)], pretrained_model_name_or_path=str(tmp_path / "model"),
                      output_dir=str(tmp_path / "out"), cache_latents=False, max_resolution="64,64",
                      min_bucket_reso=64, max_bucket_reso=128, bucket_reso_steps=32, instance_prompt="a cat")
    for _ in range(2):  # the trainer plans the data more than once; each file is reported once
        captions = {e.image.name: e.caption for e in build_examples(cfg, ctx)}
    assert captions == {"img0.png": "a cat", **{f"img{i}.png": f"cat {i}" for i in range(1, 12)}}
    assert warned(ctx) == {str(path): [f"skipped: {reason(path)}"]}


@NO_HANG
def test_scan_counts_them_missing_and_reports_why(dataset, ctx):
    summary = scan.run(ScanConfig(train_data_dir=[str(dataset)]), ctx)
    assert summary["readable"] == 12 and summary["missing_captions"] == 4
    report = json.loads(ctx.run.scan_report_file.read_text(encoding="utf-8"))
    assert sorted(Path(p).name for p in report["missing_captions"]) == [f"img{i}.png" for i in range(4)]
    warnings = warned(ctx)
    for i in range(4):
        path = dataset / "3_cats" / f"img{i}.txt"
        assert warnings[str(path)] == [f"skipped: {reason(path)}"]


def clean(folder: Path, ctx, **values) -> dict:
    return clean_run(CleanConfig(train_data_dir=[str(folder)], **values), ctx)


@NO_HANG
def test_clean_reports_them_and_leaves_them_alone(dataset, ctx):
    folder = dataset / "3_cats"
    (folder / "img5.txt").write_text("cat_5,  cat_5")
    result = clean(dataset, ctx)
    assert result["files"] == 8 and result["changed"] == 1 and read_caption(folder / "img5.txt") == "cat 5"
    assert (folder / "img0.txt").is_dir() and stat.S_ISFIFO(os.stat(folder / "img1.txt").st_mode)
    assert os.readlink(folder / "img2.txt") == "img2.txt" and os.readlink(folder / "img3.txt") == "no such file.txt"
    warnings = warned(ctx)
    assert all(warnings[str(folder / f"img{i}.txt")] == [f"skipped: {reason(folder / f'img{i}.txt')}"]
               for i in range(4))


@NO_HANG
def test_undo_leaves_a_caption_that_became_a_fifo_alone_and_restores_the_rest(small_dataset, ctx):
    folder = small_dataset / "3_cats"
    for i in range(3):
        (folder / f"img{i}.txt").write_text(f"cat_{i}")
    snapshot = clean(small_dataset, ctx)["snapshot"]
    make_unusable(folder / "img0.txt", "fifo")
    result = undo(snapshot, ctx)
    assert result["restored"] == 2 and result["left_alone"] == [str(folder / "img0.txt")]
    assert [read_caption(folder / f"img{i}.txt") for i in (1, 2)] == ["cat_1", "cat_2"]
    assert stat.S_ISFIFO(os.stat(folder / "img0.txt").st_mode)
    assert warned(ctx)[str(folder / "img0.txt")] == [f"skipped: {reason(folder / 'img0.txt')}"]


def test_a_symlinked_caption_is_read_but_never_written_so_clean_and_undo_keep_the_link(small_dataset, tmp_path, ctx):
    folder = small_dataset / "3_cats"
    shared = tmp_path / "shared captions" / "cat.txt"
    shared.parent.mkdir()
    shared.write_text("long_hair,  long_hair")
    (folder / "img0.txt").unlink()
    os.symlink(shared, folder / "img0.txt")
    (folder / "img1.txt").write_text("blue_eyes")
    assert read_caption(folder / "img0.txt") == "long_hair,  long_hair"  # reading goes through the link

    result = clean(small_dataset, ctx)
    assert result["changed"] == 1 and read_caption(folder / "img1.txt") == "blue eyes"
    assert os.readlink(folder / "img0.txt") == str(shared) and shared.read_text() == "long_hair,  long_hair"
    link_reason = check_caption_path(folder / "img0.txt", writing=True).problem
    assert "symbolic link" in link_reason and warned(ctx)[str(folder / "img0.txt")] == [f"skipped: {link_reason}"]

    assert undo(result["snapshot"])["restored"] == 1
    assert read_caption(folder / "img1.txt") == "blue_eyes"
    assert os.readlink(folder / "img0.txt") == str(shared) and shared.read_text() == "long_hair,  long_hair"
    with pytest.raises(CaptionFileError, match="symbolic link"):
        save_caption(folder / "img0.txt", "edited")
    assert (folder / "img0.txt").is_symlink()


def kill_mid_write(path: Path) -> None:
    """Write `path` the studio's way in another process that is killed (SIGKILL) before the rename."""
    code = ("import os, signal, sys\nfrom core.fsutil import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_bytes(b'half')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, check=False)


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("changes", [True, False])
def test_the_next_clean_removes_what_a_killed_write_left(small_dataset, ctx, changes):
    folder = small_dataset / "3_cats"
    kill_mid_write(folder / "img3.txt")
    (folder / ".notes.tmp").write_text("not ours")
    (folder / ".img3.txt.keep").write_text("not ours either")
    assert len(hidden(folder)) == 3 and read_caption(folder / "img3.txt") == "cat 3"
    if changes:
        (folder / "img4.txt").write_text("cat_4")
    clean(small_dataset, ctx)
    assert hidden(folder) == [".img3.txt.keep", ".notes.tmp"]


@NO_HANG
def test_tag_stays_inside_the_dataset_and_leaves_unusable_and_linked_captions_alone(tmp_path):
    model = build_model(tmp_path / "tagger")
    data, outside = tmp_path / "data", tmp_path / "elsewhere"
    solid(data / "red.png", RED)
    solid(outside / "blue.png", BLUE)
    os.symlink(outside, data / "linked")
    for name in ("fifo", "loop", "linked caption"):
        solid(data / f"{name}.png", RED)
    make_unusable(data / "fifo.txt", "fifo")
    make_unusable(data / "loop.txt", "loop")
    (outside / "shared.txt").write_text("shared")
    os.symlink(outside / "shared.txt", data / "linked caption.txt")
    for mode in ("skip", "overwrite"):
        result = tag_run(make_cfg(data, model, existing_captions=mode), tmp_path, f"tag-{mode}")
        assert result["written"] == (1 if mode == "skip" else 0) and result["failed"] == (2 if mode == "skip" else 3)
    assert sorted(p.name for p in outside.iterdir()) == ["blue.png", "shared.txt"]
    assert (outside / "shared.txt").read_text() == "shared" and (data / "linked caption.txt").is_symlink()
    assert read_caption(data / "red.txt") != "" and stat.S_ISFIFO(os.stat(data / "fifo.txt").st_mode)
    events = [json.loads(line) for line in (tmp_path / "tag-overwrite" / "events.jsonl").read_text().splitlines()]
    messages = {e.get("path"): e["message"] for e in events if e["event"] == "warning"}
    assert messages[str(data / "linked")] == f"skipped: {OUTSIDE_LINK}"
    assert messages[str(data / "fifo.png")].endswith(reason(data / "fifo.txt"))
    assert messages[str(data / "linked caption.png")].endswith(
        check_caption_path(data / "linked caption.txt", writing=True).problem)


def test_a_link_to_a_folder_inside_the_dataset_is_still_followed(tmp_path):
    from core.dataset.discovery import find_images

    data = tmp_path / "data"
    (data / "real").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(data / "real" / "a.png")
    os.symlink(data / "real", data / "again")
    os.symlink(tmp_path, data / "up")
    reported = []
    found = find_images([data], on_error=lambda path, why: reported.append((path.name, why)),
                        outside_links=False)
    assert [image.path.name for image in found] == ["a.png"] and reported == [("up", OUTSIDE_LINK)]


def test_the_dataset_tab_says_why_a_linked_caption_is_not_saved(tmp_path):
    from tabs.dataset import save_selected

    (tmp_path / "real.txt").write_text("kept")
    (tmp_path / "a.txt").symlink_to(tmp_path / "real.txt")
    _, message = save_selected({"caption_path": str(tmp_path / "a.txt")}, "new text")
    assert message.startswith("Not saved: ") and "link" in message
    assert (tmp_path / "a.txt").is_symlink() and (tmp_path / "real.txt").read_text() == "kept"
