"""Captioning tab: WD14 tagging, BLIP captioning and captions from vision-language models as stoppable jobs,
each with a preview on a few images before the whole dataset, and a summary (written, skipped, failed) after
a run."""
from __future__ import annotations

import importlib
import sys
import time
from dataclasses import dataclass

import gradio as gr

from core.config import ConfigError, validate
from core.dataset.images import ImageError, thumbnail
from core.jobs.registry import JOBS
from core.jobs.run_folder import RunFolder
from core.jobs.runner import ACTIVE_STATES, progress_text, start_job
from core.models.catalogue import default_folder, get_entry
from core.models.library_listing import DOWNLOADED, download_state, size_text, tagger_problem
from tabs.job_panel import STATE_TEXT, advance, new_run
from tabs.job_section import JobSection

PREVIEW_IMAGES = 4
WD14_HELP = ("Needs a WD14 tagger folder with **model.onnx** and **selected_tags.csv** (a SmilingWolf tagger from "
             "Hugging Face, e.g. `SmilingWolf/wd-vit-tagger-v3`), given as model_dir: the Models tab downloads one or "
             "finds yours.")
BLIP_HELP = ("Needs a BLIP captioning model saved by transformers (e.g. `Salesforce/blip-image-captioning-large` with "
             "its processor files) in one folder, given as model_dir: the Models tab downloads *BLIP large* in a "
             "click or finds one in your folders.")
VLM_HELP = ("Captions in natural language from a vision-language model saved by transformers in one folder: "
            "**Florence-2**, **Qwen2.5-VL** / **Qwen3-VL**, **JoyCaption** (LLaVA), **BLIP-2**, **SmolVLM**, "
            "**Idefics3** (the family is read from its config.json). The Models tab downloads Florence-2 and "
            "Qwen2.5-VL in a click. Choose what to ask (a short sentence, a paragraph, tags, the style, or your own "
            "prompt), preview on a few images, then caption the folder; with a WD14 tagger folder the tags are "
            "written too, in the same pass.")
TAGGER_ID = "wd-vit-tagger-v3"  # the catalogue's tagger offered where none is chosen (fast, small)
PREVIEWERS = {"tag": "core.captions.taggers.wd14:preview_tags", "caption": "core.captions.taggers.blip:preview_captions",
              "vlm_caption": "core.captions.taggers.vlm:preview_captions"}


def preview(job: str, values: dict) -> tuple[list, str]:
    """(gallery items, message): what the job would write for the first few images (nothing written)."""
    module, _, name = PREVIEWERS[job].partition(":")
    try:
        cfg = validate(JOBS[job].config, values, "settings")
        started = time.perf_counter()
        pairs = getattr(importlib.import_module(module), name)(cfg, PREVIEW_IMAGES)
    except (ConfigError, ValueError, OSError) as err:
        return [], f"**No preview:** {err}"
    seconds = time.perf_counter() - started
    items = []
    for path, caption in pairs:
        try:
            items.append((thumbnail(path, 384), caption or "(no tags above the thresholds)"))
        except (ImageError, OSError):
            continue
    timing = f" {seconds / len(pairs):.2f} s per image (the first preview also loads the model)." if pairs else ""
    return items, f"Preview of {len(items)} image(s): nothing was written.{timing}"


def release_preview_model(job: str) -> None:
    """A run of `job` starts or is queued: the model its previews loaded in this process is freed, if it keeps
    one (the run loads its own)."""
    module = sys.modules.get(PREVIEWERS[job].partition(":")[0])
    if hasattr(module, "release_model"):
        module.release_model()


def run_summary(run_dir: str | None) -> str:
    """Counts of a finished run and the files that failed."""
    if not run_dir:
        return ""
    result = RunFolder(run_dir).read_result()
    if result is None:
        return "No result: the run did not finish (see its log)."
    counts = " · ".join(f"{key} **{result.get(key, 0)}**" for key in ("written", "skipped", "unchanged", "failed"))
    text = f"{result.get('images', 0)} images: {counts}"
    failed = result.get("failed_paths") or []
    if failed:
        text += "\n\nFailed:\n" + "\n".join(f"- `{path}`" for path in failed[:200])
        if len(failed) > 200:
            text += f"\n- … and {len(failed) - 200} more (see the run's result.json)"
    return text


