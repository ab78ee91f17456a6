"""Beside the Training page's subsets table: import an sd-scripts dataset config (.toml) into it, export it as one."""
from __future__ import annotations

import gradio as gr
from pydantic import ValidationError

from core.config import ConfigError, format_validation_error
from core.config.dataset_toml import read_dataset_config, write_dataset_config
from core.config.subsets import DatasetSubset
from tabs.table_editor import records_of, rows_of


def import_toml(path: str) -> list:
    """[table rows, batch size, message] from the TOML at `path` (gr.skip() for what stays)."""
    if not (path or "").strip():
        return [gr.skip(), gr.skip(), "Give the path of an sd-scripts dataset config (.toml) first."]
    try:
        found = read_dataset_config(path.strip())
    except ConfigError as err:
        return [gr.skip(), gr.skip(), f"**Not imported:** {err}"]
    lines = [f"Imported {len(found.subsets)} subset(s) from `{path.strip()}`."]
    if found.batch_size is not None:
        lines.append(f"- train_batch_size set to the datasets' batch_size {found.batch_size}")
    lines += [f"- {note}" for note in found.notes]
    return [rows_of(DatasetSubset, found.subsets), gr.skip() if found.batch_size is None else found.batch_size,
            "\n".join(lines)]


def export_toml(path: str, rows, batch_size) -> str:
    """Write the table to a new TOML file at `path`; the message."""
    if not (path or "").strip():
        return "Give the path of the .toml file to write first."
    try:
        subsets = [DatasetSubset.model_validate(record) for record in records_of(DatasetSubset, rows)]
    except ValidationError as err:
        return f"**Not exported:** {format_validation_error(err, 'subsets table')}"
    if not subsets:
        return "**Not exported:** the table has no subsets."
    try:
        written = write_dataset_config(path.strip(), subsets, int(batch_size) if batch_size else None)
    except (ConfigError, OSError) as err:
        return f"**Not exported:** {err}"
    return f"Wrote {len(subsets)} subset(s) to `{written}` (sd-scripts: `--dataset_config {written}`)."


def toml_controls(table: gr.Dataframe, batch_size: gr.Number) -> None:
    """The path, Import and Export, under the table."""
    with gr.Row(equal_height=True):
        path = gr.Textbox(label="sd-scripts dataset config (.toml)", placeholder="path to a .toml file", scale=3,
                          elem_id="subsets-toml-path")
        load = gr.Button("Import into the table", elem_id="subsets-toml-import", scale=1)
        save = gr.Button("Export the table", elem_id="subsets-toml-export", scale=1)
    message = gr.Markdown(elem_id="subsets-toml-message", elem_classes=["sf-message"])
    load.click(import_toml, inputs=path, outputs=[table, batch_size, message])
    save.click(export_toml, inputs=[path, table, batch_size], outputs=message)
