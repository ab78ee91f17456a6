"""Training tab. The first screen: the preset, the kind of training, a settings search, the essential
settings, Check settings and Start. Below: every setting in sub-tabs by section, then kohya import, resume,
the latent cache and DreamBooth class images built ahead, and the live view (log, progress, curves, samples)."""
from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gradio as gr

from core.config import CacheConfig, ConfigError, TrainConfig, validate
from core.config.presets import differences, find_preset
from core.train.checkpoints import saved_states
from tabs.estimate_view import TORCH_TURN, EstimateView
from tabs.form import SchemaForm, section_id
from tabs.job_panel import JobPanel
from tabs.preset_bar import PresetBar
from tabs.queue_view import QueueButton
from tabs.settings_search import REVEAL_JS, SettingsSearch
from tabs.subsets_toml import toml_controls
from tabs.training_panel import TrainingPanel


def changes_markdown(preset_name: str | None, values: dict) -> str:
    """Which settings differ from the chosen preset (or from the defaults)."""
    preset = find_preset("train", preset_name) if preset_name else None
    changed = differences("train", values, preset.values if preset else {})
    base = f"preset **{preset.name}**" if preset else "the defaults"
    if not changed:
        return f"Same as {base}."
    rows = "".join(f"<tr><td><code>{html.escape(k)}</code></td><td>{html.escape(repr(a))}</td>"
                   f"<td>{html.escape(repr(b))}</td></tr>" for k, (a, b) in changed.items())
    return (f"<details><summary>{len(changed)} setting(s) differ from {base}</summary><table class='changes'>"
            f"<tr><th>setting</th><th>preset</th><th>now</th></tr>{rows}</table></details>")


def class_images_values(values: dict) -> dict:
    """The class_images job's values from the trainer's (ConfigError when invalid or without a class folder)."""
    from core.train.data import class_images_config

    cfg = validate(TrainConfig, values, "settings")
    if not cfg.prior_preservation:
        raise ConfigError("settings: set class_data_dir and class_prompt to generate class images")
    return class_images_config(cfg).model_dump()


def import_kohya(path: str | None, form: SchemaForm) -> list:
    """The form's values from a kohya_ss / sd-scripts config file, then the import message."""
    from core.config.kohya_import import read_kohya_config

    if not path:
        return [gr.skip()] * len(form.inputs) + [""]
    try:
        imported = read_kohya_config(path)
    except ConfigError as err:
        return [gr.skip()] * len(form.inputs) + [f"**Not imported:** {err}"]
    lines = [f"Imported {len(imported.values)} setting(s) from `{Path(path).name}`."]
    lines += [f"- {note}" for note in imported.notes]
    if imported.unknown:
        lines.append("**Not imported** (unknown here or not supported yet): " +
                     ", ".join(f"`{key}`" for key in imported.unknown))
    return form.show(imported.values) + ["\n".join(lines)]


KINDS = ("Full fine-tune", "LoRA", "DreamBooth", "DreamBooth + LoRA")
DREAMBOOTH_ASK = ("DreamBooth trains with prior preservation: choose the folder of class images (and their prompt) "
                  "in the DreamBooth tab below.")


def kind_of(train_lora: bool, class_data_dir: str, dreambooth: bool = False) -> str:
    """The kind of training the values say (`dreambooth`: the radio's choice while no class folder is set yet)."""
    dreambooth = dreambooth or bool((class_data_dir or "").strip())
    return {(False, False): KINDS[0], (False, True): KINDS[1], (True, False): KINDS[2],
            (True, True): KINDS[3]}[(dreambooth, bool(train_lora))]


def switch_kind(kind: str, class_dir: str, stash: str, dreambooth_tab: str) -> list:
    """The radio chose `kind`: [train_lora, class_data_dir, stash, sub-tab, note, field to reveal]. Leaving
    DreamBooth stashes the class folder and clears it; coming back restores it."""
    if kind.startswith("DreamBooth"):
        folder = class_dir or stash
        return ["LoRA" in kind, folder, stash, gr.Tabs(selected=dreambooth_tab), "" if folder else DREAMBOOTH_ASK,
                "TrainConfig-class_data_dir"]
    return ["LoRA" in kind, "", class_dir or stash, gr.skip(), "", ""]


