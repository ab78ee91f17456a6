"""Queue tab: jobs lined up to run one after another (core/queue), in order with their status; move, remove,
re-queue, stop the running one, pause and resume, what a failure does; and the workspace dataset's whole
preparation and training queued in one click. *Add to queue* beside each Start button (`queue_job`) puts a job
here with its settings frozen as they are. The queue runs in a process of its own: closing the browser or
restarting the GUI does not stop it."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import gradio as gr
import pandas as pd

from core.config import ConfigError
from core.queue import store
from core.queue.chain import CHAIN_STEPS, Step, add_chain
from core.queue.runner import ensure_runner, runner_holder
from tabs import page_load
from tabs.preset_bar import preset_choices
from tabs.workspace import WorkspaceBar

COLUMNS = ["#", "id", "status", "job", "what it does", "why", "run folder"]
ON_FAILURE = [("go on with the next job", "skip"), ("pause the queue", "stop")]
STEP_LABELS = {"tag": "WD14 tags", "clean": "clean captions", "cache": "cache latents", "train": "train"}
POLL_S = 2.0


def queue_job(job: str, values: dict) -> str:
    """*Add to queue*: the job with `values` (validated and frozen now) queued and the runner started; what
    happened, in one message."""
    try:
        entry = store.add(job, values)
    except ConfigError as err:
        return f"**Not queued: invalid settings**\n\n```\n{err}\n```"
    except store.QueueError as err:
        return f"**Not queued:** {err}"
    ensure_runner()
    return f"Queued as {entry.label()}: {entry.summary}. It starts when the jobs before it are done (Queue tab)."


def queue_table() -> tuple[pd.DataFrame, list[str], str, bool, str]:
    """The entries in order, their ids, the queue's state in one line, whether it has work, its failure rule."""
    queue = store.read_queue()
    rows = [[i, e.id, e.status, e.job, e.summary, e.reason, Path(e.run_dir).name if e.run_dir else ""]
            for i, e in enumerate(queue.entries, 1)]
    running = len(queue.running())
    waiting = sum(e.status == "waiting" for e in queue.entries)
    runner = runner_holder()
    state = "paused" if queue.paused else "running" if running else "idle"
    line = (f"**Queue {state}** · {running} running · {waiting} waiting · "
            + (f"runner pid {runner['pid']}" if runner else "no runner (one starts when there is work)"))
    if queue.paused and queue.pause_reason:
        line += f"\n\nPaused: {queue.pause_reason}"
    if queue.notice:
        line += f"\n\n**{queue.notice}**"
    has_work = bool(running or (waiting and not queue.paused))
    return pd.DataFrame(rows, columns=COLUMNS), [e.id for e in queue.entries], line, has_work, queue.on_failure


