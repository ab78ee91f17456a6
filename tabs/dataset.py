"""Dataset tab: scan folders, read the report, browse images and edit their captions."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import gradio as gr
import pandas as pd

from core.captions.files import (
    CaptionFileError,
    list_caption_backups,
    read_caption,
    read_caption_detailed,
    restore_caption,
    save_caption,
)
from core.dataset.images import ImageError, thumbnail
from core.dataset.masks import MaskSource, mask_overlay
from core.jobs.run_folder import RunFolder
from tabs.charts import bar_frame, bar_plot, bar_summary
from tabs.job_panel import JobPanel
from tabs.job_section import JobSection
from tabs.try_it import TryIt

PAGE_SIZE = 48
FILTERS = {"all images": None, "missing caption": "missing", "empty caption": "empty"}


def load_report(run_dir: str | None) -> dict | None:
    return RunFolder(run_dir).read_scan_report() if run_dir else None


def report_markdown(report: dict | None) -> str:
    if report is None:
        return "No report yet: scan a folder."
    formats = " · ".join(f"{k} {v}" for k, v in sorted(report["by_format"].items())) or "none"
    lines = [
        f"### {report['total_files']} image files, {report['readable']} readable, "
        f"{report['effective_images']} effective with repeats",
        f"**Formats:** {formats}",
        f"**Broken or unreadable:** {len(report['broken'])} · **missing captions:** "
        f"{len(report['missing_captions'])} · **empty captions:** {len(report['empty_captions'])} "
        f"(caption extension `{report['caption_extension']}`)",
    ]
    if "mask_problems" in report:
        source = f"mask folder `{report['masks']['folder']}`" if report["masks"]["folder"] else "alpha channels"
        lines.append(f"**Masks** ({source}): {len(report['mask_problems'])} missing, unreadable, of the wrong size "
                     "or empty")
    if report.get("invalid_folders"):
        lines.append("**Invalid folders:** " + "; ".join(
            f"`{f['path']}`: {f['reason']}" for f in report["invalid_folders"]))
    if not report.get("complete", True):
        lines.append("*The scan was stopped before the end: this report is partial.*")
    return "\n\n".join(lines)


SIZE_TITLE, ASPECT_TITLE = "Shorter side (px)", "Aspect ratio (width:height)"


def histograms(report: dict | None) -> tuple:
    """The size and aspect charts' frames, each followed by its summary."""
    sizes, aspects = (report or {}).get("size_histogram", []), (report or {}).get("aspect_histogram", [])
    return bar_frame(sizes), bar_summary(sizes, "images"), bar_frame(aspects), bar_summary(aspects, "images")


def problems_table(report: dict | None) -> pd.DataFrame:
    rows = []
    if report:
        rows += [[b["path"], f"unreadable: {b['reason']}"] for b in report["broken"]]
        rows += [[p, "caption file missing"] for p in report["missing_captions"]]
        rows += [[p, "caption is empty"] for p in report["empty_captions"]]
        rows += [[m["path"], f"mask: {m['reason']}"] for m in report.get("mask_problems", [])]
    return pd.DataFrame(rows, columns=["path", "problem"])


def repeats_table(report: dict | None) -> pd.DataFrame:
    rows = [[f["path"], f["repeats"], f["images"], f["effective"]] for f in (report or {}).get("repeat_folders", [])]
    return pd.DataFrame(rows, columns=["folder", "repeats", "images", "effective"])


def filtered_images(report: dict | None, filter_name: str) -> list[dict]:
    wanted = FILTERS.get(filter_name)
    return [i for i in (report or {}).get("images", []) if wanted is None or i["caption"] == wanted]


