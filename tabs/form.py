"""Schema -> Gradio form: human labels with the parameter name beside them, sections (accordions or sub-tabs)
in a compact grid, advanced fields folded within their section, fields whose conditions fail hidden (values
kept) with one line per section that says why."""
from __future__ import annotations

import re
from typing import Callable, Literal

import gradio as gr
from pydantic import BaseModel

from core.config import FACTS, FieldKind, driving_fields, field_kind, field_meta, why_hidden
from tabs.block_sliders import BlockSliders
from tabs.table_editor import TableEditor, records_of, rows_of

GRID = "sf-grid"  # tabs/static/form.css lays these rows out as a grid of 2-4 columns


def section_id(group: str) -> str:
    """"Noise & loss" -> "noise-loss": the id of a section's sub-tab (its button is #<prefix>-<id>-button)."""
    return re.sub(r"[^a-z0-9]+", "-", group.lower()).strip("-")


def _bounds(field) -> dict:
    bounds = {}
    for m in field.metadata:
        for attr, key in (("ge", "minimum"), ("gt", "minimum"), ("le", "maximum"), ("lt", "maximum")):
            if getattr(m, attr, None) is not None:
                bounds[key] = getattr(m, attr)
    return bounds


def _component(model_name: str, name: str, field, kind: FieldKind, value, label: str,
               visible: bool) -> gr.components.Component:
    """The input of one parameter; an optional number's empty field means None. Its info line starts with the
    parameter's own name (the kohya name), then the help (one line, all of it on hover: form.css)."""
    wide = kind.kind in ("list", "path", "text")
    common = {"label": label, "info": f"`{name}` · {field.description}", "elem_id": f"{model_name}-{name}",
              "elem_classes": ["sf-field", "sf-wide"] if wide else ["sf-field"], "visible": visible}
    if kind.kind == "table":
        return TableEditor(kind.record, value, label, common["info"], common["elem_id"], visible).frame
    if kind.kind == "bool":
        return gr.Checkbox(value=value, **common)
    if kind.kind == "choice":
        return gr.Dropdown(choices=list(kind.choices), value=value, **common)
    if kind.kind in ("int", "float"):
        return gr.Number(value=value, precision=0 if kind.kind == "int" else None, min_width=120, **_bounds(field),
                         **common)
    if kind.kind == "multi_choice":
        return gr.CheckboxGroup(choices=list(kind.choices), value=list(value), **common)
    if kind.kind == "list":
        return gr.Textbox(value="\n".join(map(str, value)), lines=2, placeholder="one per line", **common)
    placeholder = {"dir": "path to a folder", "file": "path to a file"}.get(kind.widget)
    lines = 3 if kind.widget == "textarea" else 1
    return gr.Textbox(value=value, placeholder=placeholder, lines=lines, **common)


FORMS: list["SchemaForm"] = []  # every form of the app being built (tabs/app.py clears it first)


