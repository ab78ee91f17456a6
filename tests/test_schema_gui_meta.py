"""What the schema declares for the GUI: human labels, sections, first-screen fields, workspace slots,
the conditions under which a field applies, the settings search, and the one-line sample prompt."""
import itertools

import pytest
from trainkit import events, train, train_values

from core.config import FACTS, TrainConfig, driving_fields, field_meta, validate, why_hidden
from core.config.block_weights import BLOCK_SETTINGS
from core.config.conditions import above, any_of, when, when_not, why_not
from core.config.search import search_fields
from core.jobs.registry import JOBS
from core.train.preflight import check_training
from core.train.start_checks import StartRefused

SECTIONS = ["Training", "Model", "Data & captions", "Optimizer & schedule", "Noise & loss", "Saving",
            "Samples & validation", "LoRA", "DreamBooth", "Multi-GPU"]
ESSENTIAL = {"train_lora", "max_resolution", "train_batch_size", "max_train_steps", "max_train_epochs",
             "learning_rate", "optimizer_type", "mixed_precision", "sample_prompt"}


@pytest.mark.parametrize("job", JOBS)
def test_every_field_declares_a_short_label_unique_in_its_job(job):
    model = JOBS[job].config
    labels = {}
    for name, field in model.model_fields.items():
        label = (field.json_schema_extra or {}).get("label")
        assert label, f"{job}.{name} declares no label"
        assert label[0].isupper() and len(label.split()) <= 4 and not label.endswith("."), f"{job}.{name}: {label!r}"
        labels.setdefault(label.lower(), []).append(name)
    assert not {label: names for label, names in labels.items() if len(names) > 1}


def test_the_training_page_sections_in_display_order():
    groups = [field_meta(TrainConfig, name)["group"] for name in TrainConfig.model_fields]
    assert [group for group, _ in itertools.groupby(groups)] == SECTIONS  # each section in one piece


def test_first_screen_fields_and_workspace_slots():
    assert {n for n in TrainConfig.model_fields if field_meta(TrainConfig, n)["essential"]} == ESSENTIAL
    for spec in JOBS.values():
        slots = {n: field_meta(spec.config, n)["workspace"] for n in spec.config.model_fields}
        expected = {"train_data_dir": "dataset", "pretrained_model_name_or_path": "model", "output_dir": "output"}
        assert {n: s for n, s in slots.items() if s} == {n: s for n, s in expected.items() if n in slots}
    assert {spec.name for spec in JOBS.values() if "output_dir" in spec.config.model_fields} == {"train", "merge_lora"}


def _conditions(model, name):
    return field_meta(model, name)["applies"]


@pytest.mark.parametrize("job", JOBS)
def test_every_condition_reads_a_field_of_its_job_or_a_fact(job):
    """A condition of a setting shared with the trainer may read a trainer field (cache_latents, train_lora):
    in a job without that field it holds, so the setting is shown."""
    model = JOBS[job].config
    for name in model.model_fields:
        for condition in _conditions(model, name):
            hash(condition)
            for field in condition.fields:
                if field not in model.model_fields and field not in FACTS:
                    assert field in TrainConfig.model_fields and name in TrainConfig.model_fields, (job, name, field)
                    assert condition.holds({n: None for n in model.model_fields})
    for field, readers in driving_fields(model).items():
        assert field in model.model_fields or field in FACTS
        assert len(readers) == len(set(readers))


def _hidden(values: dict) -> set[str]:
    full = {**TrainConfig.model_construct().model_dump(), **values}
    return {n for n in TrainConfig.model_fields if why_hidden(TrainConfig, n, full)}


LORA = {"network_dim", "network_alpha", "network_dropout", "lora_targets", "lora_save_format", "network_module",
        *BLOCK_SETTINGS}
LYCORIS = {"algo", "conv_dim", "conv_alpha", "factor", "dora_wd", "network_args"}
DEFAULT_HIDDEN = LORA | LYCORIS | {
    "full_fp16", "full_bf16", "learning_rate_te", "learning_rate_te1", "learning_rate_te2",
    "stop_text_encoder_training", "ema_decay", "ema_update_every", "ema_on_cpu", "ema_save",
    "huber_c", "huber_schedule", "noise_offset_random_strength", "multires_noise_discount",
    "ip_noise_gamma_random_strength", "lr_warmup_steps", "lr_decay_steps", "lr_scheduler_num_cycles",
    "lr_scheduler_power", "keep_tokens", "keep_tokens_separator", "flip_p", "save_last_n_epochs",
    "save_last_n_steps", "sample_every_n_steps", "sample_every_n_epochs", "sample_at_first", "sample_clip_model",
    "validation_seed", "validate_every_n_steps", "validate_every_n_epochs", "auto_stop", "auto_stop_patience",
    "auto_stop_min_delta", "auto_stop_lr_factor", "auto_stop_lr_reductions", "class_prompt", "num_class_images",
    "prior_loss_weight", "machine_rank", "main_process_ip", "main_process_port", "conditioning_data_dir",
    "alpha_mask", "fused_backward_pass"}


