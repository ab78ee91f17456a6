"""Tools tab: model utilities that are jobs of their own (merge LoRA files into a model)."""
from __future__ import annotations

import gradio as gr

from tabs.job_section import JobSection


def build(blocks: gr.Blocks) -> None:
    with gr.Tab("Tools", id="tools", elem_id="tab-tools"):
        with gr.Accordion("Merge LoRA files into a model", open=True):
            gr.Markdown("Adds each LoRA (kohya / AUTOMATIC1111, sd-scripts SDXL or diffusers files) at its "
                        "ratio into the base model's weights and saves a new model; the base model and the "
                        "LoRA files are not changed, and an existing output is never replaced.")
            merge = JobSection("merge_lora", "Merge")
    merge.wire(blocks)
