"""The caption-cleaning job: snapshot before writing, undo byte for byte, dry run, cleaning twice equals
cleaning once, encodings, a bulk edit of one tag's captions, and kill -9 in the middle of Apply."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from core.captions.cleaning import list_snapshots, run, snapshots_root, take_snapshot, undo
from core.config import CleanConfig, validate
from core.jobs.protocol import JobContext
from core.jobs.run_folder import RunFolder

REPO = Path(__file__).resolve().parent.parent
CAPTIONS = {
    "a.png": "long_hair,  blue_eyes, long_hair, ^_^".encode(),
    "b.png": "\ufeffsmile, open_mouth".encode("utf-8"),            # UTF-8 with a BOM
    "c.png": "caf\xe9, red_dress".encode("cp1252"),                # not UTF-8
    "d.png": b"already clean, nothing to do",
    "sub/e f.png": "solo, 1girl, solo".encode(),
}


@pytest.fixture
def dataset(tmp_path) -> Path:
    folder = tmp_path / "data"
    for name, data in CAPTIONS.items():
        image = folder / name
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(image)
        image.with_suffix(".txt").write_bytes(data)
    return folder


def caption_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.txt"))}


def clean(folder: Path, tmp_path: Path, **values) -> dict:
    cfg = validate(CleanConfig, {"train_data_dir": [str(folder)], **values}, "test")
    with JobContext(tmp_path / f"run-{time.time_ns()}", echo=False) as ctx:
        return run(cfg, ctx)


def test_apply_writes_clean_utf8_after_a_snapshot_and_undo_restores_bytes(dataset, tmp_path):
    before = caption_bytes(dataset)
    result = clean(dataset, tmp_path)
    assert result["files"] == 5 and result["changed"] == 4
    assert sorted(Path(p).name for p in result["not_utf8"]) == ["b.txt", "c.txt"]
    assert (dataset / "a.txt").read_text() == "long hair, blue eyes, ^_^"
    assert (dataset / "b.txt").read_bytes() == b"smile, open mouth"
    assert (dataset / "c.txt").read_bytes() == "café, red dress".encode()
    assert (dataset / "d.txt").read_bytes() == before["d.txt"]
    snapshot = list_snapshots()[0]
    assert snapshot.id == result["snapshot"] and snapshot.files == 4

    assert undo(snapshot.id)["restored"] == 4
    assert caption_bytes(dataset) == before
    assert clean(dataset, tmp_path, rules=["lowercase"])["changed"] == 0  # nothing to lowercase


def test_undo_can_be_undone(dataset, tmp_path):
    result = clean(dataset, tmp_path)
    cleaned = caption_bytes(dataset)
    undone = undo(result["snapshot"])
    assert caption_bytes(dataset) != cleaned
    undo(undone["undo_snapshot"])
    assert caption_bytes(dataset) == cleaned


def test_cleaning_twice_equals_cleaning_once(dataset, tmp_path):
    clean(dataset, tmp_path)
    once = caption_bytes(dataset)
    assert clean(dataset, tmp_path)["changed"] == 0
    assert caption_bytes(dataset) == once


def test_dry_run_writes_nothing(dataset, tmp_path):
    before = caption_bytes(dataset)
    result = clean(dataset, tmp_path, dry_run=True)
    assert result["would_change"] == 4 and result["changed"] == 0 and "snapshot" not in result
    assert caption_bytes(dataset) == before and list_snapshots() == []


def test_bulk_edit_only_touches_captions_with_the_tag(dataset, tmp_path):
    before = caption_bytes(dataset)
    result = clean(dataset, tmp_path, rules=["replace: solo -> alone"], only_with_tag="1GIRL")
    assert result["changed"] == 1
    assert (dataset / "sub" / "e f.txt").read_text() == "alone, 1girl, alone"
    assert {k: v for k, v in caption_bytes(dataset).items() if k != "sub/e f.txt"} == \
        {k: v for k, v in before.items() if k != "sub/e f.txt"}


def test_bad_rules_are_a_config_error(dataset):
    from core.config import ConfigError

    with pytest.raises(ConfigError, match="rules"):
        validate(CleanConfig, {"train_data_dir": [str(dataset)], "rules": ["no_such_rule"]}, "test")


def test_a_snapshot_interrupted_before_its_manifest_is_ignored_and_changed_nothing(dataset, monkeypatch):
    calls = []

    def failing_fsync(fd):
        calls.append(fd)
        if len(calls) == 3:
            raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        take_snapshot(sorted(dataset.rglob("*.txt")), "test", [])
    assert list_snapshots() == []
    assert any(snapshots_root().iterdir())  # the partial folder is there, without a manifest


def test_kill_during_apply_leaves_every_file_old_or_new_and_the_snapshot_restores_them(tmp_path, studio_home):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(1000):
        (folder / f"{i:05d}.png").touch()  # listed by name; cleaning never opens the images
        (folder / f"{i:05d}.txt").write_text(f"tag_{i}, blue_sky,  tag_{i}")
    old = caption_bytes(folder)
    new = {k: f"tag {int(k[:5])}, blue sky".encode() for k in old}
    config = tmp_path / "clean.json"
    config.write_text(json.dumps({"job": "clean", "values": {"train_data_dir": [str(folder)]}}))
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "core", "clean", "--config", str(config), "--run-dir",
                             str(run_dir)], cwd=REPO, env={**os.environ, "STUDIO_HOME": str(studio_home)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        if RunFolder(run_dir).read_events("progress"):
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    now = caption_bytes(folder)
    assert all(now[k] in (old[k], new[k]) for k in old)
    assert any(now[k] == new[k] for k in old) and any(now[k] == old[k] for k in old)  # killed midway
    snapshot = list_snapshots()[0]
    undo(snapshot.id)
    assert caption_bytes(folder) == old