@dataclass
class TrainingPage:
    """What the rest of the app uses of the Training tab: the preset bar, the form, and Start (its handler
    taking the form's values in `form.inputs` order, and its outputs)."""
    presets: PresetBar
    form: SchemaForm
    start: Callable
    start_outputs: list


def named_fields(form: SchemaForm, values: dict, report: str) -> dict:
    """Show the hidden fields a check's report names, so a setting that stops the run can be changed where it
    does not apply (a full_fp16 left on after the precision changed, say)."""
    return {form.components[name]: gr.update(visible=True) for name in form.hidden(values)
            if re.search(rf"\b{re.escape(name)}\b", report)}


def build(blocks: gr.Blocks) -> TrainingPage:
    with gr.Tab("Training", id="training", elem_id="tab-training"):
        presets = PresetBar("train")
        form = SchemaForm(TrainConfig, layout="tabs", render=False, extras={
            "subsets": lambda table: toml_controls(table, form.components["train_batch_size"])})
        with gr.Row(elem_classes=["train-kind-row"]):
            with gr.Column(scale=5, min_width=400):
                kind = gr.Radio(KINDS, value=kind_of(form.initial["train_lora"], form.initial["class_data_dir"]),
                                label="Kind of training", elem_id="train-kind")
                kind_note = gr.Markdown(elem_id="train-kind-note", elem_classes=["sf-message"])
            with gr.Column(scale=2, min_width=260):
                search = SettingsSearch("train")
        form.render_essentials(exclude=("train_lora",))
        with gr.Row(elem_classes=["train-actions"]):
            check = gr.Button("Check settings", elem_id="train-check", scale=1)
            start = gr.Button("Start training", variant="primary", elem_id="train-button", scale=2)
            queue = QueueButton("train")
        report = gr.Markdown(elem_id="train-report")
        estimate = EstimateView(form)
        changes = gr.HTML(elem_id="train-changes")
        form.render_sections()
        with gr.Accordion("Import a kohya_ss (.json) or sd-scripts (.toml) config", open=False,
                          elem_id="train-import-section"):
            with gr.Row():
                kohya_file = gr.File(label="kohya config", file_types=[".json", ".toml"], type="filepath",
                                     elem_id="train-import", scale=1, height=90)
                import_message = gr.Markdown(elem_id="train-import-message")
        with gr.Accordion("Resume a stopped run", open=False):
            with gr.Row():
                state = gr.Dropdown(label="Saved training state (in the output folder)", choices=[],
                                    elem_id="train-resume-state", scale=3)
                find = gr.Button("Find saved states", elem_id="train-resume-find", scale=1)
                resume = gr.Button("Resume", elem_id="train-resume", scale=1)
        with gr.Accordion("Latent cache", open=False):
            build_cache = gr.Button("Build the latent cache now", interactive=False, elem_id="train-build-cache")
            cache_panel = JobPanel("cache", elem_prefix="train-cache")
        with gr.Accordion("DreamBooth class images", open=False):
            gr.Markdown("Training generates the class images that class_data_dir lacks before it starts; this "
                        "generates them now, to look at them first.")
            with gr.Row(equal_height=True):
                build_class = gr.Button("Generate the missing class images now", elem_id="train-build-class")
                queue_class = QueueButton("class_images")
            class_queued = gr.Markdown(elem_id="train-class-queued", elem_classes=["sf-message"])
            class_panel = JobPanel("class_images", elem_prefix="train-class")
        panel = TrainingPanel()
        stash = gr.State("")  # the class folder set aside while another kind is chosen
        reveal = gr.Textbox(visible=False)

    inputs = form.inputs

    def values_of(raw) -> dict:
        return form.read(*raw)

    def do_check(*raw):
        from core.train.preflight import check_report  # torch: not while the app is built

        values = values_of(raw)
        text, _, needs_cache = check_report(values)
        return {report: text, build_cache: gr.update(interactive=needs_cache), **named_fields(form, values, text)}

    def do_start(*raw, resume_from: str = ""):
        from core.train.preflight import check_report

        values = values_of(raw)
        if resume_from:
            values["resume"] = resume_from
        text, ok, needs_cache = check_report(values)
        if not ok:
            return {report: text + "\n\n**Nothing was started.**", build_cache: gr.update(interactive=needs_cache),
                    **named_fields(form, values, text)}
        return {**panel.launch(values), report: text}

    def do_resume(chosen: str | None, *raw):
        if not chosen:
            return {report: "Choose a saved state first (Find saved states lists those in the output folder)."}
        return do_start(*raw, resume_from=chosen)

    def do_find(*raw):
        values = values_of(raw)
        found = [str(p) for p in saved_states(values.get("output_dir", ""), values.get("output_name", ""))]
        message = f"{len(found)} saved state(s) in `{values.get('output_dir', '')}`." if found else \
            "No saved states for this output folder and name (a run saves one when stopped, or with save_state)."
        return gr.Dropdown(choices=found, value=found[0] if found else None), message

    def do_build_cache(*raw):
        values = values_of(raw)
        try:
            cfg = validate(TrainConfig, values, "settings")
        except ConfigError as err:
            return {cache_panel.status: f"**Invalid settings:**\n\n```\n{err}\n```"}
        if cfg.uses_subsets:
            return {cache_panel.status: "With dataset subsets, *Start training* builds each subset's latent cache "
                                        "(with its own bucket settings) before it trains."}
        return cache_panel.launch({key: getattr(cfg, key) for key in CacheConfig.model_fields})

    def do_build_class(*raw):
        try:
            return class_panel.launch(class_images_values(values_of(raw)))
        except ConfigError as err:
            return {class_panel.status: f"**Invalid settings:**\n\n```\n{err}\n```"}

    conditional = [form.components[n] for n in form.conditional()]
    start_outputs = [*panel.outputs, report, build_cache, *conditional]
    check.click(do_check, inputs=inputs, outputs=[report, build_cache, *conditional], **TORCH_TURN)
    queue.wire(inputs, lambda *raw: values_of(raw), report, form.show)
    queue_class.wire(inputs, lambda *raw: lambda: class_images_values(values_of(raw)), class_queued)
    start.click(do_start, inputs=inputs, outputs=start_outputs, **TORCH_TURN)
    estimate.wire(check, start)
    resume.click(do_resume, inputs=[state, *inputs], outputs=start_outputs, **TORCH_TURN)
    find.click(do_find, inputs=inputs, outputs=[state, report])
    build_cache.click(do_build_cache, inputs=inputs, outputs=cache_panel.outputs)
    build_class.click(do_build_class, inputs=inputs, outputs=class_panel.outputs)
    imported = kohya_file.upload(lambda path: import_kohya(path, form), inputs=kohya_file,
                                 outputs=[*inputs, import_message])
    gr.on([presets.choice.change, *(c.change for c in inputs)],
          lambda name, *raw: changes_markdown(name, values_of(raw)), inputs=[presets.choice, *inputs],
          outputs=changes, show_progress="hidden", trigger_mode="always_last")
    presets.wire(form, blocks)
    search.wire(form)
    wire_kind(form, kind, kind_note, stash, reveal, [*presets.loads, imported])
    panel.wire(blocks)
    cache_panel.wire(blocks)
    class_panel.wire(blocks)
    return TrainingPage(presets, form, do_start, start_outputs)


