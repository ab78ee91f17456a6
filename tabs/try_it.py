"""Try it: a newcomer's first run in one click. Builds the demo kit (a tiny model and a captioned dataset, in
the user folder) unless it is there, makes it the workspace, opens the Training tab with the CPU demo preset
and starts training; the side panel then shows the loss moving."""
from __future__ import annotations

import time
from pathlib import Path

import gradio as gr

from core.config.presets import builtin_dir, load_preset
from core.dataset.demo_kit import TRY_IT_PRESET, kit_ready, kit_workspace
from core.fsutil import studio_home
from core.jobs.runner import ACTIVE_STATES, run_state
from tabs.estimate_view import TORCH_TURN
from tabs.job_panel import JobPanel
from tabs.workspace import WorkspaceBar

INTRO = ("**New here?** *Try it* trains a tiny demo model on a generated dataset, on this computer (a CPU is "
         "enough, about a minute): nothing is downloaded, and your own folders are not touched.")


def kit_folder():
    return studio_home() / "demo"


class TryIt:
    """Build where a newcomer lands (the first tab); `wire` once the workspace and the Training page exist."""

    def __init__(self):
        with gr.Row(elem_id="try-it", equal_height=True):
            gr.Markdown(INTRO, elem_id="try-it-intro")
            self.button = gr.Button("Try it", variant="primary", size="sm", scale=0, min_width=120,
                                    elem_id="try-it-button")
        self.message = gr.Markdown(elem_id="try-it-message")
        self.building = gr.State(None)  # the run folder of the demo kit being built for a try
        self.timer = gr.Timer(1.0, active=False)  # here, not in the demo panel: that one sits in a closed accordion
        self.go = gr.State(None)  # set when the kit is ready for a try: the rest follows its change

    def begin(self, demo: JobPanel) -> dict:
        if kit_ready(kit_folder()):
            return {self.go: time.time(), self.message: "Using the demo kit built before…"}
        updates = demo.launch({"out": str(kit_folder()), "overwrite": True})
        if demo.run not in updates:  # refused: the panel's status says why
            return {self.message: updates.get(demo.status, "The demo kit could not be started.")}
        return {**updates, self.building: updates[demo.run]["run_dir"], self.timer: gr.Timer(active=True),
                self.message: f"Building the demo kit in `{kit_folder()}` (a few seconds)…"}

    def check_built(self, run_dir: str | None) -> dict:
        if not run_dir:
            return {self.timer: gr.Timer(active=False)}
        if run_state(Path(run_dir)) in ACTIVE_STATES:
            return {self.go: gr.skip()}
        done = {self.building: None, self.timer: gr.Timer(active=False)}
        if not kit_ready(kit_folder()):
            return {**done, self.message: f"The demo kit was not built: see the log of `{run_dir}` (Runs tab)."}
        return {**done, self.go: time.time()}

    def wire(self, demo: JobPanel, bar: WorkspaceBar, tabs: gr.Tabs, training) -> None:
        """`training`: the Training page (tabs/training.py's TrainingPage)."""
        self.button.click(lambda: self.begin(demo), outputs=[*demo.outputs, self.go, self.building, self.timer,
                                                             self.message])
        self.timer.tick(self.check_built, inputs=self.building,
                        outputs=[self.go, self.building, self.timer, self.message], show_progress="hidden")

        def prepare():
            preset = load_preset(builtin_dir() / "train" / TRY_IT_PRESET, "train", True)
            kit = kit_workspace(kit_folder())
            values = {**preset.values, "train_data_dir": kit["dataset"], "pretrained_model_name_or_path": kit["model"],
                      "output_dir": kit["output"]}
            return {**bar.set_values(**kit), tabs: gr.Tabs(selected="training"),
                    training.presets.choice: gr.Dropdown(value=preset.name),
                    **dict(zip(training.form.inputs, training.form.show(values))),
                    self.message: f"The workspace is now the demo kit; training **{preset.name}** is starting…"}

        self.go.change(prepare, outputs=[*bar.outputs, tabs, training.presets.choice, *training.form.inputs,
                                         self.message]) \
            .then(training.start, inputs=training.form.inputs, outputs=training.start_outputs, **TORCH_TURN)
