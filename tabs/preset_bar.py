"""Preset picker for a job's form: choose (loads it), reset to it, save, save as, delete (user presets), defaults."""
from __future__ import annotations

import gradio as gr

from core.config.presets import PresetError, delete_preset, find_preset, list_presets, save_preset
from tabs import page_load
from tabs.form import SchemaForm


def preset_choices(job: str) -> tuple[list[tuple[str, str]], list[str]]:
    found, errors = list_presets(job)
    by_name = {p.name: p for p in found}  # a user preset shadows a built-in of the same name
    return [(f"{n} (built-in)" if p.builtin else n, n) for n, p in by_name.items()], errors


class PresetBar:
    """Build inside a Blocks context (above the form); `wire(form, blocks)` connects it."""

    def __init__(self, job: str):
        self.job, self.form = job, None
        choices, _ = preset_choices(job)
        button = {"size": "sm", "min_width": 60, "scale": 0}
        with gr.Row(elem_classes=["preset-bar"], equal_height=True):
            self.choice = gr.Dropdown(choices=choices, value=None, label="Preset", elem_id=f"{job}-preset", scale=3,
                                      min_width=180)
            self.reset = gr.Button("Reset", elem_id=f"{job}-preset-reset", **button)
            self.save = gr.Button("Save", elem_id=f"{job}-preset-save", **button)
            self.delete = gr.Button("Delete", elem_id=f"{job}-preset-delete", **button)
            self.defaults = gr.Button("Defaults", elem_id=f"{job}-preset-defaults", **button)
            self.name = gr.Textbox(label="New preset name", elem_id=f"{job}-preset-name", scale=2, min_width=140)
            self.save_as = gr.Button("Save as", elem_id=f"{job}-preset-save-as", **button)
        self.message = gr.Markdown(elem_id=f"{job}-preset-message", elem_classes=["sf-message"])
        self.loads: list = []  # the events that load values into the form (a page chains more with .then)

    def _refresh(self, selected: str | None, message: str) -> tuple:
        choices, errors = preset_choices(self.job)
        if errors:
            message += "\n\n**Preset files that could not be read:**\n" + "\n".join(f"- {e}" for e in errors)
        return gr.Dropdown(choices=choices, value=selected), message

    def do_load(self, name: str | None):
        preset = find_preset(self.job, name) if name else None
        if preset is None:
            return [gr.skip()] * len(self.form.inputs) + ["Choose a preset to load."]
        note = f" (migrated from schema version {preset.migrated_from})" if preset.migrated_from else ""
        return self.form.show(preset.values) + [f"Loaded **{preset.name}**{note}. {preset.description}"]

    def do_save(self, name: str | None, *raw):
        if not name:
            return gr.skip(), "Choose the user preset to overwrite, or use Save as with a new name."
        try:
            save_preset(self.job, name, self.form.read(*raw), overwrite=True)
        except PresetError as err:
            return gr.skip(), f"**Not saved:** {err}"
        return self._refresh(name, f"Saved **{name}**.")

    def do_save_as(self, new_name: str, *raw):
        try:
            path = save_preset(self.job, new_name, self.form.read(*raw))
        except PresetError as err:
            return gr.skip(), f"**Not saved:** {err}"
        return self._refresh(new_name.strip(), f"Saved **{new_name.strip()}** to `{path}`.")

    def do_delete(self, name: str | None):
        try:
            path = delete_preset(self.job, name or "")
        except PresetError as err:
            return gr.skip(), f"**Not deleted:** {err}"
        return self._refresh(None, f"Deleted **{name}** (`{path}`).")

    def wire(self, form: SchemaForm, blocks: gr.Blocks) -> None:
        self.form = form
        form_inputs = form.inputs
        # When first shown: the user presets saved since the page was built; a preset chosen before (Try it) stays
        page_load.on_load(lambda shown: self._refresh(shown, ""), [self.choice, self.message], inputs=[self.choice])
        for trigger in (self.choice.input, self.reset.click):  # choosing a preset loads it
            self.loads.append(trigger(self.do_load, inputs=self.choice, outputs=[*form_inputs, self.message]))
        self.save.click(self.do_save, inputs=[self.choice, *form_inputs], outputs=[self.choice, self.message])
        self.save_as.click(self.do_save_as, inputs=[self.name, *form_inputs], outputs=[self.choice, self.message])
        self.delete.click(self.do_delete, inputs=self.choice, outputs=[self.choice, self.message])
        self.loads.append(self.defaults.click(lambda: self.form.show({}) + ["Defaults restored."],
                                              outputs=[*form_inputs, self.message]))
