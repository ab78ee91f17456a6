"""The WD14 tagger job on a tiny ONNX model in the SmilingWolf layout, built here: preprocessing against
a reference written out by hand, every tag option, caption modes, batching, fixed-batch models, bad
images, stop and continue, the command line and the GUI preview."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from core.captions.files import list_caption_backups, read_caption, save_caption
from core.captions.taggers.wd14 import TagRules, load_tagger, model_input, predict, preprocess, preview_tags, run
from core.captions.tags import KAOMOJIS, tag_key
from core.config import TagConfig
from core.jobs.protocol import JobContext
from core.jobs.run_folder import RunFolder

REPO = Path(__file__).resolve().parent.parent
SIDE = 32
# name, category, weights on the mean B, G, R (0..1), bias: score = sigmoid(weights . mean + bias)
TAGS = [
    ("general", 9, (0, 6, 0), -3), ("sensitive", 9, (0, 0, 8), -4), ("explicit", 9, (4, 0, 0), -2),
    ("red_theme", 0, (0, 0, 8), -4), ("blue_theme", 0, (8, 0, 0), -4), ("green_theme", 0, (0, 8, 0), -4),
    ("^_^", 0, (0, 0, 3), -1), ("long_hair", 0, (0, 0, 0), 0.2),
    ("hatsune_miku", 4, (0, 10, 0), -5), ("kiryu_coco", 4, (0, 0, 3), -1), ("alice_(wonderland)", 4, (0, 0, 0), 1),
]
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
# What the defaults write (general 0.35, character 0.85, character first, underscores removed):
# red: kiryu_coco .881, red_theme .982, ^_^ .881, long_hair .55 (alice .731 is under 0.85)
EXPECTED = {RED: "kiryu coco, red theme, ^_^, long hair", GREEN: "hatsune miku, green theme, long hair",
            BLUE: "blue theme, long hair"}


def build_model(folder: Path, batch: str | int = "N") -> Path:
    """model.onnx: mean colour over H, W (BGR, scaled to 0..1) -> MatMul -> Add -> Sigmoid; selected_tags.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = np.array([t[2] for t in TAGS], np.float32).T
    bias = np.array([t[3] for t in TAGS], np.float32)
    nodes = [helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1, 2], keepdims=0),
             helper.make_node("Mul", ["mean", "scale"], ["scaled"]),
             helper.make_node("MatMul", ["scaled", "weights"], ["logits0"]),
             helper.make_node("Add", ["logits0", "bias"], ["logits"]),
             helper.make_node("Sigmoid", ["logits"], ["output"])]
    initializers = [helper.make_tensor("scale", TensorProto.FLOAT, [], [1 / 255]),
                    helper.make_tensor("weights", TensorProto.FLOAT, weights.shape, weights.flatten()),
                    helper.make_tensor("bias", TensorProto.FLOAT, bias.shape, bias)]
    graph = helper.make_graph(
        nodes, "tiny-wd14", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, SIDE, SIDE, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, len(TAGS)])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, folder / "model.onnx")
    rows = ["tag_id,name,category,count"] + [f"{i},{name},{cat},{1000 - i}" for i, (name, cat, _, _) in enumerate(TAGS)]
    (folder / "selected_tags.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("wd14") / "tagger")


def solid(path: Path, colour, size=(SIDE, SIDE)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


@pytest.fixture
def dataset(tmp_path):
    """Eight images: the three colours square at two sizes, a wide red one, a transparent one in a subfolder."""
    folder = tmp_path / "data"
    for i, colour in enumerate((RED, GREEN, BLUE)):
        solid(folder / f"c{i}_small.png", colour)
        solid(folder / f"c{i}_large.png", colour, (100, 100))
    solid(folder / "wide.png", RED, (64, 20))
    rgba = Image.new("RGBA", (40, 40), (0, 0, 255, 0))  # transparent blue, a red band on top
    rgba.paste((255, 0, 0, 255), (0, 0, 40, 10))
    (folder / "sub").mkdir()
    rgba.save(folder / "sub" / "half.png")
    return folder


def make_cfg(dataset: Path, model: Path, **values) -> TagConfig:
    return TagConfig(**{"train_data_dir": [str(dataset)], "model_dir": str(model), "batch_size": 3,
                        "max_data_loader_n_workers": 2, **values})


def tag_run(cfg: TagConfig, tmp_path: Path, name: str = "run", context=JobContext) -> dict:
    with context(tmp_path / name, echo=False) as ctx:
        return run(cfg, ctx)


def captions(folder: Path, extension: str = ".txt") -> dict[str, str]:
    return {str(p.relative_to(folder)): read_caption(p) for p in sorted(folder.rglob(f"*{extension}"))}


def reference(image: Image.Image, size: int) -> np.ndarray:
    """SmilingWolf's preparation, step by step: alpha on white, centred white padding, bicubic, BGR."""
    canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
    canvas.alpha_composite(image.convert("RGBA"))
    rgb = np.asarray(canvas.convert("RGB"))
    height, width = rgb.shape[:2]
    side = max(height, width)
    padded = np.full((side, side, 3), 255, np.uint8)
    top, left = (side - height) // 2, (side - width) // 2
    padded[top:top + height, left:left + width] = rgb
    resized = Image.fromarray(padded).resize((size, size), Image.Resampling.BICUBIC) if side != size else padded
    return np.asarray(resized, np.float32)[:, :, ::-1]


@pytest.mark.parametrize("shape", [(40, 24), (24, 40), (32, 32), (7, 50), (300, 200)])
def test_preprocess_equals_the_reference(shape, tmp_path):
    rng = np.random.default_rng(sum(shape))
    pixels = rng.integers(0, 256, (shape[1], shape[0], 4), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGBA")
    expected = reference(image, SIDE)
    got = preprocess(image, SIDE)
    assert got.dtype == np.float32 and got.shape == (SIDE, SIDE, 3) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, expected)
    image.save(tmp_path / "rgba.png")  # the job's path: the file through core.dataset.images.open_image
    np.testing.assert_array_equal(model_input(tmp_path / "rgba.png", SIDE, 10**8), expected)


def test_a_strip_whose_square_would_be_a_bomb_is_shrunk_before_padding(tmp_path):
    """A 322-byte 40000x2 PNG padded to its square would take 1.6 Gpx (about 6 GB); it is shrunk first."""
    import tracemalloc

    Image.new("RGB", (40000, 2), (200, 100, 0)).save(tmp_path / "strip.png")
    tracemalloc.start()
    out = model_input(tmp_path / "strip.png", SIDE, 10**7)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out.shape == (SIDE, SIDE, 3) and peak < 50 * 2**20
    strip_rows = [row for row in range(SIDE) if out[row, SIDE // 2].tolist() == [0.0, 100.0, 200.0]]
    assert strip_rows and len(strip_rows) <= 2 and (out[0] == 255).all()  # a thin strip, centred, on white


def test_preprocess_composites_on_white_pads_with_white_and_swaps_to_bgr():
    image = Image.new("RGBA", (SIDE, SIDE // 2), (200, 100, 0, 255))
    image.paste((0, 0, 0, 0), (0, 0, 4, 16))  # fully transparent black -> white
    image.paste((0, 0, 0, 128), (4, 0, 8, 16))  # half transparent black -> grey
    out = preprocess(image, SIDE)
    assert (out[:8] == 255).all() and (out[24:] == 255).all()  # padding above and below, image centred
    assert out[8:24, 10:].tolist() == [[[0.0, 100.0, 200.0]] * 22] * 16  # BGR
    assert (out[8:24, :4] == 255).all() and np.allclose(out[8:24, 4:8], 127, atol=1)


def rules_for(model_dir: Path, **values) -> TagRules:
    return TagRules.build(make_cfg(model_dir, model_dir, **values), load_tagger(str(model_dir)))


def scores_of(model_dir: Path, colour) -> np.ndarray:
    image = preprocess(Image.new("RGB", (SIDE, SIDE), colour), SIDE)
    return predict(load_tagger(str(model_dir)), [image])[0]


def test_scores_are_the_models_sigmoid_outputs(model_dir):
    scores = scores_of(model_dir, RED)
    expected = 1 / (1 + np.exp(-np.array([np.dot(w, (0, 0, 1)) + b for _, _, w, b in TAGS])))
    np.testing.assert_allclose(scores, expected, rtol=1e-5)


@pytest.mark.parametrize("values, colour, tags", [
    ({}, RED, ["kiryu coco", "red theme", "^_^", "long hair"]),
    ({"general_threshold": 0.9}, RED, ["kiryu coco", "red theme"]),
    ({"general_threshold": 0.6, "character_threshold": 0.7}, RED, ["kiryu coco", "alice (wonderland)", "red theme",
                                                                    "^_^"]),
    ({"character_threshold": 0.95}, RED, ["red theme", "^_^", "long hair"]),
    ({"use_rating_tags": True}, RED, ["sensitive", "kiryu coco", "red theme", "^_^", "long hair"]),
    # white: every rating scores high (general .953, sensitive .982, explicit .881): only the most probable
    ({"use_rating_tags": True, "general_threshold": 0.9}, WHITE,
     ["sensitive", "hatsune miku", "kiryu coco", "red theme", "blue theme", "green theme"]),
    ({"character_tags_first": False}, RED, ["red theme", "^_^", "long hair", "kiryu coco"]),
    ({"remove_underscore": False}, RED, ["kiryu_coco", "red_theme", "^_^", "long_hair"]),
    ({"undesired_tags": ["red_theme", "long hair", "sensitive"], "use_rating_tags": True}, RED, ["kiryu coco", "^_^"]),
    ({"undesired_tags": ["red theme"], "always_first_tags": ["long hair"], "remove_underscore": False}, RED,
     ["long_hair", "kiryu_coco", "^_^"]),
    ({"tag_replacement": ["red theme,crimson_red"], "remove_underscore": False}, RED,
     ["kiryu_coco", "crimson_red", "^_^", "long_hair"]),
    ({"always_first_tags": ["long_hair", "not present", "red theme"], "use_rating_tags": True}, RED,
     ["long hair", "red theme", "sensitive", "kiryu coco", "^_^"]),
    ({"tag_replacement": ["red_theme,crimson", "^_^,", "long hair,long\\, flowing hair"]}, RED,
     ["kiryu coco", "crimson", "long, flowing hair"]),
    # user lists match either the model's or the replaced spelling
    ({"tag_replacement": ["red theme,crimson"], "always_first_tags": ["long hair", "red_theme"],
      "undesired_tags": ["crimson"]}, RED, ["long hair", "kiryu coco", "^_^"]),
    ({"tag_replacement": ["red theme,long hair"]}, RED, ["kiryu coco", "long hair", "^_^"]),  # no duplicate
])
def test_tag_options(model_dir, values, colour, tags):
    assert rules_for(model_dir, **values).select(scores_of(model_dir, colour)) == tags


def test_emoticons_keep_their_underscores():
    assert {"^_^", ">_<", "0_0", "o_o", "||_||", "(o)_(o)", "<o>_<o>", "0_o"} <= KAOMOJIS
    assert [tag_key(t) for t in ("^_^", "o_o", "2b_(nier:automata)", "x-ray_(pokemon)")] == \
        ["^_^", "o_o", "2b (nier:automata)", "x-ray (pokemon)"]


def test_a_replacement_that_is_not_a_pair_is_a_clear_error(model_dir):
    for item in ("just one tag", "a,b,c"):
        with pytest.raises(ValueError, match="old,new"):
            rules_for(model_dir, tag_replacement=[item])


def test_job_writes_tags_with_the_separator_and_extension(dataset, model_dir, tmp_path):
    result = tag_run(make_cfg(dataset, model_dir, caption_separator=" | ", caption_extension=".caption"), tmp_path)
    assert result["complete"] and (result["images"], result["written"], result["failed"]) == (8, 8, 0)
    assert result["failed_paths"] == [] and result["seconds"] > 0
    got = captions(dataset, ".caption")
    for i, colour in enumerate((RED, GREEN, BLUE)):
        for size in ("small", "large"):
            assert got[f"c{i}_{size}.caption"] == EXPECTED[colour].replace(", ", " | ")
    assert "blue theme" in got["wide.caption"]  # red and white padding: B = G = 0.69, R = 1
    assert "green theme" in got["sub/half.caption"]  # transparent pixels are white, not blue
    assert not list(dataset.rglob("*.txt"))
    progress = RunFolder(tmp_path / "run").read_events("progress")
    assert progress[-1] == {**progress[-1], "step": 8, "total": 8} and len(progress) == 9  # start + per image


def test_existing_caption_modes(dataset, model_dir, tmp_path):
    red = dataset / "c0_small.txt"
    save_caption(red, "my trigger, red theme")
    (dataset / "c1_small.png").write_bytes(b"")  # with skip, a captioned image is not even read
    save_caption(dataset / "c1_small.txt", "kept")

    skip = tag_run(make_cfg(dataset, model_dir), tmp_path, "skip")
    assert (skip["skipped"], skip["written"], skip["failed"]) == (2, 6, 0)
    assert read_caption(red) == "my trigger, red theme" and read_caption(dataset / "c1_small.txt") == "kept"

    solid(dataset / "c1_small.png", GREEN)
    append = tag_run(make_cfg(dataset, model_dir, existing_captions="append"), tmp_path, "append")
    assert read_caption(red) == "my trigger, red theme, kiryu coco, ^_^, long hair"
    assert read_caption(dataset / "c1_small.txt") == "kept, " + EXPECTED[GREEN]
    assert (append["written"], append["unchanged"], append["skipped"]) == (2, 6, 0)
    again = tag_run(make_cfg(dataset, model_dir, existing_captions="append"), tmp_path, "again")
    assert (again["written"], again["unchanged"]) == (0, 8)
    assert read_caption(red) == "my trigger, red theme, kiryu coco, ^_^, long hair"

    overwrite = tag_run(make_cfg(dataset, model_dir, existing_captions="overwrite"), tmp_path, "overwrite")
    assert (overwrite["written"], overwrite["unchanged"]) == (2, 6)
    assert read_caption(red) == EXPECTED[RED]
    assert [b.preview for b in list_caption_backups(red)][:2] == ["my trigger, red theme, kiryu coco, ^_^, long hair",
                                                                   "my trigger, red theme"]


def test_batch_size_does_not_change_tags(dataset, model_dir, tmp_path):
    tag_run(make_cfg(dataset, model_dir, batch_size=1, max_data_loader_n_workers=0), tmp_path, "one")
    single = captions(dataset)
    tag_run(make_cfg(dataset, model_dir, batch_size=5, existing_captions="overwrite"), tmp_path, "five")
    assert captions(dataset) == single and len(single) == 8


@pytest.mark.parametrize("fixed", [1, 3])
def test_a_fixed_batch_model_runs_with_its_own_batch_size(dataset, model_dir, tmp_path, fixed):
    tag_run(make_cfg(dataset, model_dir), tmp_path, "dynamic")
    expected = captions(dataset)
    fixed_dir = build_model(tmp_path / f"fixed{fixed}", batch=fixed)
    result = tag_run(make_cfg(dataset, fixed_dir, batch_size=8, existing_captions="overwrite"), tmp_path, "fixed")
    assert result["complete"] and result["failed"] == 0 and captions(dataset) == expected
    assert f"batch size is fixed to {fixed}" in (tmp_path / "fixed" / "log.txt").read_text(encoding="utf-8")


def test_bad_images_are_reported_and_the_rest_tagged(dataset, model_dir, tmp_path):
    data = (dataset / "c0_large.png").read_bytes()
    (dataset / "c0_large.png").write_bytes(data[: len(data) // 2])
    (dataset / "empty.png").write_bytes(b"")
    result = tag_run(make_cfg(dataset, model_dir), tmp_path)
    assert result["complete"] and (result["written"], result["failed"]) == (7, 2)
    assert sorted(result["failed_paths"]) == sorted(str(dataset / n) for n in ("c0_large.png", "empty.png"))
    assert set(captions(dataset)) == {"c0_small.txt", "c1_small.txt", "c1_large.txt", "c2_small.txt",
                                      "c2_large.txt", "wide.txt", "sub/half.txt"}
    warned = {os.path.basename(e["path"]) for e in RunFolder(tmp_path / "run").read_events("warning")}
    assert warned == {"c0_large.png", "empty.png"}


class StopAfterFirstBatch(JobContext):
    """A job context whose STOP file appears once the first batch is tagged."""

    def progress(self, step, total):
        super().progress(step, total)
        if step:
            self.run.request_stop()


def test_stop_between_batches_then_continue_with_skip(dataset, model_dir, tmp_path):
    cfg = make_cfg(dataset, model_dir, batch_size=3)
    first = tag_run(cfg, tmp_path, "stopped", StopAfterFirstBatch)
    assert not first["complete"] and first["written"] == 3 and len(captions(dataset)) == 3
    second = tag_run(cfg, tmp_path, "continued")
    assert second["complete"] and (second["skipped"], second["written"]) == (3, 5)
    assert len(list(dataset.rglob("*.txt"))) == 8
    assert all(len(set(text.split(", "))) == len(text.split(", ")) for text in captions(dataset).values())


def test_a_wrong_model_folder_is_a_clear_error(dataset, model_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "no-csv").mkdir()
    (tmp_path / "no-csv" / "model.onnx").write_bytes((model_dir / "model.onnx").read_bytes())
    cases = {"missing": "not found", "empty": "no model.onnx and no selected_tags.csv",
             "no-csv": "no selected_tags.csv"}
    for folder, message in cases.items():
        with pytest.raises(ValueError, match=message) as error:
            tag_run(make_cfg(dataset, tmp_path / folder), tmp_path, f"run-{folder}")
        assert str(tmp_path / folder) in str(error.value) and "SmilingWolf/wd-vit-tagger-v3" in str(error.value)
    short = build_model(tmp_path / "short")
    (short / "selected_tags.csv").write_text("tag_id,name,category,count\n0,solo,0,1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="gives 11 scores but selected_tags.csv lists 1"):
        load_tagger(str(short))
    assert captions(dataset) == {}


def test_sessions_are_cached_until_the_model_changes(tmp_path):
    folder = build_model(tmp_path / "tagger")
    first = load_tagger(str(folder))
    assert load_tagger(str(folder)) is first
    build_model(folder, batch=1)
    os.utime(folder / "model.onnx", ns=(1, 1))
    assert load_tagger(str(folder)).fixed_batch == 1


def test_preview_writes_nothing_and_matches_the_run(dataset, model_dir, tmp_path, studio_home):
    save_caption(dataset / "c0_small.txt", "kept")
    before = sorted(dataset.rglob("*")), sorted(studio_home.rglob("*"))
    (dataset / "c0_large.png").write_bytes(b"")  # unreadable: the preview takes the next image
    cfg = make_cfg(dataset, model_dir, caption_separator=" | ")
    pairs = preview_tags(cfg, limit=3)
    assert [Path(p).name for p, _ in pairs] == ["c1_large.png", "c1_small.png", "c2_large.png"]
    assert (sorted(dataset.rglob("*")), sorted(studio_home.rglob("*"))) == before
    solid(dataset / "c0_large.png", RED)
    tag_run(cfg, tmp_path)
    assert [read_caption(Path(p).with_suffix(".txt")) for p, _ in pairs] == [text for _, text in pairs]


def test_command_line_run(dataset, model_dir, tmp_path):
    run_dir = tmp_path / "cli-run"
    proc = subprocess.run(
        [sys.executable, "-m", "core", "tag", "--train_data_dir", str(dataset), "--model_dir", str(model_dir),
         "--run-dir", str(run_dir), "--undesired_tags", "long_hair", "--use_rating_tags", "--batch_size", "4"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
    assert (result["images"], result["written"], result["failed"]) == (8, 8, 0)
    assert read_caption(dataset / "c0_small.txt") == "sensitive, kiryu coco, red theme, ^_^"
    assert RunFolder(run_dir).read_events()[-1]["event"] == "done"
