"""A server-side file picker: a "Look in" folder (Up; drive letters on Windows) and gr.FileExplorer over it,
"Use this" / "Use this folder" / "Cancel". It lists names only and serves no file contents."""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Callable

import gradio as gr

from core.workspace import FOLDER_SLOTS, LABELS, drives, parent_folder, pick_problem, start_folder


def _hidden(folder: str) -> str:
    """The explorer's ignore_glob for `folder`: its hidden files and folders (names starting with a dot)."""
    return glob.escape(folder) + f"*{os.sep}.*"


class FilePicker:
    """One picker shared by several fields (the workspace's slots by default); `open_with(button, slot, field)`
    shows it for one of them. `labels`: slot -> its label; `folder_slots`: the slots that take a folder only;
    `elem_id`: the picker's id, the prefix of its parts' ids (a second picker on the page needs its own)."""

    def __init__(self, labels: dict[str, str] = LABELS, folder_slots: tuple[str, ...] = FOLDER_SLOTS,
                 elem_id: str = "picker"):
        self.labels, self.folder_slots = labels, folder_slots
        home = str(Path.home())
        self.slot = gr.State(None)
        self.folder = gr.State(home)  # the folder listed (Look in, once checked)
        self.selected = gr.State(None)  # what is selected in the explorer
        with gr.Column(visible=False, elem_id=elem_id, elem_classes="picker") as self.box:
            self.title = gr.Markdown(elem_id=f"{elem_id}-title")
            with gr.Row(equal_height=False, elem_classes="picker-line"):
                self.look_in = gr.Dropdown(choices=[home, *drives()], value=home, allow_custom_value=True,
                                           label="Look in", scale=6, elem_id=f"{elem_id}-look-in")
                self.up = gr.Button("⬆ Up", scale=0, min_width=80, size="sm", elem_id=f"{elem_id}-up")

            # A new explorer for each folder: gradio 6.31's FileExplorer, given a new root_dir, keeps
            # showing an empty list. One render at a time, of all pickers: two at once (each picker's on the
            # page's load) grow and iterate the session's block table together in gradio 6.31
            # ("dictionary changed size during iteration").
            @gr.render(inputs=self.folder, concurrency_limit=1, concurrency_id="file-picker-render")
            def explorer(folder):
                listing = gr.FileExplorer(root_dir=folder, file_count="single", ignore_glob=_hidden(folder),
                                          height=260, max_height=260, show_label=False, key=folder,
                                          elem_id=f"{elem_id}-explorer")
                listing.change(lambda path: path, inputs=listing, outputs=self.selected, show_progress="hidden")

            with gr.Row(equal_height=False, elem_classes="picker-line"):
                self.use = gr.Button("Use this", variant="primary", scale=0, min_width=110, size="sm",
                                     elem_id=f"{elem_id}-use")
                self.use_folder = gr.Button("Use the folder shown", scale=0, min_width=190, size="sm",
                                            elem_id=f"{elem_id}-use-folder")
                self.cancel = gr.Button("Cancel", scale=0, min_width=90, size="sm", elem_id=f"{elem_id}-cancel")
                self.message = gr.Markdown(elem_id=f"{elem_id}-message", elem_classes="picker-message")

    def open_with(self, button: gr.Button, slot: str, value: gr.components.Component) -> None:
        """`button` opens the picker for `slot`, where `value` (its field) points."""
        def show(current):
            folder = start_folder(current)
            what = "a folder" if slot in self.folder_slots else \
                "a model file (.safetensors / .ckpt) or a diffusers folder"
            return (gr.Column(visible=True), slot, folder, folder, None, "",
                    f"**{self.labels[slot]}**: select {what} below, then *Use this* (or use the folder shown).")

        button.click(show, inputs=value, outputs=[self.box, self.slot, self.look_in, self.folder, self.selected,
                                                  self.message, self.title])

    def wire(self, apply: Callable[[str, str], dict], outputs: list) -> None:
        """`apply(slot, path)`: the updates (of `outputs`) that a chosen path makes."""
        def go_to(folder: str):
            path = Path(os.path.expanduser(folder or "")).absolute()
            if not folder or not path.is_dir():
                return {self.message: f"Not a folder: `{folder}`"}
            return {self.look_in: str(path), self.folder: str(path), self.selected: None, self.message: ""}

        def use(slot: str, path: str | None):
            if problem := pick_problem(path, folder_only=slot in self.folder_slots):
                return {self.message: problem}
            return {**apply(slot, os.path.normpath(path)), self.box: gr.Column(visible=False), self.message: ""}

        moved = [self.look_in, self.folder, self.selected, self.message]
        self.look_in.input(go_to, inputs=self.look_in, outputs=moved)
        self.up.click(lambda folder: go_to(parent_folder(folder)), inputs=self.folder, outputs=moved)
        everything = [self.box, self.message, *outputs]
        self.use.click(use, inputs=[self.slot, self.selected], outputs=everything)
        self.use_folder.click(use, inputs=[self.slot, self.folder], outputs=everything)
        self.cancel.click(lambda: gr.Column(visible=False), outputs=self.box)
