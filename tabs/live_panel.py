"""The run always in view: a side panel on every tab that follows the newest active run of any job (started from a
tab, the command line or a queue), else the newest run, and says when a run ends.

Two timers: a fast one tails the followed run while it is active (progress, curves, samples, last log lines); a
slow one notices runs started elsewhere and runs that ended while another was followed. A start from a job panel
of this page opens the panel at once. Reading every run's status on each slow tick stays cheap: `RunIndex` reads a
status.json again only when the file changed.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable

import gradio as gr

from core.fsutil import runs_root
from core.jobs.run_folder import RunFolder
from core.jobs.runner import ACTIVE_STATES, request_stop, run_state
from tabs import job_panel, page_load
from tabs.charts import line_plot, line_summary
from tabs.job_panel import STATE_TEXT, advance, format_duration, new_run, progress_html
from tabs.training_panel import counts, curves, gallery, smoothing_slider

FOLLOW_S, WATCH_S = 1.0, 2.5  # seconds between ticks: the followed run, the run folders
LOG_LINES, SAMPLES = 8, 4
LOG_TAIL_BYTES = 64 * 1024  # how far back in a run's log.txt the panel starts reading
ENDINGS = {"done": ("finished", gr.Info), "stopped": ("was stopped", gr.Info),
           "error": ("failed", gr.Warning), "invalid": ("did not start: invalid settings", gr.Warning),
           "killed": ("ended unexpectedly", gr.Warning)}


class RunIndex:
    """Every run folder's status, read again only when its status.json changed (hundreds of runs stay cheap)."""

    def __init__(self):
        self._statuses: dict[str, tuple[tuple, dict]] = {}
        self._lock = threading.Lock()

    def statuses(self, root: Path | None = None) -> list[tuple[Path, dict]]:
        """(run folder, status) of every run, newest first."""
        root = Path(root) if root else runs_root()
        try:
            entries = list(os.scandir(root))
        except OSError:
            return []
        with self._lock:
            seen, found = {}, []
            for entry in entries:
                try:
                    stat = os.stat(os.path.join(entry.path, "status.json"))
                except OSError:
                    continue
                key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
                cached = self._statuses.get(entry.path)
                status = cached[1] if cached and cached[0] == key else RunFolder(entry.path).read_status()
                if status:
                    seen[entry.path] = (key, status)
                    found.append((Path(entry.path), status))
            self._statuses = seen
        return sorted(found, key=lambda item: item[1].get("started") or 0, reverse=True)

    def active(self, root: Path | None = None) -> list[str]:
        """The run folders of active runs, newest first (a run whose process is gone is not)."""
        return [str(path) for path, status in self.statuses(root)
                if status.get("state") in ACTIVE_STATES and run_state(path) in ACTIVE_STATES]

    def followed(self, root: Path | None = None) -> str | None:
        """The run the panel shows: the newest active run of any job, else the newest run."""
        active = self.active(root)
        if active:
            return active[0]
        newest = self.statuses(root)
        return str(newest[0][0]) if newest else None


INDEX = RunIndex()


def status_markdown(run: dict) -> str:
    """Job, run folder name, state and time."""
    state = run.get("state", "starting")
    status = RunFolder(run["run_dir"]).read_status()
    started, ended = status.get("started"), status.get("ended")
    elapsed = (ended or time.time()) - started if started else None
    text = f"**{run['job']}** · {STATE_TEXT.get(state, state)} · {format_duration(elapsed)}  \n" \
           f"`{Path(run['run_dir']).name}`"
    if run.get("error"):
        text += f"  \n**Error:** {run['error']}"
    return text


def ending(run: dict) -> tuple[str, Callable]:
    """What the page says when the run has ended, and how (gr.Info or gr.Warning)."""
    outcome, level = ENDINGS.get(run["state"], (run["state"], gr.Info))
    text = f"{run['job']} run {Path(run['run_dir']).name} {outcome}"
    if run["state"] == "error" and run.get("error"):
        text += f": {run['error']}"
    return text, level


