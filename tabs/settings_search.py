"""Search over every setting of a form (label, parameter name, help): choosing a result opens its sub-tab
(and its "More settings"), scrolls to the field and highlights it; a hidden field says why instead."""
from __future__ import annotations

import gradio as gr

from core.config.search import search_fields
from tabs.form import SchemaForm, section_id

REVEAL_JS = "(id) => { if (id) window.sfReveal(id); return []; }"  # window.sfReveal: tabs/static/form.js


class SettingsSearch:
    """Build inside a Blocks context where the box goes; `wire(form)` once the form's sections exist."""

    def __init__(self, elem_prefix: str):
        self.box = gr.Textbox(placeholder="Search settings (name, label or help: snr, rank, warmup...)",
                              show_label=False, container=False, elem_id=f"{elem_prefix}-search", scale=2,
                              min_width=200)
        self.results = gr.Radio(choices=[], show_label=False, container=False, visible=False,
                                elem_id=f"{elem_prefix}-search-results", elem_classes=["sf-results"])
        self.message = gr.Markdown(elem_id=f"{elem_prefix}-search-message", elem_classes=["sf-message"])
        self.target = gr.Textbox(visible=False)  # elem_id of the field to reveal, read by REVEAL_JS

    def find(self, form: SchemaForm, query: str):
        query = (query or "").strip()
        if not query:
            return gr.Radio(choices=[], value=None, visible=False), ""
        found = [m for m in search_fields(form.model, query, limit=8) if m.name in form.components]
        if not found:
            return gr.Radio(choices=[], value=None, visible=False), f"No setting matches *{query}*."
        return gr.Radio(choices=[(f"{m.label} · {m.name} · {m.group}", m.name) for m in found], value=None,
                        visible=True), ""

    def choose(self, form: SchemaForm, name: str | None, facts: dict | None, *raw) -> list:
        """Outputs: the form's sub-tabs (when it has them), its "More settings" accordions, the message, the field to reveal."""
        skip = [gr.skip()] * (bool(form.tabs) + len(form.more))
        if not name:
            return [*skip, "", ""]
        meta = form.metas[name]
        if reason := form.why_hidden(name, raw, facts):
            return [*skip, f"**{meta['label']}** (`{name}`) is hidden: it {reason}.", ""]
        tabs = [gr.Tabs(selected=section_id(meta["group"])) if not meta["essential"] else gr.skip()] * bool(form.tabs)
        more = [gr.Accordion(open=True) if section == meta["group"] and meta["advanced"] else gr.skip()
                for section in form.more]
        return [*tabs, *more, "", f"{form.prefix}-{name}"]

    def wire(self, form: SchemaForm) -> None:
        self.box.change(lambda query: self.find(form, query), inputs=self.box, outputs=[self.results, self.message],
                        show_progress="hidden", trigger_mode="always_last")
        outputs = [*([form.tabs] if form.tabs else []), *form.more.values(), self.message, self.target]
        self.results.input(lambda name, facts, *raw: self.choose(form, name, facts, *raw),
                           inputs=[self.results, form.facts, *form.inputs], outputs=outputs,
                           show_progress="hidden").then(None, inputs=self.target, js=REVEAL_JS)
