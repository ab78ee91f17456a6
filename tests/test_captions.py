"""Caption file IO: encodings, atomic save with backups, byte-exact restore and its undo."""
from __future__ import annotations

import json
import os

import pytest

from core.captions.files import (
    backups_root,
    decode_caption,
    list_caption_backups,
    read_caption,
    read_caption_detailed,
    restore_caption,
    save_caption,
)


@pytest.fixture
def studio(tmp_path, monkeypatch):
    home = tmp_path / "studio"
    monkeypatch.setenv("STUDIO_HOME", str(home))
    return home


@pytest.fixture
def dataset(tmp_path):
    folder = tmp_path / "dataset"
    folder.mkdir()
    return folder


@pytest.mark.parametrize("data,text,encoding", [
    ("a cat, sitting".encode("utf-8"), "a cat, sitting", "utf-8"),
    ("\ufeffcaf\u00e9, \u65e5\u672c".encode("utf-8"), "caf\u00e9, \u65e5\u672c", "utf-8-sig"),
    ("caf\u00e9 \U0001f431".encode("utf-16"), "caf\u00e9 \U0001f431", "utf-16"),
    (b"\xfe\xff" + "caf\u00e9".encode("utf-16-be"), "caf\u00e9", "utf-16"),
    ("x\u00e9".encode("utf-32"), "x\u00e9", "utf-32"),
    (b"na\xefve \x93quoted\x94", "na\u00efve \u201cquoted\u201d", "cp1252"),
    (b"bad \x81 byte \xe9", "bad \x81 byte \u00e9", "latin-1"),
])
def test_decode_caption_encodings(data, text, encoding):
    decoded = decode_caption(data)
    assert (decoded.text, decoded.encoding) == (text, encoding)
    assert (decoded.note == "") == (encoding == "utf-8")


def test_read_caption_files(dataset):
    path = dataset / "img.txt"
    assert read_caption_detailed(path) == ("", "", "no caption file yet")
    path.write_bytes(b"tag one, tag two\r\n")
    assert read_caption(path) == "tag one, tag two\r\n"
    path.write_bytes(b"\xe9t\xe9")
    text, encoding, note = read_caption_detailed(path)
    assert (text, encoding) == ("\u00e9t\u00e9", "cp1252") and "Windows-1252" in note


def _dataset_files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_save_keeps_byte_exact_backup_outside_dataset(studio, dataset):
    path = dataset / "img.txt"
    original = "\ufeffold caption".encode("utf-16")
    path.write_bytes(original)
    assert save_caption(path, "new caption, \u00e9") is True
    assert path.read_bytes() == "new caption, \u00e9".encode("utf-8")  # UTF-8, no BOM
    backups = list_caption_backups(path)
    assert len(backups) == 1 and backups[0].size == len(original) and not backups[0].absent
    assert backups[0].path.read_bytes() == original
    assert backups[0].preview == "old caption"
    assert backups_root() == studio / "backups"
    assert backups[0].path.is_relative_to(studio / "backups" / "captions")
    index = json.loads((backups[0].path.parent / "index.json").read_text(encoding="utf-8"))
    assert index == {"path": os.path.abspath(path)}
    assert _dataset_files(dataset) == ["img.txt"]


def test_restore_is_byte_exact_and_undoable(studio, dataset):
    path = dataset / "img.txt"
    original = b"first\r\nline \xe9 in cp1252"
    path.write_bytes(original)
    save_caption(path, "second")
    save_caption(path, "third")
    history = list_caption_backups(path)
    assert [b.preview for b in history] == ["second", "first\r\nline \u00e9 in cp1252"]
    assert history[0].time >= history[1].time and int(history[0].id) > int(history[1].id)
    restore_caption(path, history[-1].id)
    assert path.read_bytes() == original
    undo = list_caption_backups(path)[0]
    assert undo.preview == "third"
    restore_caption(path, undo.id)
    assert path.read_bytes() == b"third"
    assert _dataset_files(dataset) == ["img.txt"]


