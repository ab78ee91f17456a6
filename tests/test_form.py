"""The schema form (tabs/form.py): human labels with the parameter name beside them, fields hidden when their
conditions fail (values kept), presets with hidden fields round-tripping byte for byte; the Training page's kind
of training (tabs/training.py)."""
import gradio as gr
import pytest

from core.config import ScanConfig, TrainConfig, driving_fields, field_meta
from tabs.form import SchemaForm, section_id
from tabs.preset_bar import PresetBar
from tabs.training import KINDS, kind_of, switch_kind

HUBER = {"huber_c": 0.25, "huber_schedule": "constant"}


@pytest.fixture(scope="module")
def train_form():
    with gr.Blocks():
        form = SchemaForm(TrainConfig, layout="tabs", render=False)
        form.render_essentials(exclude=("train_lora",))
        form.render_sections()
    return form


def test_labels_are_human_with_the_parameter_name_and_help_beside_them(train_form):
    lr = train_form.components["learning_rate"]
    assert lr.label == field_meta(TrainConfig, "learning_rate")["label"] != "learning_rate"
    assert lr.info.startswith("`learning_rate` · ") and TrainConfig.model_fields["learning_rate"].description in lr.info
    assert lr.elem_id == "TrainConfig-learning_rate"
    assert all(c.label == field_meta(TrainConfig, n)["label"] for n, c in train_form.components.items())


def test_every_field_rendered_once_essentials_apart_sections_as_sub_tabs(train_form):
    assert list(train_form.components) != train_form.names  # essentials first, then by section
    assert sorted(train_form.components) == sorted(TrainConfig.model_fields)
    assert train_form.tabs is not None and "essentials" in train_form.notes
    essentials = train_form.notes["essentials"][1]
    assert "learning_rate" in essentials and "train_lora" not in essentials
    assert "train_lora" in train_form.notes[field_meta(TrainConfig, "train_lora")["group"]][1]
    assert section_id("Noise & loss") == "noise-loss"


def test_fields_whose_conditions_fail_are_hidden_and_each_section_says_why(train_form):
    l2 = train_form.hidden({"loss_type": "l2"})
    assert {"huber_c", "huber_schedule"} <= set(l2) and "loss_type" not in l2
    assert "loss_type is huber or smooth_l1" in l2["huber_c"]
    assert not {"huber_c", "huber_schedule"} & set(train_form.hidden({"loss_type": "huber"}))
    assert not train_form.components["huber_c"].visible  # the defaults (l2) hide it at first

    section = field_meta(TrainConfig, "huber_c")["group"]
    updates = dict(zip(train_form.condition_outputs, train_form.apply({"loss_type": "l2"})))
    note = updates[train_form.notes[section][0]]
    assert note["visible"] and field_meta(TrainConfig, "huber_c")["label"] in note["value"]
    assert "loss_type is huber or smooth_l1" in note["value"]
    assert updates[train_form.components["huber_c"]] == {"__type__": "update", "visible": False}  # value untouched
    shown = dict(zip(train_form.condition_outputs, train_form.apply({"loss_type": "smooth_l1"})))
    assert shown[train_form.components["huber_c"]]["visible"]


def test_an_unknown_fact_hides_nothing_a_known_one_may(train_form):
    by_arch = driving_fields(TrainConfig).get("model_arch")
    assert by_arch, "some trainer settings depend on the model's architecture"
    assert not set(by_arch) & set(train_form.hidden({"model_arch": None}))
    hidden = {arch: set(by_arch) & set(train_form.hidden({"model_arch": arch})) for arch in ("sd1", "sd2", "sdxl")}
    assert any(hidden.values())


def test_hidden_fields_keep_their_values_through_show_and_read(train_form):
    values = {"loss_type": "l2", **HUBER, "lr_drops": [50, 75], "train_data_dir": ["/a", "/b c"]}
    assert set(HUBER) <= set(train_form.hidden(values))
    raw = train_form.show(values)
    assert raw[train_form.names.index("lr_drops")] == "50\n75"
    read = train_form.read(*raw)
    assert {k: read[k] for k in HUBER} == HUBER and read["train_data_dir"] == ["/a", "/b c"]
    assert read["lr_drops"] == ["50", "75"]  # as the form gives them; pydantic makes numbers of them


def test_a_preset_with_hidden_fields_round_trips_byte_for_byte(studio_home):
    from core.config.presets import find_preset

    with gr.Blocks() as blocks:
        bar = PresetBar("train")
        form = SchemaForm(TrainConfig)
        bar.wire(form, blocks)
    raw = form.show({"loss_type": "l2", **HUBER, "learning_rate": 1e-5, "class_data_dir": "",
                     "class_prompt": "a photo of a dog"})
    assert {"huber_c", "class_prompt"} <= set(form.hidden(form.read(*raw)))
    assert "Saved" in bar.do_save_as("Hidden things", *raw)[1]
    path = find_preset("train", "Hidden things").path
    first = path.read_bytes()
    loaded = bar.do_load("Hidden things")[:-1]
    assert "Saved" in bar.do_save("Hidden things", *loaded)[1]
    assert path.read_bytes() == first
    assert find_preset("train", "Hidden things").values["huber_c"] == 0.25


def test_other_jobs_forms_use_accordions_with_the_same_elem_ids():
    with gr.Blocks():
        form = SchemaForm(ScanConfig)
    assert form.tabs is None and form.components["train_data_dir"].elem_id == "ScanConfig-train_data_dir"
    assert form.bound.get("dataset") is form.components["train_data_dir"]


@pytest.mark.parametrize("lora, folder, chosen, expected", [
    (False, "", False, "Full fine-tune"), (True, "", False, "LoRA"), (False, "/class", False, "DreamBooth"),
    (True, "/class", False, "DreamBooth + LoRA"), (False, "", True, "DreamBooth"), (True, " ", True, KINDS[3])])
def test_the_kind_of_training_follows_train_lora_and_the_class_folder(lora, folder, chosen, expected):
    assert kind_of(lora, folder, chosen) == expected


def test_leaving_dreambooth_stashes_the_class_folder_and_coming_back_restores_it():
    lora, folder, stash, _, note, _ = switch_kind("LoRA", "/class", "", "dreambooth")
    assert (lora, folder, stash, note) == (True, "", "/class", "")
    lora, folder, stash, tabs, note, reveal = switch_kind("DreamBooth", folder, stash, "dreambooth")
    assert (lora, folder, stash, note, reveal) == (False, "/class", "/class", "", "TrainConfig-class_data_dir")
    assert tabs.selected == "dreambooth"
    _, folder, _, _, note, _ = switch_kind("DreamBooth + LoRA", "", "", "dreambooth")
    assert folder == "" and "class images" in note  # nothing stashed: asks for the class folder
