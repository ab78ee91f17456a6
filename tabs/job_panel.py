"""The job panel every tab uses: live log, progress with rate and ETA, status, Stop, command.

Its state is the run folder plus byte offsets into its log and events; a timer tails both
(and ends a job that outlives its stop grace period). On page load it reattaches to the newest
run of its job, so a refresh or a GUI restart loses nothing. `new_run` and `advance` are the
same tailing for the side panel (tabs/live_panel.py), which follows whatever job runs.
"""
from __future__ import annotations

import html
import time
from pathlib import Path

import gradio as gr

from core.config import ConfigError
from core.jobs.run_folder import RunFolder
from core.jobs.runner import (
    ACTIVE_STATES,
    enforce_stop,
    format_duration,
    list_runs,
    progress_text,
    request_stop,
    run_state,
    start_job,
)
from tabs import page_load

STATE_TEXT = {"starting": "starting…", "running": "running", "done": "done", "stopped": "stopped",
              "error": "failed", "invalid": "invalid settings", "killed": "ended unexpectedly"}


def progress_html(run: dict | None) -> str:
    if not run or not run.get("total"):
        return "<div class='job-progress'></div>"
    step, total = run["step"], run["total"]
    pct = 100.0 * step / total if total else 0.0
    text = progress_text(step, total, run.get("samples", []), run.get("unit", ""), run.get("state") in ACTIVE_STATES)
    return (f"<div class='job-progress' data-step='{step}' data-total='{total}'>"
            f"<div style='background:#ddd;border-radius:4px;height:12px'><div style='width:{pct:.1f}%;"
            f"background:#f97316;height:12px;border-radius:4px'></div></div>"
            f"<div style='font-size:0.9em'>{html.escape(text)}</div></div>")


def status_markdown(run: dict) -> str:
    state = run.get("state", "starting")
    status = RunFolder(run["run_dir"]).read_status()
    started, ended = status.get("started"), status.get("ended")
    elapsed = (ended or time.time()) - started if started else None
    text = f"**{STATE_TEXT.get(state, state)}** · `{run['run_dir']}` · {format_duration(elapsed)}"
    if run.get("warnings"):
        text += f" · {run['warnings']} warning(s)"
    if run.get("error"):
        text += f"\n\n**Error:** {run['error']}"
    return text


def new_run(run_dir: str | Path) -> dict:
    """What a panel keeps of a followed run: offsets into its files and what they said so far."""
    return {"run_dir": str(run_dir), "job": RunFolder(run_dir).read_status().get("job", "?"), "log_offset": 0,
            "events_offset": 0, "lines": [], "step": 0, "total": 0, "unit": "", "samples": [], "warnings": 0,
            "error": None, "state": "starting", "metrics": {}, "images": [], "checkpoints": []}


def advance(run: dict, max_lines: int) -> tuple[dict, list[str], bool]:
    """Read what the run wrote since the last call (ending a job that outlived its stop grace period): the
    updated run, its new log lines and whether it has just finished."""
    run = dict(run)
    run_dir = Path(run["run_dir"])
    folder = RunFolder(run_dir)
    log, events = folder.log_tail(run["log_offset"]), folder.events_tail(run["events_offset"])
    new_lines = log.read_lines()
    for event in events.read_events():
        apply_event(run, event)
    run["log_offset"], run["events_offset"] = log.offset, events.offset
    enforce_stop(run_dir)
    was_active, run["state"] = run["state"] in ACTIVE_STATES, run_state(run_dir)
    finished = was_active and run["state"] not in ACTIVE_STATES
    if finished and run["state"] == "killed":
        new_lines += _console_tail(folder)
    if new_lines:
        run["lines"] = (run["lines"] + new_lines)[-max_lines:]
    return run, new_lines, finished


def apply_event(run: dict, event: dict) -> None:
    kind = event.get("event")
    if kind == "progress":
        run["step"], run["total"], run["unit"] = event.get("step", 0), event.get("total", 0), event.get("unit", "")
        run["samples"] = (run["samples"] + [(event.get("time", time.time()), run["step"])])[-30:]
    elif kind == "warning":
        run["warnings"] += 1
    elif kind == "error":
        run["error"] = event.get("message")
    elif kind == "metric":
        run["metrics"].setdefault(event.get("name", "?"), []).append((event.get("step", 0), event.get("value")))
    elif kind == "image":
        run["images"].append(event.get("path"))
    elif kind == "checkpoint":
        run["checkpoints"].append((event.get("path"), event.get("step")))


