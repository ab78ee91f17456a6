import json
from types import SimpleNamespace

import pytest

from core.config import ConfigError, TrainConfig, validate, validate_partial
from core.config.kohya_import import GUI_RULES, MAX_DEPTH, RULES, KohyaImport, import_kohya_values, read_kohya_config

# A dreambooth/fine-tune config as the kohya_ss GUI saves it: numbers as strings, "" for unset,
# LoRA keys of the shared form, a stale multires setting that noise_offset_type "Original" leaves unused.
KOHYA_SS = {
    "LoRA_type": "Standard", "adaptive_noise_scale": 0, "additional_parameters": "", "bucket_no_upscale": True,
    "bucket_reso_steps": 64, "cache_latents": True, "cache_latents_to_disk": True,
    "caption_dropout_every_n_epochs": 0.0, "caption_dropout_rate": 0.05, "caption_extension": ".txt",
    "clip_skip": "2", "color_aug": False, "enable_bucket": True, "epoch": 10, "flip_aug": False,
    "full_bf16": False, "full_fp16": False, "gradient_accumulation_steps": 1.0, "gradient_checkpointing": True,
    "keep_tokens": "1", "learning_rate": "1e-6", "learning_rate_te": "5e-7", "logging_dir": "/runs/logs",
    "lr_scheduler": "cosine_with_restarts", "lr_scheduler_num_cycles": "3", "lr_scheduler_power": "",
    "lr_warmup": "10", "max_bucket_reso": "1024", "max_data_loader_n_workers": "0", "max_resolution": "768",
    "max_timestep": 1000, "max_token_length": "150", "max_train_epochs": "", "max_train_steps": "",
    "mem_eff_attn": False, "min_bucket_reso": "256", "min_snr_gamma": 5, "mixed_precision": "bf16",
    "multires_noise_discount": 0.3, "multires_noise_iterations": 6, "network_alpha": 8, "network_dim": 16,
    "noise_offset": 0.05, "noise_offset_type": "Original", "num_cpu_threads_per_process": 2,
    "optimizer": "adamw8bit", "optimizer_args": "weight_decay=0.01 betas=0.9,0.99", "output_dir": "/models/out",
    "output_name": "my-style", "pretrained_model_name_or_path": "/models/v1-5.safetensors", "reg_data_dir": "",
    "resume": "", "sample_every_n_epochs": 0, "sample_every_n_steps": 0,
    "sample_prompts": "a photo of sks dog --n blurry", "sample_sampler": "euler_a", "save_every_n_epochs": "1",
    "save_model_as": "ckpt", "save_precision": "float", "save_state": "False", "seed": "",
    "shuffle_caption": "True", "stop_text_encoder_training": 20, "train_batch_size": 2,
    "train_data_dir": "/data/img", "train_text_encoder": True, "v2": False, "v_parameterization": False,
    "vae": "", "vae_batch_size": 0, "wandb_api_key": "secret123", "xformers": "xformers",
}

# sd-scripts TOML as --output_config writes it, keys grouped in tables.
SD_SCRIPTS = """
[model_arguments]
pretrained_model_name_or_path = "/models/sd21-768v.safetensors"
v2 = true
v_parameterization = true

[dataset_arguments]
train_data_dir = "/data/img"
resolution = "768,640"
caption_extension = ".caption"
shuffle_caption = true
keep_tokens = 2
enable_bucket = true
min_bucket_reso = 320
max_bucket_reso = 1280
cache_latents = true
cache_latents_to_disk = true

[training_arguments]
output_dir = "/models/out"
output_name = "sd21-style"
save_precision = "bf16"
save_every_n_steps = 500
save_model_as = "diffusers"
train_batch_size = 4
max_train_steps = 3000
seed = 42
gradient_checkpointing = true
mixed_precision = "bf16"
full_bf16 = true
sdpa = true
max_token_length = 225
min_snr_gamma = 5.0
zero_terminal_snr = true
train_text_encoder = true
stop_text_encoder_training = 1000
sample_prompts = "/data/prompts.txt"
sample_every_n_steps = 250
logging_dir = "/logs"
log_with = "tensorboard"

[optimizer_arguments]
optimizer_type = "Lion"
learning_rate = 2e-6
optimizer_args = [ "weight_decay=0.05", "betas=(0.95,0.98)",]
lr_scheduler = "constant_with_warmup"
lr_warmup_steps = 200
max_grad_norm = 1.0
"""

