"""The Training tab's memory and time estimate: shown by Check settings (and Start), compared with this machine's
GPU or a chosen card; when it does not fit, one button per saver sets the form's fields. The numbers come from
core/estimate."""
from __future__ import annotations

import gradio as gr

from core.config import ConfigError
from core.estimate.cards import CARD_CHOICES, THIS_GPU
from tabs.form import SchemaForm

MAX_SAVERS = 9  # buttons kept ready (hidden until a saver fills them)
# The settings check and the estimate import torch, diffusers and transformers when first used (the app builds
# without them). One click starts both; two threads importing those at once can be handed a partially initialized
# module (CI: "cannot import name 'AutoencoderKL' from 'diffusers'"), so the handlers that do take turns.
TORCH_TURN = {"concurrency_limit": 1, "concurrency_id": "training-check"}


class EstimateView:
    def __init__(self, form: SchemaForm):
        self.form = form
        with gr.Accordion("Memory and time estimate", open=False, elem_id="train-estimate-section") as self.section:
            with gr.Row(equal_height=True):
                self.card = gr.Dropdown(CARD_CHOICES, value=THIS_GPU, label="Compare with", scale=1,
                                        info="the free memory of this machine's GPU, or a card's size",
                                        elem_id="train-estimate-card")
                self.button = gr.Button("Estimate memory", scale=1, elem_id="train-estimate-button")
            self.text = gr.Markdown(elem_id="train-estimate")
            self.changes = gr.State([])
            with gr.Row():
                self.savers = [gr.Button(visible=False, size="sm", elem_id=f"train-saver-{i}")
                               for i in range(MAX_SAVERS)]

    @property
    def outputs(self) -> list:
        return [self.section, self.text, self.changes, *self.savers]

    def show(self, card: str, *raw) -> list:
        """[the section opened, estimate markdown, the savers' changes, each saver button]."""
        from core.estimate.check import check_estimate  # torch: not while the app is built

        values = self.form.read(*raw)
        try:
            checked = check_estimate(values, card)
        except ConfigError as err:
            return [gr.Accordion(open=True), f"**No estimate:** fix the settings first.\n\n```\n{err}\n```", [],
                    *[gr.update(visible=False)] * MAX_SAVERS]
        except ValueError as err:
            return [gr.Accordion(open=True), f"**No estimate:** {err}", [], *[gr.update(visible=False)] * MAX_SAVERS]
        found = checked.savers[:MAX_SAVERS]
        buttons = [gr.update(visible=True, value=f"Apply: {s.name} (−{s.saving / 2**30:.1f} GiB)") for s in found]
        buttons += [gr.update(visible=False)] * (MAX_SAVERS - len(found))
        return [gr.Accordion(open=True), checked.markdown(), [s.changes for s in found], *buttons]

    def wire(self, check: gr.Button, start: gr.Button) -> None:
        inputs = [self.card, *self.form.inputs]
        for trigger in (check.click, start.click, self.button.click, self.card.input):
            trigger(self.show, inputs=inputs, outputs=self.outputs, **TORCH_TURN)
        for index, button in enumerate(self.savers):
            button.click(lambda changes, card, *raw, i=index: self._apply(changes[i], card, raw),
                         inputs=[self.changes, *inputs], outputs=[*self.form.inputs, *self.outputs], **TORCH_TURN)

    def _apply(self, changes: dict, card: str, raw) -> list:
        """The form with the saver's changes, and the estimate of the result."""
        values = {**self.form.read(*raw), **changes}
        shown = self.form.show(values)
        return [*shown, *self.show(card, *shown)]