def test_new_caption_backs_up_absence_and_restore_deletes(studio, dataset):
    path = dataset / "img.txt"
    assert save_caption(path, "brand new") is True
    marker = list_caption_backups(path)[0]
    assert marker.absent and marker.size is None and marker.preview == ""
    restore_caption(path, marker.id)
    assert not path.exists()
    undo = list_caption_backups(path)[0]
    assert not undo.absent and undo.path.read_bytes() == b"brand new"
    restore_caption(path, undo.id)
    assert path.read_bytes() == b"brand new"


def test_identical_save_does_nothing(studio, dataset):
    path = dataset / "img.txt"
    utf16 = "same text".encode("utf-16")
    path.write_bytes(utf16)
    before = path.stat().st_mtime_ns
    assert save_caption(path, "same text") is False
    assert path.read_bytes() == utf16 and path.stat().st_mtime_ns == before
    assert list_caption_backups(path) == []
    absent = dataset / "none.txt"
    assert save_caption(absent, "") is False
    assert not absent.exists() and list_caption_backups(absent) == []


def test_restoring_what_is_already_there_adds_no_backup(studio, dataset):
    path = dataset / "img.txt"
    path.write_text("one", encoding="utf-8")
    save_caption(path, "two")
    save_caption(path, "one")
    first = list_caption_backups(path)[-1]
    restore_caption(path, first.id)
    assert len(list_caption_backups(path)) == 2 and path.read_text(encoding="utf-8") == "one"


def test_backups_are_per_file_and_unknown_id_fails(studio, dataset):
    a, b = dataset / "a.txt", dataset / "b.txt"
    save_caption(a, "for a")
    save_caption(b, "for b")
    save_caption(b, "for b again")
    assert len(list_caption_backups(a)) == 1 and len(list_caption_backups(b)) == 2
    assert list_caption_backups(dataset / "c.txt") == []
    with pytest.raises(KeyError):
        restore_caption(a, list_caption_backups(b)[0].id)


def test_rapid_saves_get_distinct_ordered_ids(studio, dataset):
    path = dataset / "img.txt"
    for i in range(20):
        save_caption(path, f"version {i}")
    history = list_caption_backups(path)
    assert len({b.id for b in history}) == 20
    assert [b.preview for b in history[:2]] == ["version 18", "version 17"]
    assert history[-1].absent


def test_atomic_write_keeps_permissions_of_the_file_it_replaces(tmp_path):
    import os
    import stat

    from core.fsutil import atomic_write_text

    path = tmp_path / "caption.txt"
    path.write_text("old")
    os.chmod(path, 0o640)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o640
    fresh = tmp_path / "fresh.txt"
    atomic_write_text(fresh, "x")
    assert stat.S_IMODE(fresh.stat().st_mode) & 0o044 == 0o044  # readable by others, unlike mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("existing, mode, expected", [
    (None, "skip", "a, b"),                       # no caption file: every mode writes
    (None, "append", "a, b"),
    ("old", "skip", None),
    ("old", "overwrite", "a, b"),
    ("b,  c ", "append", "b,  c, a"),              # the user's text is kept as it is; only new tags follow
    ("a, b", "append", None),                     # nothing new
    ("", "append", "a, b"),
])
def test_merge_caption_modes(existing, mode, expected):
    from core.captions.files import merge_caption

    assert merge_caption(existing, ["a", "b"], mode, ", ") == expected


def test_write_generated_caption_backs_up_what_it_replaces(tmp_path):
    from core.captions.files import list_caption_backups, write_generated_caption

    path = tmp_path / "img.txt"
    assert write_generated_caption(path, ["a dog on grass"], "skip", " ")
    assert not write_generated_caption(path, ["a cat"], "skip", " ")
    assert write_generated_caption(path, ["a cat"], "overwrite", " ")
    assert path.read_text() == "a cat"
    assert [b.preview for b in list_caption_backups(path)][:1] == ["a dog on grass"]