class TaggerOffer:
    """Where the WD14 tagger folder is empty or holds no tagger: one click downloads the catalogue's
    wd-vit-tagger-v3 (the run shows in the side panel, with Stop) and fills the folder when it is done."""

    def __init__(self):
        entry = get_entry(TAGGER_ID)
        self.pitch = (f"Get one in a click ({size_text(entry.size_gb)} from the Hugging Face Hub, {entry.licence}), "
                      "or pick yours on the Models tab.")
        with gr.Row(equal_height=True, elem_id="tagger-offer") as self.row:
            self.text = gr.Markdown(f"No WD14 tagger chosen yet. {self.pitch}", elem_id="tagger-offer-text")
            self.button = gr.Button(f"Download WD14 tagger ({TAGGER_ID})", variant="primary", size="sm", scale=0,
                                    min_width=300, elem_id="tagger-download")
        self.message = gr.Markdown(elem_id="tagger-offer-message")
        self.run = gr.State(None)  # the download followed (job_panel.new_run), None when there is none
        self.timer = gr.Timer(1.0, active=False)

    def show_for(self, folder: str) -> dict:
        """Shown while `folder` holds no tagger, saying why."""
        problem = tagger_problem(folder)
        lead = "No WD14 tagger chosen yet." if not (folder or "").strip() else f"No tagger here: {problem}."
        return {self.row: gr.Row(visible=bool(problem)), self.text: f"{lead} {self.pitch}"}

    def start(self, field: gr.Textbox) -> dict:
        entry = get_entry(TAGGER_ID)
        if download_state(entry) == DOWNLOADED:
            folder = str(default_folder(entry))
            return {field: folder, self.message: f"Using the WD14 tagger downloaded before: `{folder}`."}
        try:
            run_dir = start_job("download", {"catalogue": TAGGER_ID}, TAGGER_ID)
        except ConfigError as err:
            return {self.message: f"**The download did not start:** {err}"}
        return {self.run: new_run(run_dir), self.timer: gr.Timer(active=True),
                self.button: gr.Button(interactive=False),
                self.message: "Downloading the WD14 tagger… (the Run panel on the right shows it, with Stop)"}

    def follow(self, run: dict | None, field: gr.Textbox) -> dict:
        """A tick of the download: its progress; once it ended, the tagger folder filled (or why not)."""
        if not run:
            return {self.timer: gr.Timer(active=False)}
        run, _, finished = advance(run, max_lines=1)
        if not finished and run["state"] in ACTIVE_STATES:
            text = progress_text(run["step"], run["total"], run["samples"], run["unit"]) if run["total"] else "starting"
            return {self.run: run, self.message: f"Downloading the WD14 tagger: {text}"}
        ended = {self.run: None, self.timer: gr.Timer(active=False), self.button: gr.Button(interactive=True)}
        if run["state"] == "done":
            folder = (RunFolder(run["run_dir"]).read_result() or {}).get("folder", "")
            if problem := tagger_problem(folder):
                return {**ended, self.message: f"**Downloaded, but no tagger to use:** {problem}"}
            return {**ended, field: folder, self.message: f"Downloaded into `{folder}`: the tagger folder is filled."}
        if run["state"] == "stopped":
            return {**ended, self.message: "The download was stopped; the bytes fetched are kept: click the button "
                                           "again to continue it."}
        error = run.get("error") or RunFolder(run["run_dir"]).read_status().get("error") or "see its log (Runs tab)"
        return {**ended, self.message: f"**The download {STATE_TEXT.get(run['state'], run['state'])}:** {error}"}

    def wire(self, field: gr.Textbox) -> None:
        """`field`: the tag form's model folder."""
        hidden = {"show_progress": "hidden"}
        field.change(self.show_for, inputs=field, outputs=[self.row, self.text], **hidden)
        self.button.click(lambda: self.start(field), outputs=[field, self.run, self.timer, self.button, self.message])
        self.timer.tick(lambda run: self.follow(run, field), inputs=self.run,
                        outputs=[field, self.run, self.timer, self.button, self.message], **hidden)


def _captioner(job: str, label: str) -> JobSection:
    extra = {}

    def preview_controls() -> None:
        with gr.Row():
            extra["button"] = gr.Button(f"Preview on {PREVIEW_IMAGES} images", elem_id=f"{job}-preview-button")
            extra["message"] = gr.Markdown(elem_id=f"{job}-preview-message")
        extra["gallery"] = gr.Gallery(label="Preview", columns=PREVIEW_IMAGES, height=260, elem_id=f"{job}-preview")

    section = JobSection(job, label, before_panel=preview_controls)
    summary = gr.Markdown(elem_id=f"{job}-summary")
    extra["button"].click(lambda *raw: preview(job, section.values(*raw)), inputs=section.form.inputs,
                          outputs=[extra["gallery"], extra["message"]])
    section.panel.finished.change(run_summary, inputs=section.panel.finished, outputs=summary)
    for button in (section.button, section.queue.button):
        button.click(lambda: release_preview_model(job), show_progress="hidden")
    return section


@dataclass
class ModelFields:
    """The model folder fields of the tab (the Models tab's "Use as tagger" / "Use as captioner" fill them) and its
    sub-tabs (their ids: captioning-wd14, captioning-blip, captioning-vlm)."""
    tagger: gr.Textbox
    blip: gr.Textbox
    vlm: gr.Textbox
    sections: gr.Tabs

    def captioner(self, family: str) -> tuple[gr.Textbox, str]:
        """The field and sub-tab of a captioner of `family` (core/models/detect.py's names)."""
        return (self.blip, "captioning-blip") if family == "blip" else (self.vlm, "captioning-vlm")


def build(blocks: gr.Blocks) -> ModelFields:
    """The tab; returns its model folder fields."""
    with gr.Tab("Captioning", id="captioning", elem_id="tab-captioning"):
        with gr.Tabs() as sections:
            with gr.Tab("WD14 tags", id="captioning-wd14", elem_id="tab-captioning-wd14"):
                gr.Markdown(WD14_HELP)
                offer = TaggerOffer()
                tagger = _captioner("tag", "Tag images")
            with gr.Tab("BLIP captions", id="captioning-blip", elem_id="tab-captioning-blip"):
                gr.Markdown(BLIP_HELP)
                captioner = _captioner("caption", "Caption images")
            with gr.Tab("Vision-language models", id="captioning-vlm", elem_id="tab-captioning-vlm"):
                gr.Markdown(VLM_HELP)
                vlm = _captioner("vlm_caption", "Caption images")
    for section in (tagger, captioner, vlm):
        section.wire(blocks)
    offer.wire(tagger.form.components["model_dir"])
    return ModelFields(*(section.form.components["model_dir"] for section in (tagger, captioner, vlm)), sections)