PANELS: list["JobPanel"] = []  # every job panel built (tabs/live_panel.py opens itself when one starts a job)


class JobPanel:
    """Build inside a Blocks context; call `wire(blocks)` once the page is laid out."""

    def __init__(self, job: str, max_lines: int = 1000, elem_prefix: str = ""):
        """`elem_prefix`: prefix of the element ids (default: the job name); a second panel for the
        same job on the page needs its own."""
        self.job, self.max_lines = job, max_lines
        prefix = elem_prefix or job
        self.run = gr.State(None)
        self.started = gr.State(None)  # run folder of the last run started from this panel
        self.finished = gr.State(None)  # run folder of the last finished run; tabs hook .change
        with gr.Group(elem_id=f"{prefix}-job-panel"):
            with gr.Row():
                self.status = gr.Markdown("No run yet.", elem_id=f"{prefix}-status")
                self.stop = gr.Button("Stop", variant="stop", interactive=False, scale=0,
                                      elem_id=f"{prefix}-stop")
            self.progress = gr.HTML(progress_html(None), elem_id=f"{prefix}-progress")
            self.log = gr.Textbox(label="Log", lines=10, max_lines=10, autoscroll=True,
                                  interactive=False, elem_id=f"{prefix}-log")
            self.command = gr.Textbox(label="Command (runs the same job from a terminal)",
                                      interactive=False, buttons=["copy"], elem_id=f"{prefix}-command")
        self.timer = gr.Timer(1.0, active=False)  # ticks only while a run is followed
        PANELS.append(self)

    @property
    def outputs(self) -> list:
        return [self.run, self.started, self.finished, self.status, self.progress, self.log, self.command, self.stop,
                self.timer]

    def _unchanged(self) -> dict:
        """No update (gradio reads an empty dict as one value, not as "no updates")."""
        return {self.run: gr.skip()}

    def launch(self, values: dict, name: str = "") -> dict:
        """Start the job with `values`: the updates for `outputs` (an error shown if invalid)."""
        try:
            run_dir = start_job(self.job, values, name)
        except ConfigError as err:
            return {self.status: f"**Invalid settings** — nothing was started:\n\n```\n{err}\n```"}
        return {**self._attach(run_dir), self.started: str(run_dir)}

    def _attach(self, run_dir: Path) -> dict:
        updates = self.poll(new_run(run_dir))
        updates[self.command] = RunFolder(run_dir).read_status().get("command", "")
        updates[self.timer] = gr.Timer(active=updates[self.run]["state"] in ACTIVE_STATES)
        return updates

    def poll(self, run: dict | None) -> dict:
        if not run:
            return self._unchanged()
        run, new_lines, finished = advance(run, self.max_lines)
        updates = {self.run: run, self.status: status_markdown(run), self.progress: progress_html(run),
                   self.stop: gr.update(interactive=run["state"] in ACTIVE_STATES)}
        if new_lines:
            updates[self.log] = "\n".join(run["lines"])
        if finished:
            updates[self.finished] = run["run_dir"]
            updates[self.timer] = gr.Timer(active=False)
        return updates

    def request_stop(self, run: dict | None) -> dict:
        if not run or run.get("state") not in ACTIVE_STATES:
            return self._unchanged()
        request_stop(Path(run["run_dir"]))
        return {self.status: status_markdown(run) + " · **stopping…**",
                self.stop: gr.update(interactive=False)}

    def reattach(self) -> dict:
        """On page load: follow the newest active run of this job, else show the newest run."""
        runs = list_runs(self.job)
        active = [r for r in runs if r.state in ACTIVE_STATES]
        chosen = (active or runs or [None])[0]
        if chosen is None:
            return self._unchanged()
        updates = self._attach(chosen.run_dir)
        if chosen.state not in ACTIVE_STATES:
            updates[self.finished] = str(chosen.run_dir)
        return updates

    @property
    def poll_inputs(self) -> list:
        """The inputs of `poll`: the run (a subclass may read more controls)."""
        return [self.run]

    def wire(self, blocks: gr.Blocks) -> None:
        self.timer.tick(self.poll, inputs=self.poll_inputs, outputs=self.outputs, show_progress="hidden")
        self.stop.click(self.request_stop, inputs=self.run, outputs=self.outputs)
        page_load.on_load(self.reattach, self.outputs)


def _console_tail(folder: RunFolder, lines: int = 30) -> list[str]:
    """Last lines the process printed outside the log (a crash before logging started)."""
    tail = folder.text_tail(folder.console_file).strip().splitlines()[-lines:]
    return ["--- process output ---", *tail] if tail else []