@pytest.mark.parametrize("case, values, shown, hidden", [
    ("defaults, no model chosen", {}, set(), set()),
    ("LoRA", {"train_lora": True}, LORA, {"save_model_as", "save_precision", "unet_blocks"}),
    ("LyCORIS LoKr", {"train_lora": True, "network_module": "lycoris.kohya", "algo": "lokr"}, LORA | LYCORIS,
     {"save_model_as", "save_precision", "unet_blocks", "lora_targets", "lora_save_format", *BLOCK_SETTINGS}),
    ("LyCORIS (IA)^3", {"train_lora": True, "network_module": "lycoris.kohya", "algo": "ia3"}, LORA | LYCORIS,
     {"save_model_as", "save_precision", "unet_blocks", "lora_targets", "lora_save_format", "conv_dim",
      "conv_alpha", "factor", "dora_wd", *BLOCK_SETTINGS}),
    ("huber loss", {"loss_type": "huber"}, {"huber_c", "huber_schedule"}, set()),
    ("smooth_l1 loss", {"loss_type": "smooth_l1"}, {"huber_c", "huber_schedule"}, set()),
    ("SDXL model", {"model_arch": "sdxl"}, set(), {"clip_skip"}),
    ("SDXL model, text encoder trained", {"model_arch": "sdxl", "train_text_encoder": True},
     {"learning_rate_te", "learning_rate_te1", "learning_rate_te2", "stop_text_encoder_training"}, {"clip_skip"}),
    ("SD 1.x model, text encoder trained", {"model_arch": "sd1", "train_text_encoder": True},
     {"learning_rate_te", "stop_text_encoder_training"}, set()),
    ("unknown model, text encoder trained", {"model_arch": "unknown", "train_text_encoder": True},
     {"learning_rate_te", "learning_rate_te1", "learning_rate_te2", "stop_text_encoder_training"}, set()),
    ("epochs instead of steps", {"max_train_epochs": 3}, set(), {"max_train_steps"}),
    ("a typed sample prompt", {"sample_prompt": "a cat"},
     {"sample_every_n_steps", "sample_every_n_epochs", "sample_at_first", "sample_clip_model"}, set()),
    ("validation and auto-stop", {"validation_data_dir": "val", "auto_stop": True},
     {"validation_seed", "validate_every_n_steps", "validate_every_n_epochs", "auto_stop", "auto_stop_patience",
      "auto_stop_min_delta", "auto_stop_lr_factor", "auto_stop_lr_reductions"}, set()),
    ("no latent cache", {"cache_latents": False}, set(), {"latents_dir", "vae_batch_size",
                                                          "max_data_loader_n_workers"}),
    ("two machines", {"num_machines": 2}, {"machine_rank", "main_process_ip", "main_process_port"}, set()),
    ("cosine with warm-up", {"lr_scheduler": "cosine"}, {"lr_warmup_steps", "lr_decay_steps"}, set()),
    ("Adafactor", {"optimizer_type": "Adafactor"}, {"fused_backward_pass"}, set()),
    ("masked loss", {"masked_loss": True}, {"conditioning_data_dir", "alpha_mask"}, set()),
    ("class folder", {"class_data_dir": "class"}, {"class_prompt", "num_class_images", "prior_loss_weight"}, set()),
    ("fp16 and EMA", {"mixed_precision": "fp16", "use_ema": True},
     {"full_fp16", "ema_decay", "ema_update_every", "ema_on_cpu", "ema_save"}, set()),
    ("shuffled tags, flipped images", {"shuffle_caption": True, "flip_aug": True},
     {"keep_tokens", "keep_tokens_separator", "flip_p"}, set()),
])
def test_which_trainer_fields_are_hidden(case, values, shown, hidden):
    assert _hidden(values) == (DEFAULT_HIDDEN - shown) | hidden


