"""Models tab: the model library (every model in the studio's models/ folder and in the folders a person adds,
with its kind, architecture, precision, size and problem; a selected one goes to the workspace or the field
that takes it) and downloads (the curated catalogue, any Hub repository) as a `download` job.

Nothing is scanned when the app is built: the library is scanned when the tab is first opened, on Rescan, and
after a download."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from core.jobs.registry import JOBS
from core.jobs.run_folder import RunFolder
from core.models import library_folders
from core.models.catalogue import entries as catalogue_entries
from core.models.library_listing import (
    ALL,
    CATALOGUE_COLUMNS,
    COLUMNS,
    FOLDER_COLUMNS,
    added_message,
    catalogue_rows,
    details,
    filter_choices,
    filtered,
    folder_rows,
    found_in,
    metadata_rows,
    row,
    scan_library,
    size_text,
    summary,
    uses,
)
from tabs.captioning import ModelFields
from tabs.file_picker import FilePicker
from tabs.form import SchemaForm
from tabs.job_panel import JobPanel
from tabs.queue_view import QueueButton
from tabs.workspace import WorkspaceBar

LIBRARY_SLOT = "library"
REPOSITORY_FIELDS = ["repo_id", "files", "local_dir", "revision"]
DOWNLOAD_INTRO = ("Models from the Hugging Face Hub, fetched only when you click Download: resumable after a stop "
                  "or a lost connection, checked against the Hub's hashes, into the studio's `models` folder (then "
                  "listed under *Your models*). A gated model needs `hf auth login` or HF_TOKEN first.")
FOLDERS_INTRO = ("Give the folder of an AUTOMATIC1111, Forge or ComfyUI install (its root or its `models` folder) "
                 "and its model folders are added; any other folder is added as it is. Removing a folder only "
                 "forgets it: no file is touched.")


def frame(rows: list[list], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=columns)


class ModelsPage:
    """Build inside the app's Tabs; `wire(...)` once the workspace bar and the Captioning tab exist."""

    def __init__(self):
        with gr.Tab("Models", id="models", elem_id="tab-models") as self.tab:
            with gr.Tabs(elem_id="models-sections") as self.sections:
                with gr.Tab("Your models", id="models-library", elem_id="tab-models-library"):
                    self._library()
                with gr.Tab("Download", id="models-download", elem_id="tab-models-download"):
                    self._downloads()

    def _library(self) -> None:
        self.entries = gr.State(None)  # the models of this page's last scan; None: not scanned yet
        self.shown = gr.State([])  # the models in the table, in its order
        self.selected = gr.State(None)
        with gr.Row(equal_height=True, elem_classes="models-toolbar"):
            self.kind = gr.Dropdown(choices=[("all", ALL)], value=ALL, label="Show", show_label=False, container=False,
                                    scale=0, min_width=220, elem_id="models-kind")
            self.summary = gr.Markdown("Scanning when the tab opens…", elem_id="models-summary")
            self.rescan = gr.Button("Rescan", size="sm", scale=0, min_width=100, elem_id="models-rescan")
        self.table = gr.Dataframe(frame([], COLUMNS), interactive=False, max_height=250, show_search="search",
                                  column_widths=["16%", "12%", "8%", "9%", "9%", "17%", "29%"],
                                  elem_id="models-table")
        with gr.Row(equal_height=False, elem_classes="models-selected"):
            self.details = gr.Markdown("Select a model to see what it is and use it.", elem_id="model-details")
            with gr.Column(scale=0, min_width=330):
                with gr.Row():
                    self.use_base = gr.Button("Use as base model", variant="primary", size="sm", visible=False,
                                              elem_id="model-use-base")
                    self.use_tagger = gr.Button("Use as tagger", variant="primary", size="sm", visible=False,
                                                elem_id="model-use-tagger")
                    self.use_captioner = gr.Button("Use as captioner", variant="primary", size="sm", visible=False,
                                                   elem_id="model-use-captioner")
                self.message = gr.Markdown(elem_id="model-message")
        with gr.Accordion("Metadata", open=False, visible=False, elem_id="model-metadata-box") as self.metadata_box:
            self.metadata = gr.Dataframe(frame([], ["key", "value"]), interactive=False, max_height=240,
                                         column_widths=["30%", "70%"], elem_id="model-metadata")
        with gr.Accordion("Library folders: add your AUTOMATIC1111, Forge or ComfyUI models", open=False,
                          elem_id="models-folders"):
            gr.Markdown(FOLDERS_INTRO)
            with gr.Row(equal_height=True, elem_classes="models-folder-line"):
                self.folder = gr.Textbox(label="Folder to add", placeholder="path to a folder (typed or pasted)",
                                         scale=4, elem_id="models-folder")
                self.browse = gr.Button("Browse…", size="sm", scale=0, min_width=90, elem_id="models-folder-browse")
                self.add = gr.Button("Add folder", variant="primary", size="sm", scale=0, min_width=110,
                                     elem_id="models-folder-add")
            self.picker = FilePicker({LIBRARY_SLOT: "Folder to add"}, (LIBRARY_SLOT,), elem_id="library-picker")
            self.folder_message = gr.Markdown(elem_id="models-folder-message")
            self.folders = gr.Dataframe(frame([], FOLDER_COLUMNS), interactive=False, max_height=200,
                                        column_widths=["60%", "10%", "30%"], elem_id="models-folders-table")
            with gr.Row(equal_height=True, elem_classes="models-folder-line"):
                self.remove_choice = gr.Dropdown(choices=[], label="Folder to forget", scale=4,
                                                 elem_id="models-folder-remove-choice")
                self.remove = gr.Button("Remove", variant="stop", size="sm", scale=0, min_width=110,
                                        elem_id="models-folder-remove")

    def _downloads(self) -> None:
        self.choice = gr.State(None)  # the catalogue entry chosen
        gr.Markdown(DOWNLOAD_INTRO, elem_id="download-intro")
        self.catalogue = gr.Dataframe(frame([], CATALOGUE_COLUMNS), interactive=False, max_height=300,
                                      column_widths=["22%", "12%", "9%", "17%", "28%", "12%"],
                                      elem_id="catalogue-table")
        with gr.Row(equal_height=True):
            self.chosen = gr.Markdown("Select a model in the list, then Download.", elem_id="catalogue-chosen")
            self.download = gr.Button("Download", variant="primary", size="md", interactive=False, scale=0,
                                      min_width=340, elem_id="catalogue-download")
            self.queue = QueueButton("download", interactive=False, name="catalogue")
        with gr.Accordion("Any Hugging Face repository", open=False, elem_id="download-repository"):
            self.repository = SchemaForm(JOBS["download"].config, fields=REPOSITORY_FIELDS, layout="flat")
            with gr.Row(equal_height=True):
                self.download_repository = gr.Button("Download from this repository", variant="primary",
                                                     elem_id="repository-download")
                self.queue_repository = QueueButton("download", name="repository")
        self.queued = gr.Markdown(elem_id="download-queued", elem_classes=["sf-message"])
        self.panel = JobPanel("download")

    # -- the library --------------------------------------------------------------------------------------------
    def _table(self, entries: list, kind: str) -> dict:
        shown = filtered(entries, kind)
        return {self.shown: shown, self.table: frame([row(e) for e in shown], COLUMNS)}

    def scanned(self, kind: str, bar: WorkspaceBar) -> dict:
        """Scan the library: the table (filter kept when it still applies), the folders, the catalogue's states,
        the workspace's model choices; the selection cleared."""
        entries = scan_library()
        choices = filter_choices(entries)
        kind = kind if kind in [value for _, value in choices] else ALL
        return {self.entries: entries, **self._table(entries, kind),
                self.kind: gr.Dropdown(choices=choices, value=kind),
                self.summary: summary(entries, len(library_folders.folders())),
                self.folders: frame(folder_rows(entries), FOLDER_COLUMNS),
                self.remove_choice: gr.Dropdown(choices=library_folders.added_folders()[0], value=None),
                self.catalogue: frame(catalogue_rows(), CATALOGUE_COLUMNS),
                bar.inputs["model"]: bar.library_choices(),
                **self._select(None)}

    def _select(self, entry) -> dict:
        """Show `entry` (None: nothing selected) with the actions its kind allows."""
        can = uses(entry) if entry else set()
        rows = metadata_rows(entry) if entry else []
        return {self.selected: entry,
                self.details: details(entry) if entry else "Select a model to see what it is and use it.",
                self.use_base: gr.Button(visible="base_model" in can),
                self.use_tagger: gr.Button(visible="tagger" in can),
                self.use_captioner: gr.Button(visible="captioner" in can), self.message: "",
                self.metadata_box: gr.Accordion(visible=bool(rows), label=f"Metadata ({len(rows)})"),
                self.metadata: frame(rows, ["key", "value"])}

    def select(self, shown: list, evt: gr.SelectData) -> dict:
        path = (evt.row_value or [None])[-1]
        entry = next((e for e in shown if e.path == path), None)
        return self._select(entry)

    # -- folders ------------------------------------------------------------------------------------------------
    def add_folder(self, path: str, kind: str, bar: WorkspaceBar) -> dict:
        try:
            added = library_folders.add_folder(path)
        except ValueError as exc:
            return {self.folder_message: f"**Not added:** {exc}"}
        return {**self.scanned(kind, bar), self.folder: "", self.folder_message: added_message(path, added)}

    def remove_folder(self, path: str | None, kind: str, bar: WorkspaceBar) -> dict:
        if not path:
            return {self.folder_message: "Choose the folder to forget first."}
        try:
            library_folders.remove_folder(path)
        except ValueError as exc:
            return {self.folder_message: f"**Not removed:** {exc}"}
        return {**self.scanned(kind, bar), self.folder_message: f"Forgot `{path}` (its files are untouched)."}

    # -- downloads ----------------------------------------------------------------------------------------------
    def choose(self, evt: gr.SelectData) -> dict:
        label = (evt.row_value or [None])[0]
        entry = next((e for e in catalogue_entries() if e.label == label), None)
        if entry is None:
            return {self.choice: None}
        return {self.choice: entry.id, self.download: gr.Button(f"Download {entry.label}", interactive=True),
                self.queue.button: gr.Button(interactive=True),
                self.chosen: f"**{entry.label}** · `{entry.repo_id}` · {size_text(entry.size_gb)} · {entry.note} "
                             f"Licence: {entry.licence}."}

    def downloaded(self, run_dir: str | None, entries, kind: str, bar: WorkspaceBar) -> dict:
        """A download ended: the library scanned again (if this page listed it) and the new model selected."""
        if entries is None or not run_dir:
            return {self.entries: gr.skip()}
        updates = self.scanned(kind, bar)
        folder = (RunFolder(run_dir).read_result() or {}).get("folder")
        new = found_in(updates[self.entries], folder) if folder else None
        if new is not None:
            updates.update(self._table(updates[self.entries], ALL))
            updates[self.kind] = gr.Dropdown(choices=filter_choices(updates[self.entries]), value=ALL)
            updates.update(self._select(new))
            updates[self.message] = "Downloaded: it is in the table above."
        return updates

    # -- wiring -------------------------------------------------------------------------------------------------
    @property
    def selection_outputs(self) -> list:
        return [self.selected, self.details, self.use_base, self.use_tagger, self.use_captioner, self.message,
                self.metadata_box,
                self.metadata]

    @property
    def scan_outputs(self) -> list:
        return [self.entries, self.shown, self.table, self.kind, self.summary, self.folders, self.remove_choice,
                self.catalogue, *self.selection_outputs]

    def open(self, entries, kind: str, bar: WorkspaceBar) -> dict:
        """The tab opened: scanned the first time."""
        return self.scanned(kind, bar) if entries is None else {self.entries: gr.skip()}

    def wire(self, blocks: gr.Blocks, bar: WorkspaceBar, tabs: gr.Tabs, captioning: ModelFields) -> None:
        """`captioning`: the Captioning tab's model folder fields ("Use as tagger" / "Use as captioner" fill them)."""
        outputs = [*self.scan_outputs, bar.inputs["model"]]
        hidden = {"show_progress": "hidden"}
        self.tab.select(lambda entries, kind: self.open(entries, kind, bar), inputs=[self.entries, self.kind],
                        outputs=outputs)
        self.rescan.click(lambda kind: self.scanned(kind, bar), inputs=self.kind, outputs=outputs)
        self.kind.input(lambda entries, kind: self._table(entries or [], kind), inputs=[self.entries, self.kind],
                        outputs=[self.shown, self.table], **hidden)
        self.table.select(self.select, inputs=self.shown, outputs=self.selection_outputs, **hidden)
        self.use_base.click(lambda entry: {**bar.set_values(model=entry.path),
                                           self.message: "Now the workspace's base model: every tab uses it."},
                            inputs=self.selected, outputs=[*bar.outputs, self.message])
        self.use_tagger.click(lambda entry: {captioning.tagger: entry.path, tabs: gr.Tabs(selected="captioning"),
                                             captioning.sections: gr.Tabs(selected="captioning-wd14"),
                                             self.message: "Now the Captioning tab's tagger folder."},
                              inputs=self.selected, outputs=[captioning.tagger, tabs, captioning.sections,
                                                             self.message])

        def use_captioner(entry) -> dict:
            field, section = captioning.captioner(entry.family)
            return {field: entry.path, tabs: gr.Tabs(selected="captioning"),
                    captioning.sections: gr.Tabs(selected=section),
                    self.message: "Now the Captioning tab's model folder."}

        self.use_captioner.click(use_captioner, inputs=self.selected,
                                 outputs=[captioning.blip, captioning.vlm, tabs, captioning.sections, self.message])

        folder_outputs = [*outputs, self.folder, self.folder_message]
        self.add.click(lambda path, kind: self.add_folder(path, kind, bar), inputs=[self.folder, self.kind],
                       outputs=folder_outputs)
        self.folder.submit(lambda path, kind: self.add_folder(path, kind, bar), inputs=[self.folder, self.kind],
                           outputs=folder_outputs)
        self.remove.click(lambda path, kind: self.remove_folder(path, kind, bar),
                          inputs=[self.remove_choice, self.kind], outputs=folder_outputs)
        self.picker.open_with(self.browse, LIBRARY_SLOT, self.folder)
        self.picker.wire(lambda slot, path: {self.folder: path}, [self.folder])

        self.catalogue.select(self.choose, outputs=[self.choice, self.download, self.queue.button, self.chosen],
                              **hidden)
        self.download.click(lambda entry_id: self.panel.launch({"catalogue": entry_id}, entry_id or ""),
                            inputs=self.choice, outputs=self.panel.outputs)
        self.download_repository.click(lambda *raw: self.panel.launch(self.repository.read(*raw)),
                                       inputs=self.repository.inputs, outputs=self.panel.outputs)
        self.queue.wire([self.choice], lambda entry_id: {"catalogue": entry_id}, self.queued)
        self.queue_repository.wire(self.repository.inputs, self.repository.read, self.queued)
        self.panel.wire(blocks)
        self.panel.finished.change(lambda run_dir, entries, kind: self.downloaded(run_dir, entries, kind, bar),
                                   inputs=[self.panel.finished, self.entries, self.kind], outputs=outputs)

        def offer(go: str) -> dict:
            section = "models-download" if go == "download" else "models-library"
            return {tabs: gr.Tabs(selected="models"), self.sections: gr.Tabs(selected=section)}

        bar.on_model_offer(offer, [tabs, self.sections]) \
            .then(lambda entries, kind: self.open(entries, kind, bar), inputs=[self.entries, self.kind],
                  outputs=outputs)

def build(blocks: gr.Blocks) -> ModelsPage:
    return ModelsPage()
