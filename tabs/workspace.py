"""The workspace bar above the tabs: dataset folder(s), base model and output folder, chosen once (typed,
picked from the recent ones or with the file picker), checked at once, saved, restored on page load."""
from __future__ import annotations

import html
from typing import Callable

import gradio as gr

from core import workspace
from core.models.library_listing import base_model_choices, last_scan, scan_library
from core.workspace_checks import Check, check_slot, facts
from tabs import page_load
from tabs.file_picker import FilePicker


def check_html(check: Check, value) -> str:
    """The check's answer under its field, green or red; long paths shortened (in full on hover)."""
    if not check.text:
        return ""
    mark, kind = ("✓", "ok") if check.ok else ("✗", "bad")
    shown = workspace.shorten_paths(check.text, value)
    return f"<div class='ws-check ws-{kind}' title='{html.escape(check.text)}'>{mark} {html.escape(shown)}</div>"


# Under the base model while there is none (or it is not usable): the Models tab's library and catalogue. A click
# on a link is the check's click event, with {"go": "library" | "download"} (WorkspaceBar.on_model_offer).
MODEL_OFFER = ("<div class='ws-check ws-offer'><a href='#' data-go='library'>Pick from your models</a> or "
               "<a href='#' data-go='download'>download SD 1.5 / SDXL</a></div>")
OFFER_JS = ("element.addEventListener('click', (event) => { const link = event.target.closest('[data-go]'); "
            "if (link) { event.preventDefault(); trigger('click', {go: link.dataset.go}); } });")


def problem_html(problem: str) -> gr.HTML:
    """The bar's line for a workspace that cannot be read or saved; hidden when there is none."""
    return gr.HTML(f"<div class='ws-check ws-bad'>✗ {html.escape(problem)}</div>", visible=bool(problem))


class WorkspaceBar:
    """`values[slot]`: a State holding the slot's value (changes when the workspace does; the forms follow);
    `facts`: a State holding {"model_arch": ...} of the base model."""

    def __init__(self):
        self.inputs, self.checks, self.browse, self.values = {}, {}, {}, {}
        with gr.Row(elem_id="workspace-bar", equal_height=False):
            for slot in workspace.SLOTS:
                with gr.Column(scale=1, min_width=260, elem_classes="ws-slot"):
                    with gr.Row(equal_height=True, elem_classes="ws-line"):
                        self.inputs[slot] = gr.Dropdown(
                            choices=[], value=None, allow_custom_value=True, label=workspace.LABELS[slot], scale=1,
                            elem_id=f"workspace-{slot}", elem_classes="ws-input")
                        self.browse[slot] = gr.Button("Browse…", scale=0, min_width=76, size="sm",
                                                      elem_id=f"workspace-{slot}-browse", elem_classes="ws-browse")
                    self.checks[slot] = gr.HTML(padding=False, elem_id=f"workspace-{slot}-check",
                                               elem_classes="ws-check-box", js_on_load=OFFER_JS)
                self.values[slot] = gr.State(None)
        self.problem = gr.HTML(visible=False, padding=False, elem_id="workspace-problem")
        self.facts = gr.State({"model_arch": None})
        self.picker = FilePicker()

    @property
    def outputs(self) -> list:
        """What set_values updates."""
        return [*self.inputs.values(), *self.checks.values(), *self.values.values(), self.facts, self.problem]

    def _choices(self, ws: workspace.Workspace, slot: str) -> list[str]:
        """A slot's choices: its recent values; the base model's also the library's models (of the last scan in
        this process: none is run here)."""
        return base_model_choices(ws.recent[slot], last_scan()) if slot == "model" else ws.recent[slot]

    def _show(self, ws: workspace.Workspace, slot: str) -> dict:
        """The updates that show one slot of `ws` (its check run now); the facts with the model."""
        value = ws.value(slot)
        found = check_slot(slot, value)
        updates = {self.inputs[slot]: gr.Dropdown(choices=self._choices(ws, slot),
                                                  value=workspace.line_text(value) or None),
                   self.checks[slot]: check_html(found, value), self.values[slot]: value}
        if slot == "model":
            updates[self.facts] = facts(found)
            if not value or not found.ok:
                updates[self.checks[slot]] += MODEL_OFFER
        return updates, found

    def on_model_offer(self, fn: Callable[[str], dict], outputs: list):
        """`fn(go)`: the updates (of `outputs`) of a click on the base model's offer ("library" or "download");
        returns the event (to chain more with `.then`)."""
        def clicked(evt: gr.EventData) -> dict:
            return fn(getattr(evt, "go", "library"))

        return self.checks["model"].click(clicked, outputs=outputs, show_progress="hidden")

    def library_choices(self) -> dict:
        """The base model's choices with the library's models (scanned now if this process never did)."""
        if last_scan() is None:
            scan_library()
        return gr.update(choices=self._choices(workspace.load(), "model"))

    def set_values(self, **values) -> dict:
        """Set slots of the workspace from code (dataset=[folders], model=path, output=path), check and save
        them: the updates of `outputs` (the forms follow through `values`)."""
        ws, updates = workspace.load(), {}
        for slot, value in values.items():
            found = check_slot(slot, workspace.normalize(slot, value))
            workspace.set_slot(ws, slot, value, usable=found.ok)
        try:
            workspace.save(ws)
            updates[self.problem] = problem_html("")
        except OSError as exc:
            updates[self.problem] = problem_html(f"the workspace was not saved: {exc}")
        for slot in values:
            updates.update(self._show(ws, slot)[0])
        return updates

    def restore(self) -> dict:
        """The saved workspace, checked: the updates of `outputs` on page load."""
        ws, updates = workspace.load(), {}
        for slot in workspace.SLOTS:
            updates.update(self._show(ws, slot)[0])
        updates[self.problem] = problem_html(ws.problem)
        return updates

    def wire(self, blocks: gr.Blocks) -> None:
        for slot in workspace.SLOTS:
            self.inputs[slot].input(lambda value, slot=slot: self.set_values(**{slot: value}),
                                    inputs=self.inputs[slot], outputs=self.outputs, show_progress="hidden")
            self.picker.open_with(self.browse[slot], slot, self.inputs[slot])
        self.picker.wire(lambda slot, path: self.set_values(**{slot: path}), self.outputs)
        self.inputs["model"].focus(self.library_choices, outputs=self.inputs["model"], show_progress="hidden")
        page_load.on_load(self.restore, self.outputs)

    def fill(self, slot: str, fields: list[tuple[gr.components.Component, bool]]) -> None:
        """Keep form fields on the slot's value: `fields` are (component, one folder per line)."""
        if not fields:
            return

        def values_for(value):
            if not value:
                return [gr.skip()] * len(fields)  # no choice made: the tabs keep what they have
            return [workspace.field_text(value, one_per_line) for _, one_per_line in fields]

        self.values[slot].change(values_for, inputs=self.values[slot], outputs=[c for c, _ in fields],
                                 show_progress="hidden")
