"""A table of typed records for a schema field that is a list of them (the trainer's dataset subsets): one row per
record, one column per record field (its kohya name as the header, the labels and help listed below), buttons that
add a row and remove or move the selected one. An empty cell is the record field's None (the run's setting)."""
from __future__ import annotations

import gradio as gr
from pydantic import BaseModel

from core.config import field_kind, field_meta


def columns_of(record: type[BaseModel]) -> list[str]:
    return list(record.model_fields)


def datatypes(record: type[BaseModel]) -> list[str]:
    """A checkbox column for a required bool, a number column for a required number, text for the others (an
    optional setting's empty cell means None)."""
    types = []
    for name in columns_of(record):
        kind = field_kind(record, name)
        types.append("str" if kind.optional else {"bool": "bool", "int": "number", "float": "number"}.get(kind.kind,
                                                                                                          "str"))
    return types


def rows_of(record: type[BaseModel], records: list) -> list[list]:
    """Records (dicts or models) -> table rows."""
    rows = []
    for item in records:
        values = item.model_dump() if isinstance(item, BaseModel) else dict(item)
        row = []
        for name, kind in zip(columns_of(record), datatypes(record)):
            value = values.get(name, record.model_fields[name].default)
            row.append("" if value is None else (str(value).lower() if isinstance(value, bool) and kind == "str"
                                                 else value))
        rows.append(row)
    return rows


def records_of(record: type[BaseModel], rows) -> list[dict]:
    """Table rows -> record dicts for the schema (not yet validated): blank cells left out, rows that hold only
    defaults (a row added and not filled in) skipped."""
    records = []
    for row in _plain(rows):
        values = {name: cell.strip() if isinstance(cell, str) else cell
                  for name, cell in zip(columns_of(record), row)}
        values = {name: cell for name, cell in values.items() if cell not in ("", None)}
        if any(cell != record.model_fields[name].default for name, cell in values.items()):
            records.append(values)
    return records


def help_markdown(record: type[BaseModel]) -> str:
    return "\n".join(f"- `{name}` **{field_meta(record, name)['label']}**: {record.model_fields[name].description}"
                     for name in columns_of(record))


class TableEditor:
    """The table, its buttons and the column help; `frame` is the input component."""

    def __init__(self, record: type[BaseModel], value: list, label: str, info: str, elem_id: str, visible: bool):
        self.record = record
        blank = rows_of(record, [{}])[0]
        with gr.Column(elem_classes=["sf-field", "sf-wide", "sf-table"], visible=visible):
            self.frame = gr.Dataframe(
                value=rows_of(record, value), headers=columns_of(record), datatype=datatypes(record),
                column_count=len(blank), type="array", interactive=True, label=label, elem_id=elem_id,
                column_widths=[f"{max(110, 9 * len(name) + 40) if i else 320}px"
                               for i, name in enumerate(columns_of(record))],
                pinned_columns=1, show_row_numbers=True, show_search="none")
            gr.Markdown(info, elem_classes=["sf-table-info"])
            with gr.Row():
                add = gr.Button("Add a row", size="sm", elem_id=f"{elem_id}-add")
                remove = gr.Button("Remove the selected row", size="sm", elem_id=f"{elem_id}-remove")
                up = gr.Button("Move up", size="sm", elem_id=f"{elem_id}-up")
                down = gr.Button("Move down", size="sm", elem_id=f"{elem_id}-down")
            with gr.Accordion("Columns", open=False):
                gr.Markdown(help_markdown(record))
        selected = gr.State(None)

        def select(event: gr.SelectData):
            return event.index[0] if isinstance(event.index, (list, tuple)) else event.index

        self.frame.select(select, outputs=selected, show_progress="hidden", queue=False)
        add.click(lambda rows: [*(rows or []), list(blank)], inputs=self.frame, outputs=self.frame, queue=False)
        remove.click(lambda rows, i: (_without(rows, i), None), inputs=[self.frame, selected],
                     outputs=[self.frame, selected], queue=False)
        up.click(lambda rows, i: _moved(rows, i, -1), inputs=[self.frame, selected], outputs=[self.frame, selected],
                 queue=False)
        down.click(lambda rows, i: _moved(rows, i, 1), inputs=[self.frame, selected], outputs=[self.frame, selected],
                   queue=False)


def _plain(rows) -> list[list]:
    return rows.values.tolist() if hasattr(rows, "values") and hasattr(rows, "columns") else list(rows or [])


def _without(rows, index: int | None) -> list[list]:
    rows = _plain(rows)
    return rows if index is None or not 0 <= index < len(rows) else rows[:index] + rows[index + 1:]


def _moved(rows, index: int | None, step: int) -> tuple[list[list], int | None]:
    """The rows with the selected one moved by `step`, and its new index."""
    rows = _plain(rows)
    if index is None or not 0 <= index < len(rows) or not 0 <= index + step < len(rows):
        return rows, index
    rows[index], rows[index + step] = rows[index + step], rows[index]
    return rows, index + step
