"""A server-side file picker: a "Look in" folder (Up; drive letters on Windows) and gr.FileExplorer over it,
"Use this" / "Use this folder" / "Cancel". It lists names only and serves no file contents."""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Callable

import gradio as gr

from core.workspace import LABELS, drives, parent_folder, pick_problem, start_folder


def _hidden(folder: str) -> str:
    """The explorer's ignore_glob for `folder`: its hidden files and folders (names starting with a dot)."""
    return glob.escape(folder) + f"*{os.sep}.*"


def _explorer(folder: str) -> gr.FileExplorer:
    return gr.FileExplorer(root_dir=folder, ignore_glob=_hidden(folder), value=None)


class FilePicker:
    """One picker shared by the workspace's slots; `open(slot, value)` shows it for one of them."""

    def __init__(self):
        home = str(Path.home())
        self.slot = gr.State(None)
        with gr.Column(visible=False, elem_id="picker", elem_classes="picker") as self.box:
            self.title = gr.Markdown(elem_id="picker-title")
            with gr.Row(equal_height=False, elem_classes="picker-line"):
                self.look_in = gr.Dropdown(choices=[home, *drives()], value=home, allow_custom_value=True,
                                           label="Look in", scale=6, elem_id="picker-look-in")
                self.up = gr.Button("⬆ Up", scale=0, min_width=80, size="sm", elem_id="picker-up")
            self.explorer = gr.FileExplorer(root_dir=home, file_count="single", ignore_glob=_hidden(home),
                                            height=260, max_height=260, show_label=False, elem_id="picker-explorer")
            with gr.Row(equal_height=False, elem_classes="picker-line"):
                self.use = gr.Button("Use this", variant="primary", scale=0, min_width=110, size="sm",
                                     elem_id="picker-use")
                self.use_folder = gr.Button("Use the folder shown", scale=0, min_width=190, size="sm",
                                            elem_id="picker-use-folder")
                self.cancel = gr.Button("Cancel", scale=0, min_width=90, size="sm", elem_id="picker-cancel")
                self.message = gr.Markdown(elem_id="picker-message")

    @property
    def outputs(self) -> list:
        return [self.box, self.slot, self.title, self.look_in, self.explorer, self.message]

    def open(self, slot: str, value) -> dict:
        """The updates that show the picker for `slot`, opened where its current value is."""
        folder = start_folder(value)
        what = "a folder" if slot != "model" else "a model file (.safetensors / .ckpt) or a diffusers folder"
        return {self.box: gr.Column(visible=True), self.slot: slot,
                self.title: f"**{LABELS[slot]}**: select {what} below, then *Use this* (or use the folder shown).",
                self.look_in: folder, self.explorer: _explorer(folder), self.message: ""}

    def wire(self, apply: Callable[[str, str], dict], outputs: list) -> None:
        """`apply(slot, path)`: the updates (of `outputs`) that a chosen path makes."""
        def go_to(folder: str):
            path = Path(os.path.expanduser(folder or "")).absolute()
            if not folder or not path.is_dir():
                return {self.message: f"Not a folder: `{folder}`"}
            return {self.look_in: str(path), self.explorer: _explorer(str(path)), self.message: ""}

        def use(slot: str, path: str | None):
            if problem := pick_problem(slot, path):
                return {self.message: problem}
            return {**apply(slot, os.path.normpath(path)), self.box: gr.Column(visible=False), self.message: ""}

        self.look_in.input(go_to, inputs=self.look_in, outputs=[self.look_in, self.explorer, self.message])
        self.up.click(lambda folder: go_to(parent_folder(folder)), inputs=self.look_in,
                      outputs=[self.look_in, self.explorer, self.message])
        everything = [self.box, self.message, *outputs]
        self.use.click(use, inputs=[self.slot, self.explorer], outputs=everything)
        self.use_folder.click(use, inputs=[self.slot, self.look_in], outputs=everything)
        self.cancel.click(lambda: gr.Column(visible=False), outputs=self.box)
