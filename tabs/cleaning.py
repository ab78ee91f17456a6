"""Cleaning tab: ordered caption rules with a preview, Apply (snapshot first), Undo, tag statistics,
search for a tag to bulk-edit, and export to kohya-style metadata JSON."""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from core.captions.cleaning import list_snapshots, preview
from core.captions.rules import RULE_TEMPLATES
from core.captions.stats import export_kohya_metadata, find_with_tag, top_tags
from core.config import CleanConfig, ConfigError, validate
from tabs import page_load
from tabs.charts import bar_chart_html
from tabs.job_panel import JobPanel
from tabs.job_section import JobSection

PREVIEW_COLUMNS = ["caption file", "before", "after"]
TAG_COLUMNS = ["tag", "captions"]


def preview_table(values: dict) -> tuple[pd.DataFrame, str]:
    try:
        cfg = validate(CleanConfig, values, "settings")
        changes, changed, total, unusual = preview(cfg)
    except (ConfigError, ValueError, OSError) as err:
        return pd.DataFrame(columns=PREVIEW_COLUMNS), f"**No preview:** {err}"
    rows = [[str(c.path), c.before, c.after] for c in changes]
    message = f"**{changed}** of {total} caption files would change (the first {len(rows)} are shown); " \
              "nothing was written."
    if unusual:
        message += f" {len(unusual)} file(s) are not plain UTF-8 (read correctly; a cleaned one is saved as UTF-8): " \
                   + ", ".join(f"`{Path(c.path).name}`" for c in unusual[:10])
    return pd.DataFrame(rows, columns=PREVIEW_COLUMNS), message


def snapshot_choices() -> list[tuple[str, str]]:
    return [(f"{s.id} · {s.files} file(s) · {s.label[:80]}", s.id) for s in list_snapshots()]


def tag_statistics(values: dict, top_n: int) -> tuple[pd.DataFrame, str]:
    try:
        cfg = validate(CleanConfig, values, "settings")
        rows = top_tags(cfg.train_data_dir, cfg.recursive, cfg.caption_extension, int(top_n))
    except (ConfigError, ValueError, OSError) as err:
        return pd.DataFrame(columns=TAG_COLUMNS), f"**No statistics:** {err}"
    chart = bar_chart_html([{"label": tag, "count": count} for tag, count in rows[:40]],
                           f"Top {min(len(rows), 40)} tags", elem_class="tag-chart")
    return pd.DataFrame(rows, columns=TAG_COLUMNS), chart


def search_tag(values: dict, tag: str, regex: bool) -> str:
    if not tag.strip():
        return "Type a tag to search for."
    try:
        cfg = validate(CleanConfig, values, "settings")
        found = find_with_tag(cfg.train_data_dir, cfg.recursive, cfg.caption_extension, tag.strip(), regex=regex)
    except (ConfigError, ValueError, OSError) as err:
        return f"**No search:** {err}"
    listed = "\n".join(f"- `{path}`" for path in found[:50])
    more = f"\n- … and {len(found) - 50} more" if len(found) > 50 else ""
    return f"**{len(found)}** caption file(s) with `{tag.strip()}`.\n\n{listed}{more}"


def export_metadata(values: dict, out_path: str, tags_extension: str, full_path: bool, overwrite: bool) -> str:
    try:
        cfg = validate(CleanConfig, values, "settings")
        if not out_path.strip():
            return "Give the path of the JSON file to write."
        data = export_kohya_metadata(cfg.train_data_dir, cfg.recursive, out_path.strip(),
                                     caption_extension=cfg.caption_extension, tags_extension=tags_extension,
                                     full_path=full_path, overwrite=overwrite)
    except (ConfigError, ValueError, OSError) as err:
        return f"**Not exported:** {err}"
    return f"Wrote {len(data)} image entries to `{out_path.strip()}` (sd-scripts metadata format)."


