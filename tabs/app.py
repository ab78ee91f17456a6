"""The studio's Gradio app: the workspace bar, then one tab per module in tabs/."""
from __future__ import annotations

import gradio as gr

from core.config import field_kind
from tabs import (
    buckets,
    captioning,
    cleaning,
    dataset,
    form,
    live_panel,
    models,
    page_load,
    queue_view,
    runs,
    tools,
    training,
)
from tabs.workspace import WorkspaceBar

TITLE = "SD Studio"


def follow_workspace(bar: WorkspaceBar) -> None:
    """Every form field declared with a workspace slot takes the workspace's value (on page load and when
    it changes); it can still be edited for one job. The forms also hear the base model's architecture."""
    for slot in bar.values:
        fields = []
        for schema_form in form.FORMS:
            if slot in schema_form.bound:
                name = next(n for n, c in schema_form.components.items() if c is schema_form.bound[slot])
                fields.append((schema_form.bound[slot], field_kind(schema_form.model, name).kind == "list"))
        bar.fill(slot, fields)
    for schema_form in form.FORMS:
        schema_form.wire_facts(bar.facts)


def build_app() -> gr.Blocks:
    form.FORMS.clear()
    page_load.PARTS.clear()
    queue_view.EDITABLE.clear()
    with gr.Blocks(title=TITLE, analytics_enabled=False) as blocks:
        gr.HTML(f"<b>{TITLE}</b> · prepare datasets and fine-tune Stable Diffusion models", elem_id="app-title",
                padding=False)
        bar = WorkspaceBar()
        with gr.Tabs() as tabs:
            try_it, demo_panel = dataset.build(blocks)
            caption_fields = captioning.build(blocks)
            cleaning.build(blocks)
            buckets.build(blocks)
            training_page = training.build(blocks)
            models_page = models.build(blocks)
            tools.build(blocks)
            runs_page = runs.build(blocks)
            queue_view.build(blocks, bar, tabs, runs_page)
        live_panel.build(blocks)
        bar.wire(blocks)
        follow_workspace(bar)
        try_it.wire(demo_panel, bar, tabs, training_page)
        models_page.wire(blocks, bar, tabs, caption_fields)
        page_load.wire(blocks, tabs)  # last: every part has said what it shows when first shown
    for fn in blocks.fns.values():  # the page's own events, not an API: no API description (1.1 MB) in the page
        fn.api_visibility = "private"
    return blocks
