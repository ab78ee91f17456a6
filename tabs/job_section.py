"""One job's controls: preset bar, schema form, start button and live job panel."""
from __future__ import annotations

from typing import Callable

import gradio as gr

from core.jobs.registry import JOBS
from tabs.form import SchemaForm
from tabs.job_panel import JobPanel
from tabs.preset_bar import PresetBar
from tabs.queue_view import QueueButton


class JobSection:
    """Build inside a Blocks context; `wire(blocks)` once the page is laid out.

    `base_form`: another form on the page that holds some of this job's parameters (those
    not in `fields`); its values are used under this form's own.
    """

    def __init__(self, job: str, button_label: str, fields: list[str] | None = None,
                 base_form: SchemaForm | None = None, before_panel: Callable[[], None] | None = None,
                 queueable: bool = True):
        """`before_panel`: builds more controls between the start button and the job panel; `queueable`: an
        *Add to queue* button beside the start button."""
        self.job, self.base_form = job, base_form
        self.presets = PresetBar(job)
        self.form = SchemaForm(JOBS[job].config, fields=fields)
        with gr.Row(equal_height=True):
            self.button = gr.Button(button_label, variant="primary", elem_id=f"{job}-button")
            self.queue = QueueButton(job, visible=queueable)
        self.queued = gr.Markdown(elem_id=f"{job}-queued", elem_classes=["sf-message"])
        if before_panel:
            before_panel()
        self.panel = JobPanel(job)

    def values(self, *raw) -> dict:
        """The job's values from the components (base form's first, in `inputs` order)."""
        own = raw
        values = {}
        if self.base_form:
            n = len(self.base_form.inputs)
            fields = JOBS[self.job].config.model_fields
            values = {k: v for k, v in self.base_form.read(*raw[:n]).items() if k in fields}
            own = raw[n:]
        return {**values, **self.form.read(*own)}

    def fill(self, values: dict) -> list:
        """The components (base form's first) showing `values`; the base form's fields this job lacks kept."""
        base = []
        if self.base_form:
            base = [value if name in values else gr.skip()
                    for name, value in zip(self.base_form.names, self.base_form.show(values))]
        return [*base, *self.form.show(values)]

    def wire(self, blocks: gr.Blocks) -> None:
        inputs = [*(self.base_form.inputs if self.base_form else []), *self.form.inputs]
        self.button.click(lambda *raw: self.panel.launch(self.values(*raw)), inputs=inputs,
                          outputs=self.panel.outputs)
        self.queue.wire(inputs, self.values, self.queued, self.fill)
        self.panel.wire(blocks)
        self.presets.wire(self.form, blocks)
