import json

import pytest
from PIL import Image

from core.captions.stats import (
    caption_files,
    encoding_report,
    export_kohya_metadata,
    find_with_tag,
    tag_frequencies,
    top_tags,
)
from core.captions.tags import join_tags, split_tags


def image(path, caption=None, ext=".txt", data=None):
    """An 8x8 image at `path` and, when given, its caption (str as UTF-8, or raw bytes in `data`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "red").save(path)
    if caption is not None or data is not None:
        path.with_name(path.stem + ext).write_bytes(data if data is not None else caption.encode("utf-8"))
    return path


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "my data"
    image(root / "a.png", "1girl, solo, smile")
    image(root / "b photo.jpg", "1girl,  Solo ,smile, smile,, ")
    image(root / "café ☕.png", data="cat, café, ☕".encode("utf-8-sig"))
    image(root / "10_alice" / "c.png", data="alice, naïve".encode("cp1252"))
    image(root / "10_alice" / "deep" / "d.webp", data="alice, solo".encode("utf-16"))
    image(root / "no caption.png")
    (root / "orphan.txt").write_text("orphan, solo")  # a caption without an image is not a caption
    return root


def test_split_tags_strips_and_drops_empty_parts():
    assert split_tags(" a ,b,, ,c d ,") == ["a", "b", "c d"]
    assert split_tags("") == []


def test_join_tags_is_the_inverse_of_split_tags_on_clean_tags():
    assert join_tags([" a", "", "b ", "c d"]) == "a, b, c d"
    assert split_tags(join_tags(["a", "b"])) == ["a", "b"]


def test_caption_files_lists_images_with_a_caption_in_path_order(dataset):
    pairs = caption_files([dataset], True, ".txt")
    assert [(i.relative_to(dataset).as_posix(), c.relative_to(dataset).as_posix()) for i, c in pairs] == [
        ("10_alice/c.png", "10_alice/c.txt"),
        ("10_alice/deep/d.webp", "10_alice/deep/d.txt"),
        ("a.png", "a.txt"),
        ("b photo.jpg", "b photo.txt"),
        ("café ☕.png", "café ☕.txt"),
    ]
    assert [c.name for _, c in caption_files([dataset], False, ".txt")] == ["a.txt", "b photo.txt", "café ☕.txt"]
    assert caption_files([dataset], True, ".caption") == []


def test_tag_frequencies_count_each_tag_once_per_caption_most_frequent_first():
    captions = ["b, a, a, c", "a, b", "c,  b ", "Solo, solo", ""]
    assert tag_frequencies(captions) == [("b", 3), ("a", 2), ("c", 2), ("Solo", 1), ("solo", 1)]
    assert tag_frequencies([]) == []


def test_top_tags_reads_every_encoding(dataset):
    assert top_tags([dataset], True, ".txt", 100) == [
        ("1girl", 2), ("alice", 2), ("smile", 2), ("solo", 2),  # "Solo" in b is another tag
        ("Solo", 1), ("café", 1), ("cat", 1), ("naïve", 1), ("☕", 1)]
    assert top_tags([dataset], True, ".txt", 2) == [("1girl", 2), ("alice", 2)]
    assert top_tags([dataset], False, ".txt", 1) == [("1girl", 2)]
    with pytest.raises(ValueError, match="at least 1"):
        top_tags([dataset], True, ".txt", 0)


def test_find_with_tag_plain_is_exact_and_case_insensitive(dataset):
    def names(*args, **kwargs):
        return [p.name for p in find_with_tag([dataset], True, ".txt", *args, **kwargs)]

    assert names("solo") == ["d.txt", "a.txt", "b photo.txt"]
    assert names("  SOLO ") == ["d.txt", "a.txt", "b photo.txt"]
    assert names("NAÏVE") == ["c.txt"]
    assert names("café ☕") == []       # a tag is a whole comma part, not a substring
    assert names("sol") == []
    assert names("1girl, solo") == []  # one tag at a time
    with pytest.raises(ValueError, match="no tag"):
        names("  ")


def test_find_with_tag_regex_matches_whole_tags(dataset):
    def names(pattern):
        return [p.name for p in find_with_tag([dataset], True, ".txt", pattern, regex=True)]

    assert names("sol.") == ["d.txt", "a.txt", "b photo.txt"]
    assert names("SMI") == []  # must match the whole tag
    assert names("smi.*|cat") == ["a.txt", "b photo.txt", "café ☕.txt"]
    assert names(r"na\w+e") == ["c.txt"]
    with pytest.raises(ValueError, match="invalid regular expression"):
        names("(unclosed")


def test_encoding_report_names_files_that_are_not_plain_utf8(dataset):
    report = {path.relative_to(dataset).as_posix(): note for path, note in encoding_report([dataset], True, ".txt")}
    assert set(report) == {"café ☕.txt", "10_alice/c.txt", "10_alice/deep/d.txt"}
    assert "UTF-8 with a BOM" in report["café ☕.txt"]
    assert "Windows-1252" in report["10_alice/c.txt"]
    assert "UTF-16" in report["10_alice/deep/d.txt"]
    assert encoding_report([dataset], False, ".txt") == [(dataset / "café ☕.txt", report["café ☕.txt"])]


def test_export_writes_what_sd_scripts_merge_scripts_make(tmp_path):
    root = tmp_path / "train"
    image(root / "both.png", " a photo of Zoë \n", ext=".caption")
    (root / "both.txt").write_bytes("1girl, smile\r\n".encode("utf-16"))
    image(root / "only caption.jpg", "a dog", ext=".caption")
    image(root / "only_tags.webp", data=b"cat, caf\xe9")  # cp1252
    image(root / "empty.png", "")
    image(root / "neither.png")
    out = tmp_path / "out" / "meta_cap_dd.json"

    metadata = export_kohya_metadata([root], False, out)

    expected = {
        "both": {"caption": "a photo of Zoë", "tags": "1girl, smile"},
        "empty": {"tags": ""},
        "only caption": {"caption": "a dog"},
        "only_tags": {"tags": "cat, café"},
    }
    assert metadata == expected
    assert list(metadata) == list(expected)
    text = out.read_text(encoding="utf-8")
    assert text == json.dumps(expected, indent=2, ensure_ascii=False) + "\n"
    assert "Zoë" in text  # UTF-8, not \u escapes; sd-scripts reads the file as UTF-8
    assert [p.name for p in out.parent.iterdir()] == ["meta_cap_dd.json"]  # no temp file left


def test_export_full_path_keys_are_absolute_image_paths_in_repeat_folders(tmp_path):
    root = tmp_path / "data set"
    first = image(root / "5_alice" / "x.png", "alice smiling", ext=".caption")
    (root / "5_alice" / "x.txt").write_text("alice, smile", encoding="utf-8")
    second = image(root / "2_bob" / "sub" / "x.jpg", "bob, hat")
    out = tmp_path / "meta.json"

    metadata = export_kohya_metadata([str(root)], True, out, full_path=True)

    expected = {
        str(second): {"tags": "bob, hat"},
        str(first): {"caption": "alice smiling", "tags": "alice, smile"},
    }
    assert metadata == expected and list(metadata) == list(expected)
    assert json.loads(out.read_text(encoding="utf-8")) == expected
    assert first.is_absolute()


def test_export_same_extension_goes_to_tags_only(tmp_path):
    root = tmp_path / "train"
    image(root / "a.png", "1girl, solo")
    metadata = export_kohya_metadata([root], False, tmp_path / "m.json", ".txt", ".txt")
    assert metadata == {"a": {"tags": "1girl, solo"}}


def test_export_refuses_to_replace_an_existing_file_unless_asked(tmp_path):
    root = tmp_path / "train"
    image(root / "a.png", "solo")
    out = tmp_path / "meta.json"
    out.write_text("my own notes", encoding="utf-8")

    with pytest.raises(ValueError, match="meta.json exists"):
        export_kohya_metadata([root], False, out)
    assert out.read_text(encoding="utf-8") == "my own notes"

    assert export_kohya_metadata([root], False, out, overwrite=True) == {"a": {"tags": "solo"}}
    assert json.loads(out.read_text(encoding="utf-8")) == {"a": {"tags": "solo"}}


def test_export_refuses_duplicate_names_without_full_path(tmp_path):
    one = image(tmp_path / "one" / "same.png", "a")
    two = image(tmp_path / "two" / "same.jpg", "b")
    out = tmp_path / "meta.json"

    with pytest.raises(ValueError, match="full_path") as error:
        export_kohya_metadata([tmp_path / "one", tmp_path / "two"], False, out)
    assert str(one) in str(error.value) and str(two) in str(error.value)
    assert not out.exists()

    both = export_kohya_metadata([tmp_path / "one", tmp_path / "two"], False, out, full_path=True)
    assert both == {str(one): {"tags": "a"}, str(two): {"tags": "b"}}


def test_export_without_full_path_refuses_images_in_subfolders(tmp_path):
    root = tmp_path / "train"
    image(root / "top.png", "a")
    nested = image(root / "10_alice" / "c.png", "b")
    out = tmp_path / "meta.json"

    with pytest.raises(ValueError, match="subfolder") as error:
        export_kohya_metadata([root], True, out)
    assert str(nested) in str(error.value)
    assert not out.exists()

    assert export_kohya_metadata([root], False, out) == {"top": {"tags": "a"}}
    assert export_kohya_metadata([root / "10_alice"], True, out, overwrite=True) == {"c": {"tags": "b"}}


def test_export_with_nothing_to_export_writes_nothing(tmp_path):
    image(tmp_path / "train" / "a.png")
    out = tmp_path / "meta.json"
    with pytest.raises(ValueError, match="nothing to export"):
        export_kohya_metadata([tmp_path / "train"], False, out)
    assert not out.exists()