class QueueTab:
    def __init__(self):
        with gr.Tab("Queue", id="queue", elem_id="tab-queue"):
            gr.Markdown("Jobs lined up with *Add to queue* run here one after another, in a process of their own: "
                        "closing the browser or restarting the GUI does not stop them. Select a row to act on it.")
            self.state = gr.Markdown(elem_id="queue-state")
            self.table = gr.Dataframe(pd.DataFrame(columns=COLUMNS), interactive=False, wrap=True,
                                      column_widths=["4%", "8%", "8%", "7%", "43%", "15%", "15%"],
                                      elem_id="queue-table")
            self.ids = gr.State([])
            self.selected = gr.State(None)
            with gr.Row(equal_height=True):
                self.chosen = gr.Markdown("No entry selected.", elem_id="queue-selected")
                button = {"size": "sm", "scale": 0, "min_width": 90}
                self.up = gr.Button("⬆ Up", elem_id="queue-up", **button)
                self.down = gr.Button("⬇ Down", elem_id="queue-down", **button)
                self.remove = gr.Button("Remove", elem_id="queue-remove", **button)
                self.retry = gr.Button("Re-queue", elem_id="queue-retry", **button)
                self.stop = gr.Button("Stop it", variant="stop", elem_id="queue-stop", **button)
            with gr.Row(equal_height=False):
                self.on_failure = gr.Radio(ON_FAILURE, value="skip", label="When a job fails", scale=2,
                                           elem_id="queue-on-failure")
                self.pause = gr.Button("Pause the queue", elem_id="queue-pause", size="sm", scale=0, min_width=150)
                self.resume = gr.Button("Resume the queue", elem_id="queue-resume", size="sm", scale=0,
                                        min_width=150)
                self.refresh = gr.Button("Refresh", elem_id="queue-refresh", size="sm", scale=0, min_width=90)
            self.message = gr.Markdown(elem_id="queue-message")
            self.timer = gr.Timer(POLL_S, active=False)  # ticks while the queue has work
            with gr.Accordion("Prepare and train the workspace dataset in one go", open=True,
                              elem_id="queue-chain-section"):
                with gr.Row(equal_height=True):
                    self.steps = gr.CheckboxGroup([(STEP_LABELS[s], s) for s in CHAIN_STEPS], value=list(CHAIN_STEPS),
                                                  label="Steps, in this order (each runs when the one before "
                                                        "succeeded)", scale=3, elem_id="queue-chain-steps")
                    self.presets = {job: gr.Dropdown(preset_choices(job)[0], value=None, scale=1,
                                                     label=f"{STEP_LABELS[job].capitalize()} preset",
                                                     elem_id=f"queue-chain-{job}-preset") for job in ("tag", "train")}
                    self.chain = gr.Button("Queue them", variant="primary", scale=0, min_width=130,
                                           elem_id="queue-chain-button")

    @property
    def view(self) -> list:
        return [self.table, self.ids, self.state, self.timer, self.on_failure]

    def show(self) -> list:
        table, ids, line, has_work, on_failure = queue_table()
        return [table, ids, line, gr.Timer(active=has_work), on_failure]

    def act(self, fn: Callable[[str], object], selected: str | None, needs_entry: bool = True) -> list:
        """Do `fn(selected)`; the queue shown again with what happened."""
        if needs_entry and not selected:
            return [*self.show(), "Select an entry in the table first."]
        try:
            fn(selected)
            message = ""
        except (store.QueueError, ConfigError) as err:
            message = f"**Not done:** {err}"
        return [*self.show(), message]

    def wire(self, bar: WorkspaceBar) -> None:
        hidden = {"show_progress": "hidden"}
        page_load.on_load(self.show, self.view)
        self.timer.tick(self.show, outputs=self.view, **hidden)
        self.refresh.click(self.show, outputs=self.view)

        def select(ids: list[str], evt: gr.SelectData):
            entry_id = ids[evt.index[0]] if evt.index[0] < len(ids) else None
            return entry_id, f"Selected: **entry {entry_id}**" if entry_id else "No entry selected."

        self.table.select(select, inputs=self.ids, outputs=[self.selected, self.chosen], **hidden)
        acted = [*self.view, self.message]

        def started(fn: Callable) -> Callable:  # what may give the queue work starts a runner
            return lambda entry_id: (fn(entry_id), ensure_runner())

        for button, fn, needs_entry in (
                (self.up, lambda i: store.move(i, "up"), True),
                (self.down, lambda i: store.move(i, "down"), True),
                (self.remove, store.remove, True),
                (self.retry, started(store.retry), True),
                (self.stop, lambda i: store.stop_running(i), True),
                (self.pause, lambda _: store.pause(), False),
                (self.resume, started(lambda _: store.resume()), False)):
            button.click(lambda selected, fn=fn, needs=needs_entry: self.act(fn, selected, needs),
                         inputs=self.selected, outputs=acted)
        self.on_failure.input(lambda mode: self.act(lambda _: store.set_on_failure(mode), None, False),
                              inputs=self.on_failure, outputs=acted)

        def queue_chain(steps: list[str], tag_preset: str | None, train_preset: str | None, dataset, model, output):
            if not dataset:
                return [*self.show(), "Choose the dataset folder(s) in the workspace bar first."]
            chosen = {"tag": tag_preset or "", "train": train_preset or ""}
            try:
                entries = add_chain([Step(job, chosen.get(job, "")) for job in CHAIN_STEPS if job in steps],
                                    list(dataset), model or "", output or "")
            except (store.QueueError, ConfigError) as err:
                return [*self.show(), f"**Nothing was queued:** {err}"]
            ensure_runner()
            return [*self.show(), f"Queued {len(entries)} jobs: " + " → ".join(e.label() for e in entries) + "."]

        self.chain.click(queue_chain, inputs=[self.steps, *self.presets.values(), bar.values["dataset"],
                                              bar.values["model"], bar.values["output"]], outputs=acted)


def build(blocks: gr.Blocks, bar: WorkspaceBar) -> None:
    QueueTab().wire(bar)