def announce(run: dict) -> str:
    """Toast the run's end; the text for the browser notification."""
    text, level = ending(run)
    level(text, title="Run ended")
    return text


def attached(run_dir: str | Path) -> tuple[dict, bool]:
    """A fresh follow of the run (its events from the start, for the curves; its log from near the end), and
    whether it has ended already."""
    run = new_run(run_dir)
    log = RunFolder(run_dir).log_file()
    try:
        run["log_offset"] = max(log.stat().st_size - LOG_TAIL_BYTES, 0)
    except OSError:
        pass
    partial = run["log_offset"] > 0  # the first line read began before the offset
    run, _, ended = advance(run, LOG_LINES + partial)
    run["lines"] = run["lines"][-LOG_LINES:]
    return run, ended


class LivePanel:
    """Build inside the Blocks, outside the tabs; `wire(blocks)` once every job panel exists."""

    def __init__(self):
        self.run = gr.State(None)
        self.active = gr.State([])  # runs active at the last slow tick: their end is announced
        self.watched = gr.State(None)  # what the slow tick saw: the active runs and the run to follow
        with gr.Sidebar(label="Run", position="right", open=False, width=380, elem_id="live-panel") as self.sidebar:
            with gr.Row(equal_height=True):
                self.status = gr.Markdown("No run yet.", elem_id="live-status")
                self.stop = gr.Button("Stop", variant="stop", size="sm", interactive=False, scale=0,
                                      min_width=70, elem_id="live-stop")
            self.progress = gr.HTML(progress_html(None), elem_id="live-progress")
            self.log = gr.Textbox(label="Last lines of the log", lines=LOG_LINES, max_lines=LOG_LINES,
                                  interactive=False, elem_id="live-log")
            with gr.Column(visible=False, elem_id="live-training") as self.training:
                self.loss_chart = line_plot("Loss", "live-loss-chart", height=150)
                self.loss_summary = gr.HTML(line_summary({}), elem_id="live-loss-summary")
                self.smoothing = smoothing_slider("live-smoothing", info=False)
                self.lr_chart = line_plot("Learning rate", "live-lr-chart", height=110, y_format=".1e")
                self.lr_summary = gr.HTML(line_summary({}), elem_id="live-lr-summary")
                self.gallery = gr.Gallery(label="Newest samples", columns=SAMPLES, height=100, allow_preview=True,
                                          elem_id="live-samples")
            self.notify = gr.Button("Notify me when a run ends", size="sm", elem_id="live-notify")
            self.ended = gr.Textbox(visible="hidden", elem_id="live-ended")
        self.follow_timer = gr.Timer(FOLLOW_S, active=False)
        self.watch_timer = gr.Timer(WATCH_S)

    @property
    def charts(self) -> list:
        return [self.loss_chart, self.loss_summary, self.lr_chart, self.lr_summary]

    @property
    def outputs(self) -> list:
        return [self.run, self.active, self.sidebar, self.status, self.stop, self.progress, self.training,
                *self.charts, self.gallery, self.log, self.ended, self.follow_timer]

    def view(self, run: dict, weight: float, redraw: bool) -> dict:
        """Updates showing `run` (its curves and samples too when `redraw`)."""
        active = run["state"] in ACTIVE_STATES
        updates = {self.run: run, self.status: status_markdown(run), self.progress: progress_html(run),
                   self.stop: gr.update(interactive=active), self.log: "\n".join(run["lines"]),
                   self.follow_timer: gr.Timer(active=active)}
        if redraw:
            training = bool(run["metrics"] or run["images"])
            updates[self.training] = gr.Column(visible=training)
            if training:
                updates.update(zip(self.charts, curves(run, weight)))
                updates[self.gallery] = gallery(run["images"], SAMPLES, thumb=192)
        return updates

    def attach(self, run_dir: str | None, weight: float, was_active: bool) -> dict:
        """Follow `run_dir`; a run known to be active opens the panel (and has its end announced, however soon)."""
        if not run_dir:
            return {self.run: gr.skip()}
        run, ended = attached(run_dir)
        updates = self.view(run, weight, redraw=True)
        if was_active:
            updates[self.sidebar] = gr.Sidebar(open=True)
        if was_active and ended:
            updates[self.ended] = announce(run)
        return updates

    def load(self, weight: float) -> dict:
        """A fresh page: the run to follow (the panel opens if it is active) and the active runs."""
        active = INDEX.active()
        run_dir = INDEX.followed()
        return {**self.attach(run_dir, weight, was_active=run_dir in active), self.active: active}

    def follow(self, run: dict | None, weight: float) -> dict:
        """A tick of the followed run; its end is announced."""
        if not run:
            return {self.follow_timer: gr.Timer(active=False)}
        before = counts(run)
        run, _, finished = advance(run, LOG_LINES)
        updates = self.view(run, weight, redraw=counts(run) != before)
        if finished:
            updates[self.ended] = announce(run)
        return updates

    def watch(self, run: dict | None, known_active: list[str], weight: float) -> dict:
        """A slow tick: announce runs that ended unfollowed, switch to the run to follow when it changed."""
        active = INDEX.active()
        followed = run["run_dir"] if run else None
        updates = {self.active: active}
        ended = [announce({**new_run(d), "state": run_state(Path(d)), "error": RunFolder(d).read_status().get("error")})
                 for d in known_active if d not in active and d != followed]
        if ended:
            updates[self.ended] = "\n".join(ended)
        unfinished = run and run["state"] in ACTIVE_STATES and followed not in active  # the fast tick ends it
        chosen = INDEX.followed()
        if chosen and chosen != followed and not unfinished:
            updates.update(self.attach(chosen, weight, was_active=chosen in active))
        return updates

    def do_stop(self, run: dict | None) -> dict:
        if not run or run["state"] not in ACTIVE_STATES:
            return {self.run: gr.skip()}
        request_stop(Path(run["run_dir"]))
        return {self.status: status_markdown(run) + " · **stopping…**", self.stop: gr.update(interactive=False)}

    def wire(self, blocks: gr.Blocks) -> None:
        hidden = {"show_progress": "hidden"}
        page_load.on_load(self.load, self.outputs, inputs=[self.smoothing])
        self.follow_timer.tick(self.follow, inputs=[self.run, self.smoothing], outputs=self.outputs, **hidden)
        # The slow tick updates one State; only a change of it (a run started or ended) updates the panel, so an
        # idle page costs the browser next to nothing between runs.
        self.watch_timer.tick(lambda: [INDEX.active(), INDEX.followed()], outputs=self.watched, **hidden)
        self.watched.change(self.watch, inputs=[self.run, self.active, self.smoothing], outputs=self.outputs,
                            **hidden)
        self.stop.click(self.do_stop, inputs=self.run, outputs=self.outputs)
        self.smoothing.release(lambda run, weight: curves(run, weight), inputs=[self.run, self.smoothing],
                               outputs=self.charts, **hidden)
        self.notify.click(None, js="() => window.studioLive.askPermission()")
        self.ended.change(None, inputs=self.ended, js="(text) => window.studioLive.notify(text)")
        for panel in job_panel.PANELS:
            if panel.started._id in blocks.blocks:  # a panel of this page (not of an app built earlier)
                panel.started.change(lambda run_dir, weight: self.attach(run_dir, weight, was_active=True),
                                     inputs=[panel.started, self.smoothing], outputs=self.outputs, **hidden)
        job_panel.PANELS.clear()


def build(blocks: gr.Blocks) -> None:
    """Build the side panel inside `blocks` (outside the tabs) and wire it."""
    LivePanel().wire(blocks)