def gallery_page(report: dict | None, filter_name: str, page: int):
    images = filtered_images(report, filter_name)
    pages = max(1, -(-len(images) // PAGE_SIZE))
    page = min(max(1, int(page or 1)), pages)
    shown = images[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    items, listed = [], []
    for entry in shown:
        try:
            items.append((thumbnail(entry["path"]), Path(entry["path"]).name))
        except ImageError:
            continue  # the image changed since the scan; it will show up as broken next time
        listed.append(entry)
    info = f"page {page} of {pages} · {len(images)} image(s)"
    return items, listed, gr.Number(value=page, maximum=pages), info


def backup_label(backup) -> str:
    when = datetime.fromtimestamp(backup.time).strftime("%Y-%m-%d %H:%M:%S")
    return f"{when} · " + ("(no caption file)" if backup.absent else backup.preview or "(empty)")


def backup_choices(caption_path: str) -> gr.Dropdown:
    backups = list_caption_backups(Path(caption_path))
    choices = [(backup_label(b), b.id) for b in backups]
    return gr.Dropdown(choices=choices, value=choices[0][1] if choices else None)


def select_image(shown: list[dict], evt: gr.SelectData):
    entry = shown[evt.index]
    caption_path = entry["caption_path"]
    text, _, note = read_caption_detailed(Path(caption_path))
    header = f"`{entry['path']}` · {entry['width']}×{entry['height']} {entry['format']} · " \
             f"repeats {entry['repeats']}\n\ncaption file: `{caption_path}`" + (f" ({note})" if note else "")
    overlay, mask_note = mask_preview(entry)
    return entry, header + mask_note, text, backup_choices(caption_path), "", overlay


def mask_preview(entry: dict) -> tuple:
    """The image with the part its mask ignores tinted (an Image update, hidden without a mask), and a line
    for the header naming the mask."""
    if not entry.get("mask"):
        return gr.Image(value=None, visible=False), ""
    source = MaskSource.from_report(entry["mask"], entry["path"])
    where = "its alpha channel" if source.alpha else f"`{source.path}`"
    try:
        overlay = mask_overlay(entry["path"], source)
    except ImageError as exc:
        return gr.Image(value=None, visible=False), f"\n\nmask: {where}, not shown: {exc.reason}"
    return gr.Image(value=overlay, visible=True, format="png"), f"\n\nmask: {where} (tinted: the part the loss ignores)"


def save_selected(entry: dict | None, text: str):
    if not entry:
        return gr.skip(), "Select an image first."
    caption_path = Path(entry["caption_path"])
    try:
        if not save_caption(caption_path, text):
            return gr.skip(), "Nothing to save: the caption is unchanged."
    except CaptionFileError as exc:
        return gr.skip(), f"Not saved: {exc}"
    return backup_choices(str(caption_path)), f"Saved `{caption_path.name}`; the previous text is kept as a backup."


def restore_selected(entry: dict | None, backup_id: str | None):
    if not entry or not backup_id:
        return gr.skip(), gr.skip(), "Select an image and a backup first."
    caption_path = Path(entry["caption_path"])
    try:
        restore_caption(caption_path, backup_id)
    except CaptionFileError as exc:
        return gr.skip(), gr.skip(), f"Not restored: {exc}"
    text = read_caption(caption_path) if caption_path.exists() else ""
    return text, backup_choices(str(caption_path)), f"Restored `{caption_path.name}` (the text it replaced is a backup too)."


def build(blocks: gr.Blocks) -> tuple[TryIt, JobPanel]:
    """The tab; returns its Try it row and the demo kit's job panel (tabs/app.py wires them to the workspace)."""
    with gr.Tab("Dataset", id="dataset", elem_id="tab-dataset"):
        try_it = TryIt()
        gr.Markdown("Scan one or more dataset folders (images with sidecar caption files; kohya-style "
                    "`N_name` folders count as N repeats), then browse the images and edit captions.")
        scan = JobSection("scan", "Scan")
        report_state = gr.State(None)
        summary = gr.Markdown(report_markdown(None), elem_id="scan-report")
        with gr.Row():
            with gr.Column():
                sizes = bar_plot(SIZE_TITLE, "size-histogram")
                sizes_summary = gr.HTML(bar_summary([], "images"), elem_id="size-histogram-summary")
            with gr.Column():
                aspects = bar_plot(ASPECT_TITLE, "aspect-histogram")
                aspects_summary = gr.HTML(bar_summary([], "images"), elem_id="aspect-histogram-summary")
        with gr.Accordion("Problems and repeat folders", open=True):
            problems = gr.Dataframe(problems_table(None), label="Problems", interactive=False,
                                    elem_id="scan-problems")
            repeats = gr.Dataframe(repeats_table(None), label="Folders and repeats", interactive=False)
        with gr.Accordion("Images and captions", open=True):
            with gr.Row():
                image_filter = gr.Radio(list(FILTERS), value="all images", label="Show")
                page = gr.Number(1, precision=0, minimum=1, label="Page")
                page_info = gr.Markdown()
            shown = gr.State([])
            gallery = gr.Gallery(columns=8, height=360, allow_preview=False, label="Images",
                                 elem_id="dataset-gallery")
            selected = gr.State(None)
            selected_info = gr.Markdown()
            mask_image = gr.Image(label="Mask over the image (tinted: ignored by masked loss)", type="pil",
                                  format="png", interactive=False, visible=False, height=320, elem_id="mask-overlay")
            caption = gr.Textbox(label="Caption", lines=3, elem_id="caption-editor")
            with gr.Row():
                save = gr.Button("Save caption", elem_id="caption-save")
                backups = gr.Dropdown(label="Earlier versions", choices=[], elem_id="caption-backups")
                restore = gr.Button("Restore selected version", elem_id="caption-restore")
            caption_message = gr.Markdown()
        with gr.Accordion("No dataset or model yet? Build the demo kit", open=False):
            gr.Markdown("Builds a tiny random-weight model (diffusers folder and single file) and a small "
                        "captioned dataset, offline, in seconds — enough to try every tab on a CPU.")
            demo = JobSection("demo", "Build demo kit", queueable=False)

    scan.wire(blocks)
    demo.wire(blocks)

    def show_report(run_dir):
        report = load_report(run_dir)
        return (report, report_markdown(report), *histograms(report), problems_table(report),
                repeats_table(report), 1)

    scan.panel.finished.change(show_report, inputs=scan.panel.finished,
                          outputs=[report_state, summary, sizes, sizes_summary, aspects, aspects_summary, problems,
                                        repeats, page]) \
        .then(gallery_page, inputs=[report_state, image_filter, page], outputs=[gallery, shown, page, page_info])
    for trigger in (image_filter.change, page.submit):
        trigger(gallery_page, inputs=[report_state, image_filter, page], outputs=[gallery, shown, page, page_info])
    gallery.select(select_image, inputs=shown,
                   outputs=[selected, selected_info, caption, backups, caption_message, mask_image])
    save.click(save_selected, inputs=[selected, caption], outputs=[backups, caption_message])
    restore.click(restore_selected, inputs=[selected, backups], outputs=[caption, backups, caption_message])
    return try_it, demo.panel
