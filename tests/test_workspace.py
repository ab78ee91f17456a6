"""The workspace (core/workspace.py): saved and restored with its recent values, a bad file kept aside;
the quick checks of its paths (core/workspace_checks.py) and their one-line answers."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from core import workspace
from core.workspace_checks import IMAGE_COUNT_CAP, check_dataset, check_model, check_output, count_images, facts


def test_a_missing_file_is_an_empty_workspace(studio_home):
    ws = workspace.load()
    assert ws.values() == {"dataset": [], "model": "", "output": ""} and not ws.problem


def test_the_workspace_is_saved_and_restored_with_its_recent_values(studio_home):
    ws = workspace.load()
    workspace.set_slot(ws, "dataset", '/data/a |  "/data/b"  \n\n/data/a', usable=True)
    workspace.set_slot(ws, "model", " /models/m.safetensors ", usable=True)
    workspace.set_slot(ws, "output", "/out/bad", usable=False)
    workspace.save(ws)
    again = workspace.load()
    assert again.values() == {"dataset": ["/data/a", "/data/b"], "model": "/models/m.safetensors",
                              "output": "/out/bad"}
    assert again.recent == {"dataset": ["/data/a | /data/b"], "model": ["/models/m.safetensors"], "output": []}
    assert json.loads((studio_home / "workspace.json").read_text())["model"] == "/models/m.safetensors"


def test_recent_values_are_most_recent_first_without_repeats_and_at_most_ten(studio_home):
    ws = workspace.Workspace()
    for i in range(12):
        workspace.set_slot(ws, "model", f"/m/{i}", usable=True)
    workspace.set_slot(ws, "model", "/m/5", usable=True)
    assert ws.recent["model"] == ["/m/5", "/m/11", "/m/10", "/m/9", "/m/8", "/m/7", "/m/6", "/m/4", "/m/3", "/m/2"]


def test_a_corrupt_file_gives_an_empty_workspace_and_is_kept_aside_on_the_next_save(studio_home):
    bad = studio_home / "workspace.json"
    bad.write_text('{"model": "/m", ')
    ws = workspace.load()
    assert ws.values() == {"dataset": [], "model": "", "output": ""}
    assert str(bad) in ws.problem
    assert bad.read_text() == '{"model": "/m", '  # loading never changes it
    workspace.set_slot(ws, "model", "/new", usable=True)
    workspace.save(ws)
    kept = list(studio_home.glob("workspace.json.bad-*"))
    assert len(kept) == 1 and kept[0].read_text() == '{"model": "/m", '
    assert workspace.load().model == "/new" and not workspace.load().problem


def test_a_file_of_the_wrong_shape_is_a_problem_too(studio_home):
    (studio_home / "workspace.json").write_text("[1, 2]")
    assert "expected a JSON object" in workspace.load().problem


def test_field_text_and_the_picker_start_folder(tmp_path):
    assert workspace.field_text(["/a", "/b"], one_per_line=True) == "/a\n/b"
    assert workspace.field_text(["/a", "/b"], one_per_line=False) == "/a"
    assert workspace.shorten_paths("not found: /x/y/z/m.ckpt", "/x/y/z/m.ckpt") == "not found: …/z/m.ckpt"
    assert workspace.line_text(["/a", "/b"]) == "/a | /b" and workspace.normalize("dataset", "/a | /b") == ["/a", "/b"]
    (tmp_path / "m.safetensors").write_bytes(b"x")
    assert workspace.start_folder(str(tmp_path / "m.safetensors")) == str(tmp_path)
    assert workspace.start_folder(str(tmp_path / "not" / "yet")) == str(tmp_path)
    assert workspace.start_folder("") == str(workspace.Path.home())
    assert workspace.parent_folder(str(tmp_path)) == str(tmp_path.parent)


# --- checks ------------------------------------------------------------------------------------------

def _images(folder, count):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (8, 8)).save(folder / f"img{i}.png")


def test_dataset_check_answers(tmp_path):
    missing = tmp_path / "missing"
    assert check_dataset([str(missing)]) == (False, f"not found: {missing}", None)
    (tmp_path / "file.png").write_bytes(b"x")
    found = check_dataset([str(tmp_path / "file.png")])
    assert not found.ok
    assert found.text == f"{tmp_path / 'file.png'} is a file, not a folder (a dataset is a folder of images)"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    assert check_dataset([str(tmp_path / "empty")]) == (False, f"no images found in {tmp_path / 'empty'}", None)
    _images(tmp_path / "data" / "3_x", 4)
    _images(tmp_path / "data" / ".hidden", 2)
    _images(tmp_path / "data", 1)
    assert check_dataset([str(tmp_path / "data")]) == (True, "5 images · repeats: 3_x ×3", None)
    _images(tmp_path / "more", 2)
    both = check_dataset([str(tmp_path / "data"), str(tmp_path / "more")])
    assert both.ok and both.text.startswith("7 images in 2 folders")
    assert check_dataset([str(tmp_path / "data"), str(missing)]).text == f"not found: {missing}"
    assert check_dataset([]) == (True, "", None)


def test_counting_stops_at_the_cap(tmp_path):
    _images(tmp_path / "big", 5)
    assert count_images(tmp_path / "big", cap=3)[0] == 3
    assert IMAGE_COUNT_CAP >= 1000


def test_model_check_answers(tmp_path, demo_kit):
    missing = tmp_path / "nope.safetensors"
    assert check_model(str(missing)) == (False, f"not found: {missing}", None)
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"not a model at all")
    found = check_model(str(fake))
    assert not found.ok and found.text.startswith(f"{fake} is not a Stable Diffusion checkpoint: ")
    photo = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(photo)
    assert check_model(str(photo)).text.startswith(f"{photo} is not a Stable Diffusion checkpoint: expected a ")
    found = check_model(str(tmp_path))
    assert not found.ok and "without model_index.json" in found.text

    kit = demo_kit("sd1", 4, 0)
    folder, single = check_model(str(kit / "model")), check_model(str(kit / "model.safetensors"))
    assert folder.ok and folder.text.startswith("SD 1.x · diffusers folder · ") and folder.model_arch == "sd1"
    assert single.ok and single.text.startswith("SD 1.x · single file · ") and "MiB" in single.text
    assert facts(single) == {"model_arch": "sd1"} and facts(found) == {"model_arch": None}


def test_a_ckpt_is_noted_as_read_weights_only(tmp_path, demo_kit):
    import torch
    from safetensors.torch import load_file

    ckpt = tmp_path / "m.ckpt"
    torch.save({"state_dict": load_file(demo_kit("sd1", 4, 0) / "model.safetensors")}, ckpt)
    found = check_model(str(ckpt))
    assert found.ok and found.text.startswith("SD 1.x · single file") and "read weights-only" in found.text


def test_output_check_answers(tmp_path):
    assert check_output(str(tmp_path)).text.startswith("writable · ")
    assert check_output(str(tmp_path / "new" / "out")).text.startswith("will be created · ")
    (tmp_path / "f").write_text("x")
    assert check_output(str(tmp_path / "f")) == (False, f"{tmp_path / 'f'} is a file: choose a folder", None)
    assert not check_output(str(tmp_path / "f" / "out")).ok
    assert check_output("") == (True, "", None)


@pytest.mark.skipif(sys.platform == "win32", reason="permissions")
def test_output_check_refuses_a_folder_it_cannot_write(tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    (tmp_path / "ro").mkdir(mode=0o555)
    assert not check_output(str(tmp_path / "ro" / "out")).ok


def test_checking_a_workspace_does_not_import_torch(demo_kit):
    """The GUI checks the workspace on every page load: a .safetensors file and a diffusers folder are recognised
    from their header and configs alone."""
    kit = demo_kit("sd1", 4, 0)
    code = ("import sys; from core.workspace_checks import check_model as c; "
            f"print(c({str(kit / 'model.safetensors')!r}).model_arch, c({str(kit / 'model')!r}).model_arch, "
            "sorted(m for m in ('torch', 'diffusers', 'transformers', 'safetensors') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout == "sd1 sd1 []\n"


def test_a_safetensors_file_that_is_not_one_is_named(tmp_path):
    (tmp_path / "fake.safetensors").write_bytes(b"\xff" * 64)
    found = check_model(str(tmp_path / "fake.safetensors"))
    assert not found.ok and "is not a Stable Diffusion checkpoint" in found.text and "damaged or not a model" in found.text
