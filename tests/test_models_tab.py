"""What the Models tab, the tagger offer and the workspace show of the model library and the catalogue
(core/models/library_listing.py), and progress in bytes (a download) in the job panels."""
from __future__ import annotations

import json
import time

import pytest
from safetensors.numpy import save_file
from test_model_library import SD1_TE, UNET_IN, VAE_KEYS

from core.fsutil import runs_root
from core.jobs.protocol import JobContext
from core.jobs.run_folder import RunFolder
from core.jobs.runner import format_duration, progress_text
from core.models import library_folders, library_listing
from core.models.catalogue import default_folder, get_entry
from core.models.library import Entry
from core.models.library_listing import (
    ALL,
    DOWNLOADED,
    PARTLY,
    WITH_PROBLEM,
    added_message,
    arch_label,
    base_model_choices,
    catalogue_rows,
    details,
    download_state,
    filter_choices,
    filtered,
    folder_rows,
    found_in,
    kind_label,
    metadata_rows,
    row,
    summary,
    tagger_problem,
    uses,
)

MiB = 2**20


def entry(name: str, kind: str, arch: str = "unknown", problem: str = "", **more) -> Entry:
    return Entry(f"/models/{name}", name, kind, arch, problem=problem, **more)


def write_checkpoint(path, metadata: dict | None = None):
    """A single file with SD 1.x's names (the scan reads names and shapes, never the weights)."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: np.zeros((2, 2), np.float16) for key in (SD1_TE, UNET_IN, *VAE_KEYS)}, str(path), metadata)
    return path


def write_tagger(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(b"\x08\x07onnx")
    (folder / "selected_tags.csv").write_text("tag_id,name,category,count\n1,cat,0,10\n")
    return folder


# --- progress in bytes ---------------------------------------------------------------------------------

def test_byte_progress_shows_sizes_a_byte_rate_and_the_time_left():
    samples = [(100.0, 0), (104.0, 8 * MiB)]  # 2 MiB/s
    assert progress_text(8 * MiB, 32 * MiB, samples, "bytes") == "8.0 MiB / 32.0 MiB (25%) · 2.0 MiB/s · ETA 0:12"
    assert progress_text(8 * MiB, 32 * MiB, samples, "bytes", active=False) == "8.0 MiB / 32.0 MiB (25%) · 2.0 MiB/s"
    assert progress_text(500, 2000, [], "bytes") == "500 bytes / 2.0 KiB (25%)"  # no rate yet
    assert progress_text(3, 10, [(0.0, 1), (4.0, 3)]) == "3/10 (30%) · 2.0 s/it · ETA 0:14"  # steps, as before
    assert format_duration(3725) == "1:02:05" and format_duration(None) == "?"


def test_a_progress_event_carries_its_unit_only_when_given(tmp_path):
    with JobContext(tmp_path / "run", echo=False) as ctx:
        ctx.progress(1, 4)
        ctx.progress(512, 1024, unit="bytes")
    events = RunFolder(tmp_path / "run").read_events("progress")
    assert [(e["step"], e["total"], e.get("unit")) for e in events] == [(1, 4, None), (512, 1024, "bytes")]


def test_the_job_panels_show_a_download_in_bytes(tmp_path):
    from tabs.job_panel import advance, new_run, progress_html

    run = RunFolder(tmp_path / "download-x")
    run.path.mkdir()
    run.update_status(job="download", state="done", started=time.time())
    events = [{"event": "progress", "step": s * MiB, "total": 10 * MiB, "unit": "bytes", "time": 50.0 + s}
              for s in (0, 5, 10)]
    run.events_file().write_text("".join(json.dumps(e) + "\n" for e in events))
    followed, _, _ = advance(new_run(run.path), max_lines=5)
    assert followed["unit"] == "bytes"
    assert "10.0 MiB / 10.0 MiB (100%) · 1.0 MiB/s<" in progress_html(followed)  # done: no ETA


# --- the library table -----------------------------------------------------------------------------------

def test_rows_say_what_each_model_is_in_human_words():
    lora = entry("style", "lora", "sdxl", family="locon", precision="fp16", size=150 * MiB)
    assert row(lora) == ["style", "LoRA (locon)", "SDXL", "fp16", "150.0 MiB", "", "/models/style"]
    assert [arch_label(a) for a in ("sd1", "sd2-v", "sdxl", "unknown")] == ["SD 1.x", "SD 2.x v-pred", "SDXL", ""]
    assert kind_label(entry("t", "tagger", family="wd14")) == "tagger (wd14)"
    assert kind_label(entry("p", "diffusers", "sd1", family="StableDiffusionPipeline")) == "diffusers model"
    assert kind_label(entry("i", "checkpoint", "sd1", family="inpaint")) == "checkpoint (inpaint)"


def test_the_kind_filter_counts_and_keeps_problem_entries_in_view():
    entries = [entry("a", "checkpoint", "sd1"), entry("b", "checkpoint", "sdxl"), entry("c", "lora", "sd1"),
               entry("d", "unknown", problem="not a safetensors file")]
    assert filter_choices(entries) == [("all (4)", ALL), ("checkpoint (2)", "checkpoint"), ("LoRA (1)", "lora"),
                                       ("unknown (1)", "unknown"), ("with a problem (1)", WITH_PROBLEM)]
    assert [e.name for e in filtered(entries, "checkpoint")] == ["a", "b"]
    assert [e.name for e in filtered(entries, WITH_PROBLEM)] == ["d"]
    assert filtered(entries, ALL) == entries
    assert summary(entries, 3) == "4 models in 3 folders · 1 with a problem (its reason in the table)"
    assert summary(entries[:1], 1) == "1 model in 1 folder"


def test_what_a_model_can_be_used_for():
    assert uses(entry("a", "checkpoint", "sd1")) == {"base_model"}
    assert uses(entry("b", "diffusers", "sd2-v")) == {"base_model"}
    assert uses(entry("c", "tagger", family="wd14")) == {"tagger"}
    assert uses(entry("c2", "captioner", family="qwen2.5-vl")) == {"captioner"}
    for other in (entry("d", "lora", "sd1"), entry("e", "vae", "sdxl"), entry("f", "checkpoint", "unknown"),
                  entry("g", "diffusers", "unknown", family="FluxPipeline"),
                  entry("h", "checkpoint", "sd1", problem="truncated"), entry("i", "tagger", problem="empty")):
        assert uses(other) == set(), other
    broken = details(entry("h", "checkpoint", "sd1", problem="the file is truncated"))
    assert "**Cannot be used:** the file is truncated" in broken and "`/models/h`" in broken
    assert "Nothing in the studio takes" in details(entry("v", "vae"))
    trained = entry("mine", "lora", "sd1", metadata={"ss_network_dim": "16", "ss_learning_rate": "0.0001"})
    assert metadata_rows(trained) == [["ss_network_dim", "16"], ["ss_learning_rate", "0.0001"]]


def test_the_workspace_offers_the_library_base_models_after_its_recent_ones():
    entries = [entry("a", "checkpoint", "sd1"), entry("l", "lora", "sd1"), entry("b", "diffusers", "sdxl"),
               entry("x", "checkpoint", "sd1", problem="truncated")]
    assert base_model_choices(["/models/b", "/elsewhere/c.safetensors"], entries) == \
        ["/models/b", "/elsewhere/c.safetensors", "/models/a"]
    assert base_model_choices(["/r"], None) == ["/r"]  # never scanned: the recent values alone


def test_the_last_scan_is_kept_and_nothing_is_scanned_to_read_it(studio_home, monkeypatch):
    monkeypatch.setattr(library_listing, "_last", None)
    assert library_listing.last_scan() is None
    write_checkpoint(studio_home / "models" / "checkpoints" / "one.safetensors")
    scanned = library_listing.scan_library()
    assert [e.name for e in scanned] == ["one"] and library_listing.last_scan() is scanned
    assert found_in(scanned, str(studio_home / "models" / "checkpoints")) is scanned[0]
    assert found_in(scanned, str(studio_home / "models" / "vae")) is None


# --- library folders -----------------------------------------------------------------------------------

def test_adding_an_install_says_which_folders_were_added(tmp_path, studio_home):
    webui = tmp_path / "stable-diffusion-webui"
    for name in ("Stable-diffusion", "Lora", "VAE"):
        (webui / "models" / name).mkdir(parents=True)
    added = library_folders.add_folder(str(webui))
    assert added_message(str(webui), added) == \
        "Added 3 folders of the AUTOMATIC1111 / Forge install: Stable-diffusion, Lora, VAE."
    assert added_message(str(webui), library_folders.add_folder(str(webui))).startswith("Nothing new:")
    comfy = tmp_path / "ComfyUI"
    for name in ("checkpoints", "loras", "vae"):
        (comfy / "models" / name).mkdir(parents=True)
    assert added_message(str(comfy), library_folders.add_folder(str(comfy))) == \
        "Added 3 folders of the ComfyUI install: checkpoints, loras, vae."
    plain = tmp_path / "my models"
    plain.mkdir()
    assert added_message(str(plain), library_folders.add_folder(str(plain))) == f"Added `{plain}`."


def test_folder_rows_count_the_models_of_each_folder(tmp_path, studio_home):
    write_checkpoint(tmp_path / "mine" / "a.safetensors")
    write_checkpoint(tmp_path / "mine" / "sub" / "b.safetensors")
    library_folders.add_folder(str(tmp_path / "mine"))
    (tmp_path / "gone").mkdir()
    library_folders.add_folder(str(tmp_path / "gone"))
    (tmp_path / "gone").rmdir()
    entries = library_listing.scan_library()
    own = str(studio_home / "models")
    assert folder_rows(entries) == [
        [own, "0", "the studio's own (downloads go here)"],
        [str(tmp_path / "mine"), "2", ""],
        [str(tmp_path / "gone"), "0", f"not found: {tmp_path / 'gone'}"]]
    assert folder_rows(None)[1] == [str(tmp_path / "mine"), "", ""]  # not scanned yet: no counts


# --- the catalogue -------------------------------------------------------------------------------------

def test_a_catalogue_model_is_downloaded_when_its_folder_holds_a_usable_one(studio_home):
    tagger = get_entry("wd-vit-tagger-v3")
    folder = default_folder(tagger)
    assert download_state(tagger) == ""
    folder.mkdir(parents=True)
    (folder / ".model.onnx.0123456789ab.incomplete").write_bytes(b"half")
    assert download_state(tagger) == PARTLY
    (folder / ".model.onnx.0123456789ab.incomplete").unlink()
    assert download_state(tagger) == ""  # an empty folder
    write_tagger(folder)
    assert download_state(tagger) == DOWNLOADED
    captioner = default_folder(get_entry("blip-large"))
    captioner.mkdir(parents=True)
    (captioner / "config.json").write_text('{"model_type": "blip"}')
    assert download_state(get_entry("blip-large")) == ""  # config.json alone: no weights yet
    write_checkpoint(default_folder(get_entry("sd15")) / "v1-5-pruned-emaonly.safetensors")
    states = {r[0]: r[5] for r in catalogue_rows()}
    assert states["Stable Diffusion 1.5"] == states["WD14 tagger v3, ViT"] == DOWNLOADED
    assert states["BLIP large captioner"] == states["Stable Diffusion XL base 1.0"] == ""
    assert catalogue_rows([tagger]) == [["WD14 tagger v3, ViT", "tagger", "380 MB", "Apache-2.0",
                                         "Danbooru tags; fast.", DOWNLOADED]]


@pytest.mark.parametrize("given, problem", [
    ("", "no tagger folder chosen"), ("  ", "no tagger folder chosen"),
    ("missing", "not found: {tmp}/missing"), ("file.txt", "{tmp}/file.txt is a file, not a tagger folder"),
    ("empty", "no model.onnx and selected_tags.csv in {tmp}/empty"), ("tagger", None)])
def test_tagger_problem(tmp_path, given, problem):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    write_tagger(tmp_path / "tagger")
    value = str(tmp_path / given) if given.strip() else given
    assert tagger_problem(value) == (problem.format(tmp=tmp_path) if problem else None)
    assert tagger_problem(f'"{tmp_path / "tagger"}"') is None  # Windows' "Copy as path"


# --- the Captioning tab's tagger offer -------------------------------------------------------------------

def ended_download(name: str, state: str, events=(), result: dict | None = None) -> str:
    run = RunFolder(runs_root() / name)
    run.path.mkdir(parents=True)
    run.update_status(job="download", state=state, started=time.time(), ended=time.time())
    run.events_file().write_text("".join(json.dumps(e) + "\n" for e in events))
    if result is not None:
        run.result_file.write_text(json.dumps(result))
    return str(run.path)


@pytest.fixture
def offer():
    import gradio as gr

    from tabs.captioning import TaggerOffer

    with gr.Blocks():
        made = TaggerOffer()
        field = gr.Textbox()
    return made, field


def test_the_tagger_offer_fills_the_folder_when_the_download_is_done(offer, tmp_path):
    from tabs.job_panel import new_run

    offer, field = offer
    assert offer.show_for("")[offer.row].visible is True
    folder = write_tagger(tmp_path / "taggers" / "wd-vit-tagger-v3")
    assert offer.show_for(str(folder))[offer.row].visible is False
    assert "No tagger here: no model.onnx" in offer.show_for(str(tmp_path))[offer.text]
    run_dir = ended_download("download-ok", "done", result={"folder": str(folder)})
    updates = offer.follow(new_run(run_dir), field)
    assert updates[field] == str(folder) and "the tagger folder is filled" in updates[offer.message]
    assert updates[offer.timer].active is False and updates[offer.run] is None


def test_the_tagger_offer_says_the_jobs_one_line_when_the_download_fails(offer):
    from tabs.job_panel import new_run

    offer, field = offer
    line = "DownloadError: cannot reach http://127.0.0.1:9 (connection refused): check the internet connection; " \
           "nothing was downloaded"
    updates = offer.follow(new_run(ended_download("download-offline", "error", [{"event": "error", "message": line}])),
                           field)
    assert updates[offer.message] == f"**The download failed:** {line}" and field not in updates
    stopped = offer.follow(new_run(ended_download("download-stopped", "stopped")), field)
    assert "click the button again to continue" in stopped[offer.message] and field not in stopped