def build(blocks: gr.Blocks) -> None:
    extra = {}

    def preview_controls() -> None:
        with gr.Row():
            extra["rule"] = gr.Dropdown(choices=list(RULE_TEMPLATES), value=None, label="Add a rule",
                                        elem_id="clean-rule-choice", scale=2)
            extra["add"] = gr.Button("Add to the rules", elem_id="clean-rule-add", scale=1)
            extra["preview"] = gr.Button("Preview", elem_id="clean-preview-button", scale=1)
        extra["message"] = gr.Markdown(elem_id="clean-preview-message")
        extra["table"] = gr.Dataframe(pd.DataFrame(columns=PREVIEW_COLUMNS), interactive=False, wrap=True,
                                      elem_id="clean-preview")

    with gr.Tab("Cleaning", id="cleaning", elem_id="tab-cleaning"):
        gr.Markdown("Clean captions with rules applied in order. Preview first; Apply saves a snapshot of every "
                    "caption it changes before writing, and Undo restores a snapshot byte for byte.")
        section = JobSection("clean", "Apply rules", before_panel=preview_controls)
        with gr.Accordion("Undo a cleaning", open=False):
            with gr.Row():
                snapshot = gr.Dropdown(label="Snapshot", choices=[], elem_id="clean-snapshot", scale=3)
                refresh = gr.Button("Refresh", elem_id="clean-snapshot-refresh", scale=1)
                undo = gr.Button("Undo (restore this snapshot)", variant="stop", elem_id="clean-undo", scale=1)
            undo_panel = JobPanel("undo_clean", elem_prefix="clean-undo")
        with gr.Accordion("Tag statistics and search", open=False):
            with gr.Row():
                top_n = gr.Number(value=50, precision=0, minimum=1, label="Top N tags", elem_id="clean-top-n")
                count = gr.Button("Count tags", elem_id="clean-count")
            with gr.Row():
                tag_table = gr.Dataframe(pd.DataFrame(columns=TAG_COLUMNS), interactive=False,
                                         elem_id="clean-tag-table")
                tag_chart = gr.HTML(elem_id="clean-tag-chart")
            with gr.Row():
                tag = gr.Textbox(label="Find captions with the tag", elem_id="clean-search-tag")
                regex = gr.Checkbox(label="regular expression", elem_id="clean-search-regex")
                find = gr.Button("Find", elem_id="clean-search")
                bulk = gr.Button("Edit these in bulk", elem_id="clean-bulk")
            found = gr.Markdown(elem_id="clean-search-result")
        with gr.Accordion("Export kohya metadata JSON", open=False):
            with gr.Row():
                out_path = gr.Textbox(label="JSON file to write", elem_id="clean-export-path", scale=3)
                tags_extension = gr.Textbox(".txt", label="tags extension", elem_id="clean-export-tags-ext")
                full_path = gr.Checkbox(label="full paths as keys", elem_id="clean-export-full")
                overwrite = gr.Checkbox(label="overwrite", elem_id="clean-export-overwrite")
            export = gr.Button("Export", elem_id="clean-export")
            exported = gr.Markdown(elem_id="clean-export-message")

    form = section.form
    inputs = form.inputs
    rules_box = form.components["rules"]

    def add_rule(name: str | None, current: str) -> str:
        if not name:
            return gr.skip()
        return (current.rstrip("\n") + "\n" if current.strip() else "") + RULE_TEMPLATES[name]

    def refresh_snapshots():
        choices = snapshot_choices()
        return gr.Dropdown(choices=choices, value=choices[0][1] if choices else None)

    def start_undo(chosen: str | None):
        if not chosen:
            return {undo_panel.status: "Choose a snapshot first."}
        return undo_panel.launch({"snapshot": chosen})

    def bulk_edit(tag_text: str, regex_on: bool):
        if regex_on or not tag_text.strip():
            return gr.skip(), "Bulk edit works on one exact tag (not a regular expression)."
        return tag_text.strip(), (f"The rules now apply only to captions with `{tag_text.strip()}`: add rules "
                                  "(e.g. `replace: old -> new`), Preview, then Apply.")

    extra["add"].click(add_rule, inputs=[extra["rule"], rules_box], outputs=rules_box)
    extra["preview"].click(lambda *raw: preview_table(section.values(*raw)), inputs=inputs,
                           outputs=[extra["table"], extra["message"]])
    for trigger in (refresh.click, section.panel.finished.change, undo_panel.finished.change):
        trigger(refresh_snapshots, outputs=snapshot)
    page_load.on_load(refresh_snapshots, [snapshot])
    undo.click(start_undo, inputs=snapshot, outputs=undo_panel.outputs)
    count.click(lambda n, *raw: tag_statistics(section.values(*raw), n), inputs=[top_n, *inputs],
                outputs=[tag_table, tag_chart])
    find.click(lambda t, r, *raw: search_tag(section.values(*raw), t, r), inputs=[tag, regex, *inputs],
               outputs=found)
    bulk.click(bulk_edit, inputs=[tag, regex], outputs=[form.components["only_with_tag"], found])
    export.click(lambda o, e, f, w, *raw: export_metadata(section.values(*raw), o, e, f, w),
                 inputs=[out_path, tags_extension, full_path, overwrite, *inputs], outputs=exported)
    section.wire(blocks)
    undo_panel.wire(blocks)
