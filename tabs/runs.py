"""Runs tab: every job run with its status; open one to read its log, config and result."""
from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import gradio as gr
import pandas as pd

from core.runner import ACTIVE_STATES, list_runs, read_status, request_stop
from tabs.job_panel import STATE_TEXT, format_duration

COLUMNS = ["started", "job", "status", "duration", "folder"]


def runs_table() -> tuple[pd.DataFrame, list[str]]:
    rows, folders = [], []
    for run in list_runs():
        started = datetime.fromtimestamp(run.started).strftime("%Y-%m-%d %H:%M:%S") if run.started else "?"
        duration = (run.ended or time.time()) - run.started if run.started else None
        rows.append([started, run.job, STATE_TEXT.get(run.state, run.state), format_duration(duration),
                     run.run_dir.name])
        folders.append(str(run.run_dir))
    return pd.DataFrame(rows, columns=COLUMNS), folders


def _read(path: Path, limit: int = 200_000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", errors="replace")


def run_details(run_dir: str) -> tuple[str, str, str, str]:
    folder = Path(run_dir)
    status = read_status(folder)
    header = f"**{status.get('job', '?')}** · {status.get('state', '?')} · `{folder}`"
    if status.get("command"):
        header += f"\n\n```\n{status['command']}\n```"
    config = _read(folder / "config.json")
    result = _read(folder / "result.json") or "(no result: the run has not finished, or failed)"
    return header, "\n".join(_read(folder / "log.txt").splitlines()[-300:]), config, result


def build(blocks: gr.Blocks) -> None:
    with gr.Tab("Runs", id="runs", elem_id="tab-runs"):
        gr.Markdown("Every job started from the GUI or the command line (`runs/`). Select a run to read it.")
        refresh = gr.Button("Refresh", elem_id="runs-refresh")
        folders = gr.State([])
        table = gr.Dataframe(pd.DataFrame(columns=COLUMNS), interactive=False, elem_id="runs-table")
        selected = gr.State(None)
        header = gr.Markdown(elem_id="run-header")
        stop = gr.Button("Stop this run", variant="stop", interactive=False, elem_id="run-stop")
        log = gr.Textbox(label="Log (last lines)", lines=12, max_lines=12, interactive=False, elem_id="run-log")
        with gr.Row():
            config = gr.Code(label="config.json", language="json", interactive=False)
            result = gr.Code(label="result.json", language="json", interactive=False)

    def select(folder_list: list[str], evt: gr.SelectData):
        run_dir = folder_list[evt.index[0]]
        active = read_status(Path(run_dir)).get("state") in ACTIVE_STATES
        return (run_dir, *run_details(run_dir), gr.update(interactive=active))

    def stop_selected(run_dir: str | None):
        if run_dir:
            request_stop(Path(run_dir))
        return gr.update(interactive=False), f"Stop requested for `{run_dir}`."

    for trigger in (refresh.click, blocks.load):
        trigger(runs_table, outputs=[table, folders])
    table.select(select, inputs=folders, outputs=[selected, header, log, config, result, stop])
    stop.click(stop_selected, inputs=selected, outputs=[stop, header])
