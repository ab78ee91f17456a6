"""Captioning tab: WD14 tagging and BLIP captioning as stoppable jobs, each with a preview on a few
images before the whole dataset, and a summary (written, skipped, failed) after a run."""
from __future__ import annotations

import importlib

import gradio as gr

from core.config import ConfigError, validate
from core.dataset.images import ImageError, thumbnail
from core.jobs.registry import JOBS
from core.jobs.run_folder import RunFolder
from tabs.job_section import JobSection

PREVIEW_IMAGES = 4
WD14_HELP = ("Needs a WD14 tagger folder with **model.onnx** and **selected_tags.csv**: download both from a "
             "SmilingWolf tagger on Hugging Face (e.g. `SmilingWolf/wd-vit-tagger-v3` or `wd-swinv2-tagger-v3`) "
             "into one folder and give it as model_dir. Nothing is downloaded by the studio.")
BLIP_HELP = ("Needs a BLIP captioning model saved by transformers: e.g. `Salesforce/blip-image-captioning-large` "
             "downloaded with its processor files (config.json, model weights, preprocessor_config.json, "
             "tokenizer files) into one folder, given as model_dir. Nothing is downloaded by the studio.")
PREVIEWERS = {"tag": "core.captions.taggers.wd14:preview_tags", "caption": "core.captions.taggers.blip:preview_captions"}


def preview(job: str, values: dict) -> tuple[list, str]:
    """(gallery items, message): what the job would write for the first few images (nothing written)."""
    module, _, name = PREVIEWERS[job].partition(":")
    try:
        cfg = validate(JOBS[job].config, values, "settings")
        pairs = getattr(importlib.import_module(module), name)(cfg, PREVIEW_IMAGES)
    except (ConfigError, ValueError, OSError) as err:
        return [], f"**No preview:** {err}"
    items = []
    for path, caption in pairs:
        try:
            items.append((thumbnail(path, 384), caption or "(no tags above the thresholds)"))
        except (ImageError, OSError):
            continue
    return items, f"Preview of {len(items)} image(s): nothing was written."


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


def _captioner(job: str, label: str, help_text: str) -> JobSection:
    gr.Markdown(help_text)
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
    return section


def build(blocks: gr.Blocks) -> None:
    with gr.Tab("Captioning", id="captioning", elem_id="tab-captioning"):
        with gr.Tabs():
            with gr.Tab("WD14 tags", id="captioning-wd14", elem_id="tab-captioning-wd14"):
                tagger = _captioner("tag", "Tag images", WD14_HELP)
            with gr.Tab("BLIP captions", id="captioning-blip", elem_id="tab-captioning-blip"):
                captioner = _captioner("caption", "Caption images", BLIP_HELP)
    tagger.wire(blocks)
    captioner.wire(blocks)