REQUIRED = {"pretrained_model_name_or_path": "/m", "train_data_dir": ["/d"], "output_dir": "/o"}


def checked(result: KohyaImport) -> KohyaImport:
    """Every import must pass the schema field by field, as presets do."""
    validate_partial(TrainConfig, result.values, "kohya import")
    assert result.unknown == sorted(result.unknown)
    return result


def test_kohya_ss_gui_json(tmp_path):
    path = tmp_path / "my-style_20240101-120000.json"
    path.write_text(json.dumps(KOHYA_SS, indent=2))
    result = checked(read_kohya_config(path))
    assert result.values == {
        "bucket_no_upscale": True, "bucket_reso_steps": 64, "cache_latents": True, "caption_dropout_rate": 0.05,
        "caption_extension": ".txt", "clip_skip": 2, "max_train_epochs": 10, "flip_aug": False,
        "full_bf16": False, "full_fp16": False, "gradient_accumulation_steps": 1, "gradient_checkpointing": True,
        "keep_tokens": 1, "learning_rate": 1e-6, "learning_rate_te": 5e-7, "lr_scheduler": "cosine_with_restarts",
        "lr_scheduler_num_cycles": 3, "lr_warmup_steps": 0.1, "max_bucket_reso": 1024,
        "max_data_loader_n_workers": 0, "max_resolution": "768,768", "max_timestep": 1000, "max_token_length": 150,
        "min_bucket_reso": 256, "min_snr_gamma": 5.0, "mixed_precision": "bf16", "noise_offset": 0.05,
        "optimizer_type": "AdamW8bit", "optimizer_args": ["weight_decay=0.01", "betas=0.9,0.99"],
        "output_dir": "/models/out", "output_name": "my-style",
        "pretrained_model_name_or_path": "/models/v1-5.safetensors", "sample_every_n_epochs": 0,
        "sample_every_n_steps": 0, "save_every_n_epochs": 1, "save_model_as": "safetensors",
        "save_precision": "fp32", "save_state": False, "shuffle_caption": True, "stop_text_encoder_training": 0.2,
        "train_batch_size": 2, "train_data_dir": ["/data/img"], "train_text_encoder": True,
        "v_parameterization": False, "network_alpha": 8.0, "network_dim": 16,
    }
    assert result.unknown == [
        "LoRA_type=Standard", "adaptive_noise_scale=0", "caption_dropout_every_n_epochs=0.0", "color_aug=false",
        "logging_dir=/runs/logs", "num_cpu_threads_per_process=2",
        "sample_prompts=a photo of sks dog --n blurry", "sample_sampler=euler_a", "wandb_api_key",
    ]
    for note in ("lr_warmup 10 (% of the run) -> lr_warmup_steps 0.1", "epoch 10 -> max_train_epochs 10",
                 "stop_text_encoder_training 20 (% of the run) -> stop_text_encoder_training 0.2",
                 "optimizer adamw8bit -> optimizer_type AdamW8bit", "max_resolution 768 -> 768,768",
                 "save_precision float -> fp32", "save_model_as ckpt -> safetensors",
                 "LoRA settings not supported here are not imported (LyCORIS, conv settings, separate U-Net lr)",
                 "xformers: ignored (used automatically when installed, else PyTorch SDPA)",
                 "cache_latents_to_disk: ignored (the latent cache is always on disk)"):
        assert note in result.notes
    assert any(n.startswith("sample_prompts a photo of sks dog") and ".txt file" in n for n in result.notes)
    assert not any(n.startswith(("v2", "mem_eff_attn", "enable_bucket")) for n in result.notes)  # off / on: nothing
    # with the required fields it is a complete, consistent training config
    validate(TrainConfig, result.values, str(path))


