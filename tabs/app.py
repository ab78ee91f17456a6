"""The studio's Gradio app: one tab per module in tabs/."""
from __future__ import annotations

import gradio as gr

from tabs import buckets, captioning, cleaning, dataset, form, live_panel, runs, tools, training

TITLE = "SD Studio"


def build_app() -> gr.Blocks:
    form.FORMS.clear()
    with gr.Blocks(title=TITLE, analytics_enabled=False) as blocks:
        gr.Markdown(f"# {TITLE}\nPrepare datasets and fine-tune Stable Diffusion models.")
        with gr.Tabs():
            dataset.build(blocks)
            captioning.build(blocks)
            cleaning.build(blocks)
            buckets.build(blocks)
            training.build(blocks)
            tools.build(blocks)
            runs.build(blocks)
        live_panel.build(blocks)
    return blocks
