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
from tabs.runs import RunsPage
from tabs.workspace import WorkspaceBar

COLUMNS = ["#", "id", "status", "job", "what it does", "why", "run folder"]
ON_FAILURE = [("go on with the next job", "skip"), ("pause the queue", "stop")]
STEP_LABELS = {"tag": "WD14 tags", "clean": "clean captions", "cache": "cache latents", "train": "train"}
AS_ON_TAB = ("as set on its tab", "")  # a chain step without a preset: its job's form as it is
POLL_S = 2.0


def queue_job(job: str, values: dict | Callable[[], dict]) -> str:
    """*Add to queue*: the job with `values` (validated and frozen now; a callable that gives them may raise
    ConfigError) queued and the runner started; what happened, in one message."""
    try:
        entry = store.add(job, values() if callable(values) else values)
    except ConfigError as err:
        return f"**Not queued: invalid settings**\n\n```\n{err}\n```"
    except store.QueueError as err:
        return f"**Not queued:** {err}"
    ensure_runner()
    return f"Queued as {entry.label()}: {entry.summary}. It starts when the jobs before it are done (Queue tab)."


EDITING = "Save to entry {id}"
EDITABLE: dict[str, QueueButton] = {}  # job -> the form its waiting entries reopen in (build_app clears it)


class QueueButton:
    """*Add to queue* beside a job's Start button (build it in that row). While a waiting entry of the job is
    reopened in the form (Queue tab: Edit), it saves the form to that entry instead, and *Cancel edit* shows."""

    def __init__(self, job: str, visible: bool = True, interactive: bool = True, name: str = ""):
        """`name`: the elements' id prefix where a page has two of one job's (the job's name by default)."""
        self.job = job
        self.button = gr.Button("Add to queue", scale=0, min_width=170, elem_id=f"{name or job}-queue-button",
                                visible=visible, interactive=interactive)
        self.cancel = gr.Button("Cancel edit", scale=0, min_width=120, visible=False,
                                elem_id=f"{name or job}-queue-cancel")
        self.editing = gr.State("")  # the id of the entry the form holds ("": none)
        self.inputs: list = []  # the form an entry reopens in (`wire` with a `fill`), how it is read and filled
        self.read: Callable[..., dict] = lambda *raw: {}
        self.fill: Callable[[dict], list] = lambda values: []
        self.message: gr.Markdown | None = None

    def editing_updates(self, entry_id: str) -> list:
        """[editing, button, cancel] while `entry_id` is edited ("": not editing)."""
        return [entry_id, gr.Button(EDITING.format(id=entry_id) if entry_id else "Add to queue"),
                gr.Button(visible=bool(entry_id))]

    def save(self, entry_id: str, values: dict | Callable[[], dict]) -> list:
        """[editing, button, cancel, message]: the form queued as a new entry, or saved to the edited one."""
        if not entry_id:
            return [gr.skip()] * 3 + [queue_job(self.job, values)]
        try:
            entry = store.edit(entry_id, values() if callable(values) else values)
        except ConfigError as err:
            return [gr.skip()] * 3 + [f"**Not saved: invalid settings**\n\n```\n{err}\n```"]
        except store.QueueError as err:
            return self.editing_updates("") + [f"**Not saved:** {err}. *Add to queue* queues these settings as a "
                                               "new job."]
        return self.editing_updates("") + [f"Saved to {entry.label()}: {entry.summary}. It keeps its place in "
                                           "the queue."]

    def wire(self, inputs: list, read: Callable[..., dict | Callable[[], dict]], message: gr.Markdown,
             fill: Callable[[dict], list] | None = None) -> None:
        """`read(*inputs)`: the job's values (or a callable giving them); `fill(values)`: the values of `inputs`
        showing an entry's settings (None: the job's entries are not edited here)."""
        outputs = [self.editing, self.button, self.cancel, message]
        self.button.click(lambda entry_id, *raw: self.save(entry_id, read(*raw)), inputs=[self.editing, *inputs],
                          outputs=outputs)
        self.cancel.click(lambda entry_id: self.editing_updates("") + [f"Edit cancelled: entry {entry_id} is "
                                                                       "unchanged."],
                          inputs=self.editing, outputs=outputs)
        if fill is not None:
            self.inputs, self.read, self.fill, self.message = inputs, read, fill, message
            EDITABLE[self.job] = self


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
        with gr.Tab("Queue", id="queue", elem_id="tab-queue") as self.tab:
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
                self.edit = gr.Button("Edit", elem_id="queue-edit", **button)
                self.open_run = gr.Button("Open its run", elem_id="queue-open-run", **button)
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
                    self.presets = {job: gr.Dropdown([AS_ON_TAB, *preset_choices(job)[0]], value="", scale=1,
                                                     label=f"{STEP_LABELS[job][0].upper()}{STEP_LABELS[job][1:]} settings",
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

    def reopen(self, entry_id: str | None, tabs: gr.Tabs, homes: dict[str, gr.Tab]) -> dict:
        """Edit: a waiting entry's settings in its job's form (in its tab of `homes`), which then saves to it."""
        entry = store.read_queue().find(entry_id) if entry_id else None
        if entry is None:
            return {self.message: "Select an entry in the table first."}
        if entry.status != "waiting":
            return {self.message: f"**Not reopened:** {entry.label()} is {entry.status}; only a waiting entry can "
                                  "be edited (Re-queue puts an ended one back)."}
        target = EDITABLE.get(entry.job)
        if target is None:
            return {self.message: f"**Not reopened:** a {entry.job} entry has no form of its own to edit it in; "
                                  "remove it and queue it again."}
        tab = homes[entry.job]
        return {tabs: gr.Tabs(selected=tab.id), **dict(zip(target.inputs, target.fill(entry.values))),
                **dict(zip([target.editing, target.button, target.cancel], target.editing_updates(entry.id))),
                target.message: f"Editing **{entry.label()}**: change its settings, then *"
                                f"{EDITING.format(id=entry.id)}* (it keeps its place in the queue).",
                self.message: f"{entry.label()} is open in the {tab.label} tab."}

    def open_entry_run(self, entry_id: str | None, tabs: gr.Tabs, runs: RunsPage) -> dict:
        entry = store.read_queue().find(entry_id) if entry_id else None
        if entry is None:
            return {self.message: "Select an entry in the table first."}
        if not entry.run_dir or not Path(entry.run_dir).is_dir():
            return {self.message: f"{entry.label()} has no run folder yet (it has not started)."}
        return {tabs: gr.Tabs(selected="runs"), **runs.open(entry.run_dir), self.message: ""}

    def wire(self, bar: WorkspaceBar, tabs: gr.Tabs, runs: RunsPage) -> None:
        hidden = {"show_progress": "hidden"}
        page_load.on_load(self.show, self.view)
        self.timer.tick(self.show, outputs=self.view, **hidden)
        self.tab.select(lambda: [gr.Dropdown(choices=[AS_ON_TAB, *preset_choices(job)[0]]) for job in self.presets],
                        outputs=list(self.presets.values()), **hidden)  # presets saved since
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

        forms = [EDITABLE[job] for job in CHAIN_STEPS if job in EDITABLE]  # each step's form, on its tab

        def queue_chain(steps: list[str], tag_preset: str | None, train_preset: str | None, dataset, model, output,
                        *raw):
            if not dataset:
                return [*self.show(), "Choose the dataset folder(s) in the workspace bar first."]
            chosen = {"tag": tag_preset or "", "train": train_preset or ""}
            on_tab = {}
            for form in forms:
                on_tab[form.job], raw = form.read(*raw[:len(form.inputs)]), raw[len(form.inputs):]
            try:
                entries = add_chain([Step(job, chosen.get(job, ""), base=on_tab.get(job, {}))
                                     for job in CHAIN_STEPS if job in steps], list(dataset), model or "", output or "")
            except (store.QueueError, ConfigError) as err:
                return [*self.show(), f"**Nothing was queued:** {err}"]
            ensure_runner()
            return [*self.show(), f"Queued {len(entries)} jobs: " + " → ".join(e.label() for e in entries) + "."]

        self.chain.click(queue_chain, inputs=[self.steps, *self.presets.values(), bar.values["dataset"],
                                              bar.values["model"], bar.values["output"],
                                              *(c for form in forms for c in form.inputs)], outputs=acted)


        edited = [tabs, self.message, *(c for t in EDITABLE.values()
                                         for c in [*t.inputs, t.editing, t.button, t.cancel, t.message])]
        homes = {job: page_load.home_tab(target.button, tabs) for job, target in EDITABLE.items()}
        self.edit.click(lambda entry_id: self.reopen(entry_id, tabs, homes), inputs=self.selected,
                        outputs=list({c._id: c for c in edited}.values()))
        self.open_run.click(lambda entry_id: self.open_entry_run(entry_id, tabs, runs), inputs=self.selected,
                            outputs=[tabs, self.message, runs.table, runs.folders, runs.empty, *runs.run_outputs])


def build(blocks: gr.Blocks, bar: WorkspaceBar, tabs: gr.Tabs, runs: RunsPage) -> None:
    """Last of the tabs: the forms whose entries Edit reopens are all built."""
    QueueTab().wire(bar, tabs, runs)