def wire_kind(form: SchemaForm, kind: gr.Radio, note: gr.Markdown, stash: gr.State, reveal: gr.Textbox,
              loads: list) -> None:
    """The kind radio drives train_lora and the class folder, and follows them (as a preset or import sets them)."""
    lora, class_dir = form.components["train_lora"], form.components["class_data_dir"]
    dreambooth_tab = section_id(form.metas["class_data_dir"]["group"])
    kind.input(lambda k, folder, kept: switch_kind(k, folder, kept, dreambooth_tab), inputs=[kind, class_dir, stash],
               outputs=[lora, class_dir, stash, form.tabs, note, reveal],
               show_progress="hidden").then(None, inputs=reveal, js=REVEAL_JS)
    lora.change(lambda k, on: kind_of(on, "", k.startswith("DreamBooth")), inputs=[kind, lora], outputs=kind,
                show_progress="hidden", queue=False)
    class_dir.change(lambda k, folder: (kind_of("LoRA" in k, folder), "" if folder else gr.skip()),
                     inputs=[kind, class_dir], outputs=[kind, note], show_progress="hidden", queue=False)
    for load in loads:
        load.then(lambda on, folder: kind_of(on, folder), inputs=[lora, class_dir], outputs=kind,
                  show_progress="hidden")
