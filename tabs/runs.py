"""Runs tab: every job run with its status; open one to read its log, config, result and outputs."""
from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import gradio as gr
import pandas as pd

from core.jobs.run_folder import RunFolder
from core.jobs.run_summary import last_metric, measured_memory, output_files
from core.jobs.runner import ACTIVE_STATES, grace_period, list_runs, stop_in_background
from core.jobs.tensorboard import has_tensorboard_logs, start_tensorboard
from tabs import page_load
from tabs.job_panel import STATE_TEXT, format_duration

COLUMNS = ["started", "job", "status", "duration", "final loss", "peak memory", "folder"]
NO_RUNS = ("**No runs yet.** Every job you start (a scan, tagging, the latent cache, a training...) gets a folder "
           "listed here, with its log, settings, results and output files. New here? *Try it* on the Dataset tab "
           "trains a tiny demo model on this computer in about a minute.")


def format_loss(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def runs_table() -> tuple[pd.DataFrame, list[str], str]:
    """The runs, newest first: the table, their folders, and what to say when there are none."""
    rows, folders = [], []
    for run in list_runs():
        started = datetime.fromtimestamp(run.started).strftime("%Y-%m-%d %H:%M:%S") if run.started else "?"
        duration = (run.ended or time.time()) - run.started if run.started else None
        rows.append([started, run.job, STATE_TEXT.get(run.state, run.state), format_duration(duration),
                     format_loss(last_metric(run.run_dir, "loss")), measured_memory(run.run_dir), run.run_dir.name])
        folders.append(str(run.run_dir))
    return pd.DataFrame(rows, columns=COLUMNS), folders, "" if rows else NO_RUNS


def outputs_markdown(run_dir: str) -> str:
    files = output_files(run_dir)
    if not files:
        return "**Output files:** none recorded."
    lines = [f"- `{path}`" + ("" if exists else " — *no longer exists (pruned, moved or deleted)*")
             for path, exists in files]
    return "**Output files**\n\n" + "\n".join(lines)


def run_details(run_dir: str) -> tuple[str, str, str, str, str]:
    """Header, log tail, config.json, result.json and output files of a run."""
    run = RunFolder(run_dir)
    status = run.read_status()
    header = f"**{status.get('job', '?')}** · {status.get('state', '?')} · `{run.path}`"
    if memory := measured_memory(run_dir):
        header += f"\n\nPeak memory: {memory}"
    if status.get("command"):
        header += f"\n\n```\n{status['command']}\n```"
    config = run.text_tail(run.config_file)
    result = run.text_tail(run.result_file) or "(no result: the run has not finished, or failed)"
    log = "\n".join(run.text_tail(run.log_file()).splitlines()[-300:])
    return header, log, config, result, outputs_markdown(run_dir)


def stop_run(run_dir: str) -> str:
    """Ask the run to stop and end its processes if it still runs after its job's grace period
    (in the background); says so."""
    stop_in_background(Path(run_dir))
    return (f"Stop requested for `{run_dir}`; if it still runs {grace_period(Path(run_dir)):g} s from now, "
            "its processes are ended.")


def tensorboard_link(run_dir: str) -> str:
    """Start (or find) TensorBoard for the run: a link to it, or why it did not start."""
    try:
        url = start_tensorboard(run_dir)
    except (ValueError, RuntimeError, OSError) as err:
        return f"**TensorBoard did not start.**\n\n```\n{err}\n```"
    return f"[Open TensorBoard]({url}) · `{url}` (reachable from this computer only)"


class RunsPage:
    """The Runs tab; `open(run_dir)` shows one run (the Queue tab opens an entry's run with it)."""

    def __init__(self):
        with gr.Tab("Runs", id="runs", elem_id="tab-runs"):
            gr.Markdown("Every job started from the GUI or the command line (`runs/`). Select a run to read it.")
            self.refresh = gr.Button("Refresh", elem_id="runs-refresh")
            self.folders = gr.State([])
            self.table = gr.Dataframe(pd.DataFrame(columns=COLUMNS), interactive=False, elem_id="runs-table")
            self.empty = gr.Markdown(elem_id="runs-empty")
            self.selected = gr.State(None)
            self.header = gr.Markdown(elem_id="run-header")
            with gr.Row():
                self.stop = gr.Button("Stop this run", variant="stop", interactive=False, elem_id="run-stop")
                self.tensorboard = gr.Button("Open TensorBoard", interactive=False, elem_id="run-tensorboard")
            self.tensorboard_info = gr.Markdown(elem_id="run-tensorboard-link")
            self.outputs = gr.Markdown(elem_id="run-outputs")
            self.log = gr.Textbox(label="Log (last lines)", lines=12, max_lines=12, interactive=False,
                                  elem_id="run-log")
            with gr.Row():
                self.config = gr.Code(label="config.json", language="json", interactive=False)
                self.result = gr.Code(label="result.json", language="json", interactive=False)

    @property
    def run_outputs(self) -> list:
        return [self.selected, self.header, self.log, self.config, self.result, self.outputs, self.stop,
                self.tensorboard, self.tensorboard_info]

    def show_run(self, run_dir: str) -> list:
        """One run's details, in `run_outputs` order."""
        active = RunFolder(run_dir).read_status().get("state") in ACTIVE_STATES
        return [run_dir, *run_details(run_dir), gr.update(interactive=active),
                gr.update(interactive=has_tensorboard_logs(run_dir)), ""]

    def open(self, run_dir: str) -> dict:
        """The runs listed again and `run_dir` shown."""
        table, folders, empty = runs_table()
        return {self.table: table, self.folders: folders, self.empty: empty,
                **dict(zip(self.run_outputs, self.show_run(run_dir)))}

    def wire(self) -> None:
        def select(folder_list: list[str], evt: gr.SelectData):
            return self.show_run(folder_list[evt.index[0]])

        def stop_selected(run_dir: str | None):
            return gr.update(interactive=False), stop_run(run_dir) if run_dir else gr.skip()

        def open_tensorboard(run_dir: str | None):
            return tensorboard_link(run_dir) if run_dir else gr.skip()

        self.refresh.click(runs_table, outputs=[self.table, self.folders, self.empty])
        page_load.on_load(runs_table, [self.table, self.folders, self.empty])
        self.table.select(select, inputs=self.folders, outputs=self.run_outputs)
        self.stop.click(stop_selected, inputs=self.selected, outputs=[self.stop, self.header])
        self.tensorboard.click(open_tensorboard, inputs=self.selected, outputs=self.tensorboard_info)


def build(blocks: gr.Blocks) -> RunsPage:
    page = RunsPage()
    page.wire()
    return page