class SchemaForm:
    """Renders a job's schema model; reads the components back into a plain values dict.

    `layout`: "accordions" (one per section), "tabs" (one sub-tab per section, in `self.tabs`) or "flat" (one grid,
    the advanced fields folded in one "More settings": a form of a few fields inside a page's own section). With
    `render=False` nothing is laid out yet: the page calls `render_essentials()` where the first screen wants
    the essential fields, then `render_sections()` for the rest.
    `bound`: workspace slot (dataset / model / output) -> the component of the field declared with it."""

    def __init__(self, model: type[BaseModel], values: dict | None = None, fields: list[str] | None = None,
                 layout: Literal["accordions", "tabs", "flat"] = "accordions", render: bool = True,
                 extras: dict[str, Callable] | None = None):
        """`fields`: render only these parameters (another form on the page holds the rest). `extras`: field ->
        a function called with its component right after it is rendered (the page's own controls beside it)."""
        self.model, self.layout, self.extras = model, layout, extras or {}
        self.prefix = model.__name__  # of every elem_id: {prefix}-{field}, {prefix}-section-{section id}
        self.names = list(fields or model.model_fields)
        self.defaults = model.model_construct().model_dump(mode="json")
        self.initial = {**self.defaults, **(values or {})}
        self.metas = {n: field_meta(model, n) for n in self.names}
        self.kinds = {n: field_kind(model, n) for n in self.names}
        self.sections: dict[str, list[str]] = {}
        for name in self.names:
            self.sections.setdefault(self.metas[name]["group"], []).append(name)
        self.components: dict[str, gr.components.Component] = {}
        self.companions: dict[str, list] = {}  # field -> what its widget added, shown and hidden with it
        self.notes: dict[str, tuple[gr.Markdown, list[str]]] = {}  # section -> its note and the fields it lists
        self.more: dict[str, gr.Accordion] = {}  # section -> its folded "More settings"
        self.tabs: gr.Tabs | None = None
        self.facts = gr.State({})  # what the workspace knows (conditions.FACTS), copied by wire_facts
        self._hidden_now = self.hidden(self.initial)
        if render:
            self.render_sections()
        FORMS.append(self)

    # -- what applies -----------------------------------------------------------------------------------------
    def conditional(self) -> list[str]:
        return [n for n in self.names if self.metas[n]["applies"]]

    def hidden(self, values: dict) -> dict[str, str]:
        """Field -> why it is hidden, for `values` (the form's values plus the workspace facts)."""
        return {n: reason for n in self.conditional() if (reason := why_hidden(self.model, n, values))}

    def note(self, names: list[str], hidden: dict[str, str]) -> str:
        """One small line: which of `names` (a section's fields) are hidden, and why."""
        by_reason: dict[str, list[str]] = {}
        for name in names:
            if name in hidden:
                by_reason.setdefault(hidden[name], []).append(self.metas[name]["label"])
        return "Hidden: " + "; ".join(f"{', '.join(labels)} ({reason})" for reason, labels in by_reason.items()) \
            if by_reason else ""

    # -- layout -------------------------------------------------------------------------------------------------
    def _note(self, key: str, names: list[str]) -> None:
        text = self.note(names, self._hidden_now)
        self.notes[key] = (gr.Markdown(text, visible=bool(text), elem_classes=["sf-hidden-note"]), names)

    def _render(self, names: list[str]) -> None:
        with gr.Row(elem_classes=[GRID]):
            for name in names:
                self.components[name] = _component(
                    self.prefix, name, self.model.model_fields[name], self.kinds[name], self.initial[name],
                    self.metas[name]["label"], name not in self._hidden_now)
                if name in self.extras:
                    self.extras[name](self.components[name])
                if self.kinds[name].widget == "block_weights":
                    self.companions[name] = [BlockSliders(self.components[name], name, self.facts,
                                                          name not in self._hidden_now).row]

    def render_essentials(self, exclude: tuple[str, ...] = ()) -> None:
        """The essential fields (those not in `exclude`) in one grid, outside their sections."""
        names = [n for n in self.names if self.metas[n]["essential"] and n not in exclude]
        self._render(names)
        self._note("essentials", names)

    def _render_section(self, section: str, names: list[str]) -> None:
        self._note(section, names)
        basic = [n for n in names if not self.metas[n]["advanced"]]
        advanced = [n for n in names if self.metas[n]["advanced"]]
        if basic:
            self._render(basic)
        if advanced and basic:
            with gr.Accordion("More settings", open=False, elem_classes=["sf-more"]) as self.more[section]:
                self._render(advanced)
        elif advanced:
            self._render(advanced)

    def render_sections(self) -> None:
        """Every field not rendered yet, by section, then the conditions wired."""
        todo = {s: [n for n in names if n not in self.components] for s, names in self.sections.items()}
        todo = {s: names for s, names in todo.items() if names}
        if self.layout == "flat":
            self._render_section("", [n for names in todo.values() for n in names])
        elif self.layout == "tabs":
            with gr.Tabs(overflow_behavior="wrap", elem_classes=["sf-tabs"]) as self.tabs:
                for section, names in todo.items():
                    with gr.Tab(section, id=section_id(section), elem_id=f"{self.prefix}-section-{section_id(section)}",
                                render_children=False):  # a sub-tab renders when first opened
                        self._render_section(section, names)
        else:
            for section, names in todo.items():
                all_advanced = all(self.metas[n]["advanced"] for n in names)
                with gr.Accordion(section, open=not all_advanced, elem_classes=["sf-section"],
                                  elem_id=f"{self.prefix}-section-{section_id(section)}"):
                    self._render_section(section, names)
        self._wire_conditions()

    # -- conditions ---------------------------------------------------------------------------------------------
    def _driving(self) -> list[str]:
        return [f for f in driving_fields(self.model) if f in self.components]

    def apply(self, values: dict) -> list:
        """The updates for `values` (the form's values plus the workspace facts): each conditional field shown or
        hidden (its value untouched), then each section's note; in `condition_outputs` order."""
        hidden = self.hidden(values)
        return ([gr.update(visible=n not in hidden) for n in self.conditional() for _ in self._with_companions(n)] +
                [gr.update(value=text, visible=bool(text)) for text in (self.note(ns, hidden) for _, ns in
                                                                        self.notes.values())])

    @property
    def condition_outputs(self) -> list:
        return [*(c for n in self.conditional() for c in self._with_companions(n)),
                *(note for note, _ in self.notes.values())]

    def _with_companions(self, name: str) -> list:
        return [self.components[name], *self.companions.get(name, [])]

    def _wire_conditions(self) -> None:
        if not self.conditional():
            return
        driving = self._driving()

        def refresh(*raw):
            *own, facts = raw
            return self.apply({**dict(zip(driving, self._read_some(driving, own))), **(facts or {})})

        gr.on([*(self.components[f].change for f in driving), self.facts.change], refresh,
              inputs=[*(self.components[f] for f in driving), self.facts], outputs=self.condition_outputs,
              show_progress="hidden", trigger_mode="always_last", queue=False)

    def wire_facts(self, facts: gr.State) -> None:
        """Follow the workspace's facts ({"model_arch": ...}): the fields that depend on them show or hide."""
        if not any(f in FACTS for f in driving_fields(self.model)):
            return
        facts.change(lambda value: dict(value or {}), inputs=facts, outputs=self.facts, show_progress="hidden",
                     queue=False)

    def why_hidden(self, name: str, raw: tuple, facts: dict | None) -> str | None:
        """Why field `name` is hidden now (None when shown), from the component values in `inputs` order."""
        return why_hidden(self.model, name, {**self.read(*raw), **(facts or {})})

    # -- values -------------------------------------------------------------------------------------------------
    @property
    def bound(self) -> dict:
        return {self.metas[n]["workspace"]: self.components[n] for n in self.names if self.metas[n]["workspace"]}

    @property
    def inputs(self) -> list:
        return [self.components[n] for n in self.names]

    def _read_some(self, names: list[str], raw) -> list:
        return [[line.strip() for line in value.splitlines() if line.strip()]
                if self.kinds[name].kind == "list" and isinstance(value, str)
                else records_of(self.kinds[name].record, value) if self.kinds[name].kind == "table" else value
                for name, value in zip(names, raw)]

    def read(self, *raw) -> dict:
        """Component values (in `inputs` order) -> values dict for the schema (not yet validated)."""
        return dict(zip(self.names, self._read_some(self.names, raw)))

    def show(self, values: dict) -> list:
        """A values dict (defaults filled in) -> component values in `inputs` order."""
        full = {**self.defaults, **values}
        return ["\n".join(map(str, full[n])) if self.kinds[n].kind == "list" and isinstance(full[n], list)
                else rows_of(self.kinds[n].record, full[n]) if self.kinds[n].kind == "table" else full[n]
                for n in self.names]