def test_conditions_describe_themselves():
    values = TrainConfig.model_construct().model_dump()
    assert why_hidden(TrainConfig, "huber_c", values) == "applies only when loss_type is huber or smooth_l1"
    assert why_hidden(TrainConfig, "network_dim", values) == "applies only when train_lora is on"
    assert why_hidden(TrainConfig, "learning_rate_te1", {**values, "model_arch": "sd1"}) == \
        "applies only when train_text_encoder is on and model_arch is sdxl"
    assert why_hidden(TrainConfig, "sample_at_first", values) == \
        "applies only when sample_prompt or sample_prompts is set"
    assert why_hidden(TrainConfig, "auto_stop_patience", {**values, "validation_split": 0.1}) == \
        "applies only when auto_stop is on"
    assert why_hidden(TrainConfig, "max_train_steps", {**values, "max_train_epochs": 2}) == \
        "applies only when max_train_epochs is not set"
    assert why_hidden(TrainConfig, "main_process_ip", values) == "applies only when num_machines is above 1"
    assert why_hidden(TrainConfig, "lr_warmup_steps", values) == "applies only when lr_scheduler is not constant"
    assert any_of(when("a", 1), above("b", 2)).describe() == "a is 1 or b is above 2"
    assert when("save_model_as", "diffusers").holds({}) and when_not("x").holds({"x": "  "})
    assert why_not((when("model_arch", "sdxl"),), {"model_arch": None}) is None
    assert when("a", 1) == when("a", 1) and len({when("a", 1), when("a", 1), any_of(when("a"))}) == 2


def test_shared_settings_read_no_trainer_field_in_other_jobs():
    cache, merge = JOBS["cache"].config, JOBS["merge_lora"].config
    assert why_hidden(cache, "latents_dir", {"latents_dir": ""}) is None
    assert why_hidden(merge, "save_precision", {"save_precision": "fp16"}) is None
    assert "cache_latents" not in driving_fields(cache) and "train_lora" not in driving_fields(merge)
    assert set(driving_fields(JOBS["caption"].config)) == {"beam_search"}


@pytest.mark.parametrize("query, first", [
    ("snr", "min_snr_gamma"), ("SNR", "min_snr_gamma"), ("rank", "network_dim"), ("lr", "learning_rate"),
    ("learning rate", "learning_rate"), ("batch size", "train_batch_size"), ("base model", "pretrained_model_name_or_path"),
    ("max_train_epochs", "max_train_epochs"), ("dark bright", "noise_offset"),
])
def test_search_finds_by_name_label_or_help(query, first):
    assert search_fields(TrainConfig, query)[0].name == first


def test_search_ranks_names_and_labels_before_help_and_returns_what_the_form_shows():
    found = search_fields(TrainConfig, "rank")
    names = [m.name for m in found]
    assert names[0] == "network_dim"  # names and labels, then help only (alpha)
    assert {"machine_rank", "block_dims", "conv_block_dims"} <= set(names[1:names.index("network_alpha")])
    assert found[0].label == "LoRA rank" and found[0].group == "LoRA" and not found[0].advanced
    assert "rank" in found[0].help.lower()
    assert all("gamma" in (m.name + m.label + m.help).lower() and "snr" in (m.name + m.label + m.help).lower()
               for m in search_fields(TrainConfig, "gamma SNR"))
    assert search_fields(TrainConfig, "   ") == [] and search_fields(TrainConfig, "zzzq") == []
    assert len(search_fields(TrainConfig, "e", limit=5)) == 5


# --- sample_prompt --------------------------------------------------------------------------------

def test_sampling_options_accept_a_typed_prompt_or_a_file():
    base = {"pretrained_model_name_or_path": "m", "train_data_dir": ["d"], "output_dir": "o",
            "sample_every_n_steps": 2}
    with pytest.raises(Exception, match="sampling options are set but there is no prompt"):
        validate(TrainConfig, base, "t")
    assert validate(TrainConfig, {**base, "sample_prompt": "a cat"}, "t").sample_prompt == "a cat"
    assert validate(TrainConfig, {**base, "sample_prompts": "p.txt"}, "t").sample_prompts == "p.txt"


def test_a_run_with_only_a_typed_sample_prompt_writes_samples(demo_kit, tmp_path):
    kit = demo_kit("sd1", 6, 0)
    train(train_values(kit, tmp_path / "out", max_train_steps=2, sample_every_n_steps=1,
                       sample_prompt="a red circle --w 64 --h 64 --s 2"), tmp_path / "run")
    names = sorted(p.name for p in (tmp_path / "run" / "samples").iterdir())
    assert names == ["step00000001-00.png", "step00000002-00.png"]
    assert [e for e in events(tmp_path / "run") if e["event"] == "image"]


@pytest.mark.parametrize("prompt, message", [
    ("a cat --w big", "sample_prompt: --w (width) needs a whole number, got 'big'"),
    ("# only a comment", "sample_prompt: only a # comment, no prompt"),
])
def test_check_settings_reports_a_bad_sample_prompt_as_the_trainer_does(prompt, message, demo_kit, tmp_path):
    kit = demo_kit("sd1", 6, 0)
    values = train_values(kit, tmp_path / "out", max_train_steps=1, sample_prompt=prompt)
    reported = [str(p) for p in check_training(values).problems if p.field == "sample_prompt"]
    assert reported == [message]
    with pytest.raises(StartRefused) as refused:
        train(values, tmp_path / "run")
    assert message in str(refused.value).splitlines()
