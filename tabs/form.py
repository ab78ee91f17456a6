"""Schema -> Gradio form: one component per parameter, grouped, advanced ones folded away."""
from __future__ import annotations

from itertools import groupby

import gradio as gr
from pydantic import BaseModel

from core.config import FieldKind, field_kind, field_meta


def _bounds(field) -> dict:
    bounds = {}
    for m in field.metadata:
        for attr, key in (("ge", "minimum"), ("gt", "minimum"), ("le", "maximum"), ("lt", "maximum")):
            if getattr(m, attr, None) is not None:
                bounds[key] = getattr(m, attr)
    return bounds


def _component(model_name: str, name: str, field, kind: FieldKind, value) -> gr.components.Component:
    """The input of one parameter; an optional number's empty field means None."""
    common = {"label": name, "info": field.description, "elem_id": f"{model_name}-{name}"}
    if kind.kind == "bool":
        return gr.Checkbox(value=value, **common)
    if kind.kind == "choice":
        return gr.Dropdown(choices=list(kind.choices), value=value, **common)
    if kind.kind in ("int", "float"):
        return gr.Number(value=value, precision=0 if kind.kind == "int" else None, **_bounds(field), **common)
    if kind.kind == "multi_choice":
        return gr.CheckboxGroup(choices=list(kind.choices), value=list(value), **common)
    if kind.kind == "list":
        return gr.Textbox(value="\n".join(map(str, value)), lines=3, placeholder="one per line", **common)
    placeholder = {"dir": "path to a folder", "file": "path to a file"}.get(kind.widget)
    lines = 4 if kind.widget == "textarea" else 1
    return gr.Textbox(value=value, placeholder=placeholder, lines=lines, **common)


FORMS: list["SchemaForm"] = []  # every form of the app being built (tabs/app.py clears it first)


class SchemaForm:
    """Renders a job's schema model; reads the components back into a plain values dict.

    `bound`: workspace slot (dataset / model / output) -> the component of the field declared with it."""

    def __init__(self, model: type[BaseModel], values: dict | None = None, fields: list[str] | None = None):
        """`fields`: render only these parameters (another form on the page holds the rest)."""
        self.model = model
        self.names = list(fields or model.model_fields)
        defaults = model.model_construct().model_dump(mode="json")
        values = {**defaults, **(values or {})}
        metas = {n: field_meta(model, n) for n in self.names}
        self.kinds = {n: field_kind(model, n) for n in self.names}
        group_order = {g: i for i, g in enumerate(dict.fromkeys(metas[n]["group"] for n in self.names))}
        ordered = sorted(self.names, key=lambda n: (metas[n]["advanced"], group_order[metas[n]["group"]]))
        self.components: dict[str, gr.components.Component] = {}
        for (advanced, group), names in groupby(ordered, key=lambda n: (metas[n]["advanced"], metas[n]["group"])):
            title = f"{group} (advanced)" if advanced and "advanced" not in group.lower() else group
            with gr.Accordion(title, open=not advanced):
                for name in names:
                    self.components[name] = _component(model.__name__, name, model.model_fields[name],
                                                       self.kinds[name], values[name])
        self.bound = {metas[n]["workspace"]: self.components[n] for n in self.names if metas[n]["workspace"]}
        FORMS.append(self)

    @property
    def inputs(self) -> list:
        return [self.components[n] for n in self.names]

    def read(self, *raw) -> dict:
        """Component values (in `inputs` order) -> values dict for the schema (not yet validated)."""
        values = {}
        for name, value in zip(self.names, raw):
            if self.kinds[name].kind == "list" and isinstance(value, str):
                value = [line.strip() for line in value.splitlines() if line.strip()]
            values[name] = value
        return values

    def show(self, values: dict) -> list:
        """A values dict (defaults filled in) -> component values in `inputs` order."""
        full = {**self.model.model_construct().model_dump(mode="json"), **values}
        return ["\n".join(map(str, full[n])) if self.kinds[n].kind == "list" and isinstance(full[n], list)
                else full[n] for n in self.names]