def test_sd_scripts_toml_with_tables(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(SD_SCRIPTS)
    result = checked(read_kohya_config(path))
    assert result.values == {
        "pretrained_model_name_or_path": "/models/sd21-768v.safetensors", "v_parameterization": True,
        "train_data_dir": ["/data/img"], "max_resolution": "768,640", "caption_extension": ".caption",
        "shuffle_caption": True, "keep_tokens": 2, "min_bucket_reso": 320, "max_bucket_reso": 1280,
        "cache_latents": True, "output_dir": "/models/out", "output_name": "sd21-style", "save_precision": "bf16",
        "save_every_n_steps": 500, "save_model_as": "diffusers", "train_batch_size": 4, "max_train_steps": 3000,
        "seed": 42, "gradient_checkpointing": True, "mixed_precision": "bf16", "full_bf16": True,
        "max_token_length": 225, "min_snr_gamma": 5.0, "zero_terminal_snr": True, "train_text_encoder": True,
        "stop_text_encoder_training": 1000.0, "sample_prompts": "/data/prompts.txt", "sample_every_n_steps": 250,
        "optimizer_type": "Lion", "learning_rate": 2e-6, "optimizer_args": ["weight_decay=0.05", "betas=(0.95,0.98)"],
        "lr_scheduler": "constant_with_warmup", "lr_warmup_steps": 200.0, "max_grad_norm": 1.0,
    }
    assert result.unknown == ["log_with=tensorboard", "logging_dir=/logs"]
    assert "resolution 768,640 -> max_resolution 768,640" in result.notes
    assert "v2: ignored (SD 2.x is detected from the model)" in result.notes
    assert "sdpa: ignored (PyTorch SDPA is used when xformers is not installed)" in result.notes
    validate(TrainConfig, result.values, str(path))


@pytest.mark.parametrize("raw, expected", [
    ({"lr_warmup": 5}, {"lr_warmup_steps": 0.05}),
    ({"lr_warmup": "0"}, {"lr_warmup_steps": 0.0}),
    ({"lr_warmup_steps": 150}, {"lr_warmup_steps": 150.0}),
    ({"lr_warmup": 10, "lr_warmup_steps": 0}, {"lr_warmup_steps": 0.1}),  # a set value beats 0
    ({"epoch": "3"}, {"max_train_epochs": 3}),
    ({"epoch": 3, "max_train_epochs": ""}, {"max_train_epochs": 3}),
    ({"max_train_steps": "0", "epoch": 2}, {"max_train_epochs": 2}),  # kohya_ss "0": computed from epochs
    ({"resolution": "512"}, {"max_resolution": "512,512"}),
    ({"resolution": 640}, {"max_resolution": "640,640"}),
    ({"resolution": "512,768"}, {"max_resolution": "512,768"}),
    ({"max_resolution": "1024,1024"}, {"max_resolution": "1024,1024"}),
    ({"optimizer": "PRODIGY"}, {"optimizer_type": "Prodigy"}),
    ({"optimizer_type": "lion8bit"}, {"optimizer_type": "Lion8bit"}),
    ({"optimizer_args": "weight_decay=0.01 betas=0.9,0.99"},
     {"optimizer_args": ["weight_decay=0.01", "betas=0.9,0.99"]}),
    ({"optimizer_args": ["weight_decay=0.01", "eps=1e-08"]}, {"optimizer_args": ["weight_decay=0.01", "eps=1e-08"]}),
    ({"save_precision": "float"}, {"save_precision": "fp32"}),
    ({"save_precision": "fp16"}, {"save_precision": "fp16"}),
    ({"save_precision": "bf16"}, {"save_precision": "bf16"}),
    ({"save_model_as": "diffusers_safetensors"}, {"save_model_as": "diffusers"}),
    ({"stop_text_encoder_training": "25"}, {"stop_text_encoder_training": 0.25}),
    ({"text_encoder_lr": 0}, {"learning_rate_te": None}),  # as learning_rate (our 0 would freeze it)
    ({"learning_rate_te": "0"}, {"learning_rate_te": None}),
    ({"learning_rate_te1": "0", "learning_rate_te2": "1e-6"}, {"learning_rate_te1": 0.0, "learning_rate_te2": 1e-6}),
    ({"text_encoder_lr": "1e-6", "learning_rate_te": 0.0}, {"learning_rate_te": 1e-6}),
    ({"lr_scheduler": "Constant_With_Warmup"}, {"lr_scheduler": "constant_with_warmup"}),
    ({"shuffle_caption": "False", "flip_aug": "true", "save_state": 1}, {"shuffle_caption": False, "flip_aug": True,
                                                                         "save_state": True}),
    ({"image_folder": "/data/ft"}, {"train_data_dir": ["/data/ft"]}),
    ({"sdxl_no_half_vae": True, "sdxl_cache_text_encoder_outputs": "True"},
     {"no_half_vae": True, "cache_text_encoder_outputs": True}),
    ({"sample_prompts": "/data/prompts.txt"}, {"sample_prompts": "/data/prompts.txt"}),
    ({"reg_data_dir": "/data/reg", "prior_loss_weight": "0.5"}, {"class_data_dir": "/data/reg", "prior_loss_weight": 0.5}),
    ({"seed": "", "vae": None, "vae_batch_size": 0, "lr_scheduler_num_cycles": "0"}, {}),
])
def test_conversions(raw, expected):
    result = checked(import_kohya_values(raw))
    assert result.values == expected and result.unknown == []


def test_sd_scripts_counts_stop_text_encoder_training_in_steps():
    assert checked(import_kohya_values({"stop_text_encoder_training": 20}, gui=False)).values == {
        "stop_text_encoder_training": 20.0}


@pytest.mark.parametrize("raw, sd_rates, sdxl_rates", [
    ({"text_encoder_lr": 0}, {"text_encoder": 1e-4}, {"text_encoder": 1e-4, "text_encoder_2": 1e-4}),
    ({"learning_rate_te": "0"}, {"text_encoder": 1e-4}, {"text_encoder": 1e-4, "text_encoder_2": 1e-4}),
    ({"text_encoder_lr": "5e-6"}, {"text_encoder": 5e-6}, {"text_encoder": 5e-6, "text_encoder_2": 5e-6}),
    ({"learning_rate_te1": "0", "learning_rate_te2": "1e-6"}, {"text_encoder": 1e-4}, {"text_encoder_2": 1e-6}),
])
def test_kohya_text_encoder_rates_train_as_they_did(raw, sd_rates, sdxl_rates):
    """A kohya text encoder rate of 0 trained the text encoder at learning_rate (empty here, since our 0
    freezes it); learning_rate_te1/te2 0 froze that encoder before and still does."""
    result = checked(import_kohya_values({"learning_rate": "1e-4", "train_text_encoder": True, **raw}))
    cfg = validate(TrainConfig, {**REQUIRED, **result.values}, "kohya import")
    assert (cfg.text_encoder_rates("sd1"), cfg.text_encoder_rates("sdxl")) == (sd_rates, sdxl_rates)
    if raw == {"text_encoder_lr": 0}:
        assert "text_encoder_lr 0 -> learning_rate_te empty" in result.notes


def test_our_own_name_wins_over_an_alias_and_the_other_is_noted():
    result = checked(import_kohya_values({"epoch": 3, "max_train_epochs": "5"}))
    assert result.values == {"max_train_epochs": 5}
    assert "epoch 3: ignored (max_train_epochs 5 is used)" in result.notes


def test_unsupported_optimizer_goes_to_unknown_with_its_arguments():
    result = checked(import_kohya_values({"optimizer": "DAdaptAdam", "optimizer_args": "decouple=True",
                                          "learning_rate": 1.0}))
    assert result.values == {"learning_rate": 1.0}
    assert result.unknown == ["optimizer=DAdaptAdam", "optimizer_args=decouple=True"]
    assert any(n.startswith("optimizer DAdaptAdam: not imported") and "'Prodigy'" in n for n in result.notes)
    assert "optimizer_args: not imported (they belong to the optimizer that was not)" in result.notes


@pytest.mark.parametrize("raw, unknown, note", [
    ({"lr_scheduler": "adafactor"}, ["lr_scheduler=adafactor"], "lr_scheduler adafactor: not imported (Input should"),
    ({"lr_warmup": 100}, ["lr_warmup=100"], "lr_warmup 100: not imported (expected a percentage from 0 to 99)"),
    ({"bucket_reso_steps": 1}, ["bucket_reso_steps=1"], "bucket_reso_steps 1: not imported (Input should be greater"),
    ({"max_token_length": "100"}, ["max_token_length=100"], "max_token_length 100: not imported (Input should be 75"),
    ({"caption_dropout_rate": 1.5}, ["caption_dropout_rate=1.5"], "caption_dropout_rate 1.5: not imported"),
    ({"resolution": "big"}, ["resolution=big"], "resolution big: not imported (expected WIDTH,HEIGHT"),
    ({"no_token_padding": True}, ["no_token_padding=true"], "no_token_padding is not supported"),
    ({"unet_lr": 1e-4, "rank_dropout_scale": True}, ["rank_dropout_scale=true", "unet_lr=0.0001"],
     "LoRA settings not supported here"),
    ({"network_module": "networks.dylora"}, ["network_module=networks.dylora"], "network_module networks.dylora: "
     "not imported (only networks.lora (LoRA) and lycoris.kohya (LyCORIS)"),
])
def test_values_we_cannot_take_are_listed_with_a_note(raw, unknown, note):
    result = checked(import_kohya_values(raw))
    assert result.values == {} and result.unknown == unknown
    assert len(result.notes) == 1 and result.notes[0].startswith(note)


def test_unknown_keys_are_listed_shortened_and_secrets_without_their_value():
    result = import_kohya_values({"training_comment": "x" * 100, "huggingface_token": "hf_x", "wandb_api_key": "k",
                                  "lr_scheduler_args": ["a=1"]})
    assert result.unknown == ["huggingface_token", 'lr_scheduler_args=["a=1"]',
                              "training_comment=" + "x" * 37 + "...", "wandb_api_key"]
    assert result.values == {} and result.notes == []


def test_noise_offset_type_picks_the_noise_settings_kohya_ss_uses():
    raw = {"noise_offset": 0.1, "noise_offset_random_strength": True, "multires_noise_iterations": 8,
           "multires_noise_discount": 0.4}
    multires = checked(import_kohya_values({**raw, "noise_offset_type": "Multires"}))
    assert multires.values == {"multires_noise_iterations": 8, "multires_noise_discount": 0.4}
    original = checked(import_kohya_values({**raw, "noise_offset_type": "Original"}))
    assert original.values == {"noise_offset": 0.1, "noise_offset_random_strength": True}
    assert multires.unknown == original.unknown == []


def test_ignored_flags_are_noted_only_when_they_matter():
    assert import_kohya_values({"xformers": "none", "v2": False, "enable_bucket": True}).notes == []
    assert import_kohya_values({"enable_bucket": "False"}).notes == [
        "enable_bucket off: ignored (images are always bucketed by aspect ratio)"]


def test_every_rule_targets_a_trainer_field():
    for rule in (RULES | GUI_RULES).values():
        assert rule.target in TrainConfig.model_fields


@pytest.mark.parametrize("name, content, message", [
    ("broken.json", '{"learning_rate": 1e-6,', "invalid JSON at line 1"),
    ("list.json", '["learning_rate", 1e-6]', "expected a JSON object of settings, found a list"),
    ("broken.toml", "learning_rate = = 1", "invalid TOML"),
    ("config.yaml", "learning_rate: 1e-6", "not a kohya config"),
    ("long number.json", '{"seed": ' + "1" * 5000 + "}", "invalid JSON: Exceeds the limit"),
    ("long number.toml", "seed = " + "1" * 5000, "invalid TOML: Exceeds the limit"),
    ("deep.json", "[" * 100_000 + "]" * 100_000, f"nested more than {MAX_DEPTH} levels deep"),
    ("deep value.json", '{"train_data_dir": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested more than"),
    ("deep.toml", "train_data_dir = " + "[" * 100_000 + "]" * 100_000, "nested more than"),
    ("deep table.toml", "train_data_dir = " + "{a = " * 100_000 + "1" + "}" * 100_000, "nested more than"),
    ("nested.json", '{"train_data_dir": ' + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "}", "nested more than"),
])
def test_bad_files_name_the_file_and_the_problem(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ConfigError, match=message) as err:
        read_kohya_config(path)
    assert str(err.value).startswith(f"{path}: ")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.json: cannot read"):
        read_kohya_config(tmp_path / "missing.json")


def test_values_nested_just_below_the_limit_are_listed(tmp_path):
    path = tmp_path / "nested.json"
    path.write_text('{"train_data_dir": ' + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "}")
    assert read_kohya_config(path).unknown == ["train_data_dir=" + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)]
    with pytest.raises(ConfigError, match=f"^kohya config: nested more than {MAX_DEPTH} levels deep"):
        import_kohya_values({"train_data_dir": json.loads("[" * MAX_DEPTH + "]" * MAX_DEPTH)})


@pytest.mark.parametrize("raw, note", [
    ({"lr_warmup": [1, 2]}, "lr_warmup [1, 2]: not imported (expected a percentage from 0 to 99)"),
    ({"lr_warmup": 10**400}, "lr_warmup 1000000000000000000000000000000000000...: not imported (expected a "
     "percentage from 0 to 99)"),
    ({"stop_text_encoder_training": [3]}, "stop_text_encoder_training [3]: not imported (expected a percentage "
     "from 0 to 99)"),
    ({"optimizer_args": 5}, "optimizer_args 5: not imported (expected key=value text or a list of them)"),
    ({"optimizer_args": ["eps=1e-8", {"a": 1}]}, 'optimizer_args ["eps=1e-8", {"a": 1}]: not imported (Input '
     "should be a valid string)"),
    ({"train_data_dir": 5}, "train_data_dir 5: not imported (expected a folder or a list of folders)"),
    ({"train_data_dir": {"a": 1}}, 'train_data_dir {"a": 1}: not imported (expected a folder or a list of folders)'),
    ({"image_folder": ["/data", 1]}, 'image_folder ["/data", 1]: not imported (Input should be a valid string)'),
    ({"resolution": [1.5, 2]}, "resolution [1.5, 2]: not imported (expected WIDTH,HEIGHT text or [WIDTH, HEIGHT])"),
    ({"max_resolution": [[1], [2]]}, "max_resolution [[1], [2]]: not imported (expected WIDTH,HEIGHT text or "
     "[WIDTH, HEIGHT])"),
    ({"learning_rate": True}, "learning_rate true: not imported (expected a number, not true/false)"),
    ({"train_batch_size": True}, "train_batch_size true: not imported (expected a number, not true/false)"),
    ({"lr_drops": [100, True]}, "lr_drops [100, true]: not imported (expected a number, not true/false)"),
    ({"learning_rate": 10**400}, "learning_rate 1000000000000000000000000000000000000...: not imported (Input "
     "should be a valid number)"),
    ({"sample_prompts": ["/data/prompts.txt"]}, 'sample_prompts ["/data/prompts.txt"]: not imported (expected the '
     "path of a prompt file)"),
    ({"network_module": ["networks.lora"]}, 'network_module ["networks.lora"]: not imported (only networks.lora '
     "(LoRA) and lycoris.kohya (LyCORIS) are supported here, not other network modules)"),
])
def test_values_of_the_wrong_type_are_listed_with_what_was_expected(raw, note):
    """The GUI showed these as a traceback (TypeError) or imported them wrong ({"a": 1} as the folder "a")."""
    [key] = raw
    result = checked(import_kohya_values(raw))
    assert result.values == {} and result.notes == [note]
    assert len(result.unknown) == 1 and result.unknown[0].startswith(f"{key}=")


@pytest.mark.parametrize("first, second", [("1e-4", '"fast"'), ('"fast"', "1e-4")])
def test_a_key_in_two_tables_keeps_the_valid_value_and_reports_the_other(tmp_path, first, second):
    path = tmp_path / "config.toml"
    path.write_text(f"[training_arguments]\nlearning_rate = {first}\n[optimizer_arguments]\nlearning_rate = {second}\n")
    result = checked(read_kohya_config(path))
    assert result.values == {"learning_rate": 1e-4} and result.unknown == ["learning_rate=fast"]
    [note] = result.notes
    assert note.startswith("learning_rate fast: not imported (Input should be a valid number")


def test_a_key_given_twice_keeps_the_later_valid_value_as_sd_scripts_does_and_reports_the_other(tmp_path):
    toml = tmp_path / "config.toml"
    toml.write_text("[training_arguments]\nlearning_rate = 1e-4\n[optimizer_arguments]\nlearning_rate = 2e-4\n")
    json_file = tmp_path / "config.json"  # a hand-edited kohya_ss file: JSON keeps only the last without a word
    json_file.write_text('{"learning_rate": 1e-4, "learning_rate": "2e-4", "learning_rate": "fast"}')
    for path in (toml, json_file):
        result = checked(read_kohya_config(path))
        assert result.values == {"learning_rate": 2e-4}
        assert "learning_rate 0.0001: ignored (learning_rate " in "\n".join(result.notes)


def test_the_gui_shows_an_import_error_as_a_message(tmp_path):
    from tabs.training import import_kohya

    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    *unchanged, message = import_kohya(str(path), SimpleNamespace(inputs=[None, None]))
    assert len(unchanged) == 2
    assert message == f"**Not imported:** {path}: nested more than {MAX_DEPTH} levels deep (not a kohya config)"


def test_regularization_images_become_prior_preservation_with_a_hint_about_the_class_prompt():
    result = checked(import_kohya_values({"reg_data_dir": "/data/reg", "prior_loss_weight": 1.0}, gui=False))
    assert result.values == {"class_data_dir": "/data/reg", "prior_loss_weight": 1.0} and result.unknown == []
    [note] = result.notes
    assert note.startswith("reg_data_dir /data/reg -> class_data_dir /data/reg (set class_prompt")
    with pytest.raises(ConfigError, match="class_prompt is needed with class_data_dir"):
        validate(TrainConfig, {**result.values, **REQUIRED}, "kohya import")


def test_an_sd_scripts_lora_config_turns_lora_training_on():
    result = checked(import_kohya_values({"network_module": "networks.lora", "network_dim": 32, "network_alpha": 16},
                                         gui=False))
    assert result.values == {"network_module": "networks.lora", "train_lora": True, "network_dim": 32,
                             "network_alpha": 16.0}


def test_an_sd_scripts_lycoris_config_gives_the_network_and_its_network_args(tmp_path):
    path = tmp_path / "lycoris.toml"
    path.write_text('[additional_network_arguments]\nnetwork_module = "lycoris.kohya"\nnetwork_dim = 8\n'
                    'network_alpha = 4\nnetwork_args = ["algo=lokr", "conv_dim=4", "conv_alpha=2", "factor=8", '
                    '"dora_wd=True", "preset=attn-mlp", "rank_dropout=0.1", "use_cp=False", "dropout=0.1", '
                    '"bogus=1"]\n')
    result = checked(read_kohya_config(path))
    assert result.values == {"network_module": "lycoris.kohya", "train_lora": True, "network_dim": 8,
                             "network_alpha": 4.0, "algo": "lokr", "conv_dim": 4, "conv_alpha": 2.0, "factor": 8,
                             "dora_wd": True, "network_dropout": 0.1,
                             "network_args": ["preset=attn-mlp", "rank_dropout=0.1", "use_tucker=False"]}
    assert result.unknown == ["bogus=1"]
    validate(TrainConfig, {**result.values, **REQUIRED}, str(path))
    assert checked(import_kohya_values({"network_module": "lycoris.kohya", "network_args": "algo=lora"},
                                       gui=False)).values["algo"] == "locon"  # the library's lora is LoCon


def test_a_kohya_ss_lycoris_type_gives_the_network_and_the_options_its_form_sets():
    result = checked(import_kohya_values({"LoRA_type": "LyCORIS/iA3", "network_dim": 8, "LyCORIS_preset": "full",
                                          "module_dropout": 0.1, "use_tucker": False, "rank_dropout": 0}))
    assert result.values == {"train_lora": True, "network_module": "lycoris.kohya", "algo": "ia3",
                             "network_dim": 8, "network_args": ["module_dropout=0.1"]}
    assert result.unknown == []
    assert "LoRA_type=Standard" in checked(import_kohya_values({"LoRA_type": "Standard"})).unknown


def test_sd_scripts_network_args_and_kohya_ss_fields_give_the_block_weights(tmp_path):
    path = tmp_path / "block.toml"
    path.write_text('[additional_network_arguments]\nnetwork_module = "networks.lora"\nnetwork_dim = 8\n'
                    'network_args = ["down_lr_weight=sine+0.5", "mid_lr_weight=2", "up_lr_weight=0,0,1", '
                    '"block_lr_zero_threshold=0.1", "block_dims=' + ",".join(["4"] * 25) + '"]\n')
    result = read_kohya_config(path)
    assert result.values == {"network_module": "networks.lora", "train_lora": True, "network_dim": 8,
                             "down_lr_weight": "sine+0.5",
                             "mid_lr_weight": "2", "up_lr_weight": "0,0,1", "block_lr_zero_threshold": 0.1,
                             "block_dims": ",".join(["4"] * 25)}
    assert result.unknown == []
    gui = import_kohya_values({"LoRA_type": "Standard", "down_lr_weight": "1,1,1,1,1,1,1,1,1,1,1,0",
                               "block_alphas": "", "conv_block_dims": ",".join(["2"] * 23), "up_lr_weight": "zeros"})
    assert gui.values == {"down_lr_weight": "1,1,1,1,1,1,1,1,1,1,1,0", "conv_block_dims": ",".join(["2"] * 23),
                          "up_lr_weight": "zeros"}
    bad = import_kohya_values({"network_args": ["down_lr_weight=sawtooth", "block_dims=1,2"]}, gui=False)
    assert not bad.values and sorted(bad.unknown) == ["block_dims=1,2", "down_lr_weight=sawtooth"]
    assert any("down_lr_weight sawtooth: not imported" in note and "cosine, sine" in note for note in bad.notes)


def test_fused_backward_pass_imports_from_an_sd_scripts_toml_and_a_kohya_ss_json(tmp_path):
    toml = tmp_path / "sdxl.toml"
    toml.write_text('[optimizer_arguments]\noptimizer_type = "adafactor"\noptimizer_args = ["scale_parameter=False", '
                    '"relative_step=False", "warmup_init=False"]\nfused_backward_pass = true\n'
                    '[training_arguments]\ngradient_accumulation_steps = 1\nfull_bf16 = true\nmixed_precision = "bf16"\n')
    result = checked(read_kohya_config(toml))
    assert result.values["fused_backward_pass"] is True and result.values["optimizer_type"] == "Adafactor"
    assert result.unknown == []
    validate(TrainConfig, {**result.values, **REQUIRED}, str(toml))
    gui = checked(import_kohya_values({"fused_backward_pass": "True", "optimizer": "Adafactor"}))
    assert gui.values == {"fused_backward_pass": True, "optimizer_type": "Adafactor"} and gui.unknown == []


@pytest.mark.parametrize("raw, expected, note", [
    ({"masked_loss": True, "conditioning_data_dir": "/data/masks"},
     {"masked_loss": True, "conditioning_data_dir": "/data/masks"}, None),
    ({"masked_loss": "true", "alpha_mask": "true"}, {"masked_loss": True, "alpha_mask": True}, None),
    # sd-scripts weights the loss by the alpha channel whenever alpha_mask is on, masked_loss or not
    ({"alpha_mask": True}, {"masked_loss": True, "alpha_mask": True}, "alpha_mask on -> masked_loss on"),
    ({"alpha_mask": True, "masked_loss": False}, {"masked_loss": True, "alpha_mask": True},
     "alpha_mask on -> masked_loss on"),
    ({"alpha_mask": False, "masked_loss": False}, {"masked_loss": False, "alpha_mask": False}, None),
])
def test_masked_loss_settings_import(raw, expected, note):
    for gui in (True, False):
        result = checked(import_kohya_values(raw, gui=gui))
        assert result.values == expected and result.unknown == []
        assert any(n.startswith(note) for n in result.notes) if note else not result.notes


def test_a_config_naming_a_dataset_config_imports_its_subsets(tmp_path):
    for name in ("alice", "reg"):
        (tmp_path / name).mkdir()
    dataset = tmp_path / "dataset.toml"
    dataset.write_text("[general]\nshuffle_caption = true\n[[datasets]]\nresolution = 512\n"
                       "[[datasets.subsets]]\nimage_dir = 'alice'\nnum_repeats = 10\nclass_tokens = 'sks girl'\n"
                       "[[datasets.subsets]]\nimage_dir = 'reg'\nis_reg = true\n", encoding="utf-8")
    expected = [{"image_dir": str(tmp_path / "alice"), "num_repeats": 10, "is_reg": False, "class_tokens": "sks girl",
                 "shuffle_caption": True, "resolution": "512,512"},
                {"image_dir": str(tmp_path / "reg"), "num_repeats": 1, "is_reg": True, "shuffle_caption": True,
                 "resolution": "512,512"}]
    gui = tmp_path / "kohya_ss.json"
    gui.write_text(json.dumps({"dataset_config": str(dataset), "train_data_dir": "", "learning_rate": "1e-4"}))
    sd_scripts = tmp_path / "run.toml"
    sd_scripts.write_text(f"[training_arguments]\ndataset_config = '{dataset.as_posix()}'\n", encoding="utf-8")
    for path in (gui, sd_scripts):
        result = checked(read_kohya_config(path))
        assert [s.model_dump(exclude_none=True) for s in result.values["subsets"]] == expected
        assert result.unknown == []
        assert any(note.startswith("dataset_config") and "subsets table" in note for note in result.notes)
        cfg = validate(TrainConfig, {**REQUIRED, **result.values, "train_data_dir": []}, str(path))
        assert [s.num_repeats for s in cfg.subsets] == [10, 1] and cfg.subsets[1].is_reg

    missing = import_kohya_values({"dataset_config": str(tmp_path / "gone.toml")})
    assert "subsets" not in missing.values and [entry.split("=")[0] for entry in missing.unknown] == ["dataset_config"]
    assert "file not found" in missing.notes[0]
