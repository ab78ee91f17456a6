import json

import pytest

from core.config import SCHEMA_VERSION, ConfigError, ScanConfig, field_meta, presets, validate
from core.config.presets import PresetError, delete_preset, list_presets, load_preset, save_preset
from core.jobs.cli import main as cli_main
from core.jobs.registry import JOBS
from core.jobs.run_folder import RunFolder


def test_every_field_is_declared_with_help_and_group():
    for spec in JOBS.values():
        for name, field in spec.config.model_fields.items():
            assert field.description, f"{spec.name}.{name} has no help text"
            assert field_meta(spec.config, name)["group"]


def test_validation_names_field_and_problem():
    with pytest.raises(ConfigError) as err:
        validate(ScanConfig, {"train_data_dir": ["x"], "max_image_pixels": 5, "bogus": 1}, "my.json")
    text = str(err.value)
    assert "my.json: field 'max_image_pixels'" in text and "greater than or equal" in text
    assert "unknown key 'bogus'" in text


def test_defaults_are_validated():
    with pytest.raises(ConfigError, match="train_data_dir.*at least one folder"):
        validate(ScanConfig, {}, "form")


def test_preset_round_trip_stores_only_overrides(studio_home):
    values = {"train_data_dir": ["/data/a"], "caption_extension": ".caption", "recursive": True}
    path = save_preset("scan", "My Scan", values, description="captions in .caption")
    assert path == studio_home / "presets" / "user" / "scan" / "my-scan.json"
    data = json.loads(path.read_text())
    assert data == {"schema_version": SCHEMA_VERSION, "job": "scan", "name": "My Scan",
                    "description": "captions in .caption",
                    "values": {"train_data_dir": ["/data/a"], "caption_extension": ".caption"}}
    preset = load_preset(path, "scan")
    assert validate(ScanConfig, preset.values, "x") == validate(ScanConfig, values, "x")
    with pytest.raises(PresetError, match="exists already"):
        save_preset("scan", "My Scan", values)
    save_preset("scan", "My Scan", {**values, "recursive": False}, overwrite=True)
    assert load_preset(path).values["recursive"] is False
    names = [p.name for p in list_presets("scan")[0]]
    assert "My Scan" in names
    delete_preset("scan", "My Scan")
    assert not path.exists()


@pytest.mark.parametrize("content, message", [
    ("{not json", "invalid JSON at line 1, column 2"),
    ('["a"]', "expected a JSON object"),
    ('{"job": "scan", "values": {"recursive": "maybe"}}', "field 'recursive': Input should be a valid boolean"),
    ('{"job": "scan", "values": {"train_data_dir": ["a"], "max_image_pixels": 3}}',
     "field 'max_image_pixels': Input should be greater than or equal to 1000000"),
    ('{"job": "scan", "values": {"train_data_dir": ["a"], "colour": "red"}}', "unknown key 'colour'"),
    ('{"job": "scan", "values": {"train_data_dir": ["a"]}, "extra": 1}', "unknown key(s) 'extra'"),
    ('{"job": "nope", "values": {}}', "unknown job 'nope'"),
    ('{"job": "demo", "values": {}}', "for job 'demo', not 'scan'"),
    ('{"job": "scan", "schema_version": 99, "values": {"train_data_dir": ["a"]}}', "newer than this program's"),
    ('{"job": "scan", "values": []}', "'values' must be an object"),
])
def test_bad_preset_files_name_file_field_and_problem(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(PresetError) as err:
        load_preset(path, "scan")
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_bad_user_preset_is_listed_as_error_not_dropped(studio_home):
    folder = studio_home / "presets" / "user" / "scan"
    folder.mkdir(parents=True)
    (folder / "broken.json").write_text('{"job": "scan", "values": {"nope": 1}}')
    found, errors = list_presets("scan")
    assert not any(p.name == "broken" for p in found)
    assert len(errors) == 1 and "broken.json" in errors[0] and "unknown key 'nope'" in errors[0]


def test_builtin_presets_are_valid_and_read_only():
    for job in JOBS:
        found, errors = list_presets(job)
        assert errors == []
        for preset in (p for p in found if p.builtin):
            assert preset.migrated_from is None, f"{preset.path}: write it at schema version {SCHEMA_VERSION}"
            with pytest.raises(PresetError, match="read-only"):
                save_preset(job, preset.name, preset.values, overwrite=True)
            with pytest.raises(PresetError, match="cannot be deleted"):
                delete_preset(job, preset.name)
    assert any(p.builtin for p in list_presets("scan")[0])


def test_old_schema_version_is_migrated(tmp_path, monkeypatch):
    def rename_ext(values):
        values["caption_extension"] = values.pop("caption_ext")
        return values

    monkeypatch.setattr(presets, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(presets.MIGRATIONS, "scan", {1: rename_ext})
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"schema_version": 1, "job": "scan",
                                "values": {"train_data_dir": ["d"], "caption_ext": ".cap"}}))
    preset = load_preset(path, "scan")
    assert preset.values == {"train_data_dir": ["d"], "caption_extension": ".cap"}
    assert preset.migrated_from == 1


TRAIN_REQUIRED = {"pretrained_model_name_or_path": "m", "train_data_dir": ["d"], "output_dir": "o"}


@pytest.mark.parametrize("version, rate, migrated", [(1, 0, None), (1, 0.0, None), (1, "0", None), (1, 1e-6, 1e-6),
                                                      (2, 0, 0), (2, 1e-6, 1e-6)])
def test_version_1_learning_rate_te_0_becomes_empty_same_as_learning_rate(tmp_path, version, rate, migrated):
    """Schema version 2: an empty learning_rate_te is "same as learning_rate" (what 0 meant in version 1);
    0 keeps the text encoder frozen, as learning_rate_te1/te2 0."""
    values = {**TRAIN_REQUIRED, "train_text_encoder": True, "learning_rate": 1e-4, "learning_rate_te": rate}
    path = tmp_path / "preset.json"
    path.write_text(json.dumps({"schema_version": version, "job": "train", "values": values}))
    preset = load_preset(path, "train")
    assert preset.values["learning_rate_te"] == migrated
    assert preset.migrated_from == (version if version < SCHEMA_VERSION else None)
    if migrated == 0:
        with pytest.raises(ConfigError, match="every text encoder stays frozen .*turn off train_text_encoder"):
            validate(JOBS["train"].config, preset.values, "preset")
        return
    cfg = validate(JOBS["train"].config, preset.values, "preset")
    assert cfg.text_encoder_rates("sd1") == {"text_encoder": migrated or 1e-4}


def test_a_version_1_run_config_is_migrated_on_the_command_line(tmp_path):
    from core.jobs.cli import build_parser, resolve_config

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"schema_version": 1, "job": "train", "values": {
        **TRAIN_REQUIRED, "train_text_encoder": True, "learning_rate_te": 0}}))
    spec = JOBS["train"]
    cfg = resolve_config(spec, build_parser(spec).parse_args(["--config", str(config)]))
    assert cfg.learning_rate_te is None and cfg.text_encoder_rates("sd1") == {"text_encoder": cfg.learning_rate}


def test_cli_layers_config_flags_and_set(tmp_path, capsys):
    from core.jobs.cli import build_parser, resolve_config

    config = tmp_path / "c.json"
    config.write_text(json.dumps({"job": "scan", "values": {"train_data_dir": ["a"], "caption_extension": ".x"}}))
    spec = JOBS["scan"]
    args = build_parser(spec).parse_args(["--config", str(config), "--train_data_dir", "b", "c",
                                          "--no-recursive", "--set", "max_image_pixels=2000000",
                                          "--set", "caption_extension=.caption"])
    cfg = resolve_config(spec, args)
    assert cfg.train_data_dir == ["b", "c"] and cfg.recursive is False
    assert cfg.max_image_pixels == 2_000_000 and cfg.caption_extension == ".caption"


def test_cli_invalid_config_exits_2_and_records_it(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = cli_main(["scan", "--set", "train_data_dir=x", "--set", "max_image_pixels=1", "--run-dir", str(run_dir)])
    assert code == 2
    assert "field 'max_image_pixels'" in capsys.readouterr().err
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "invalid" and status["exit_code"] == 2
    events = RunFolder(run_dir).read_events()
    assert events[-1]["event"] == "error" and "max_image_pixels" in events[-1]["message"]
    assert cli_main(["scan", "--set", "nope=1"]) == 2
    assert cli_main(["nojob"]) == 2


def test_cli_help_lists_jobs_and_fields(capsys):
    assert cli_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(job in out for job in JOBS)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["scan", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--train_data_dir" in out and "--caption_extension" in out and "--no-recursive" in out


@pytest.mark.parametrize("job", list(JOBS))
def test_every_job_has_working_help(job, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main([job, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(f"--{name}" in out for name in JOBS[job].config.model_fields)


@pytest.mark.parametrize("values, message", [
    ({"bucket_reso_steps": 60}, "form: bucket_reso_steps must be a multiple of 8"),
    ({"min_bucket_reso": 600}, "form: max_resolution 512,512 is outside min_bucket_reso..max_bucket_reso"),
    ({"min_bucket_reso": 1100}, "min_bucket_reso (1100) is larger than max_bucket_reso (1024)"),
    ({"max_resolution": "2048,512"}, "outside min_bucket_reso..max_bucket_reso (256..1024)"),
    ({"max_resolution": "wide"}, "field 'max_resolution': expected WIDTH,HEIGHT"),
])
def test_bucket_settings_are_checked_together(values, message):
    from core.config import BucketConfig

    with pytest.raises(ConfigError) as err:
        validate(BucketConfig, {"train_data_dir": ["d"], **values}, "form")
    assert message in str(err.value)


def test_resolution_is_normalised():
    from core.config import BucketConfig

    cfg = validate(BucketConfig, {"train_data_dir": ["d"], "max_resolution": "768 x 512",
                                  "max_bucket_reso": 1024}, "form")
    assert cfg.max_resolution == "768,512" and cfg.resolution == (768, 512)


def test_cli_literal_numbers_and_floats_parse(capsys):
    from core.config import TrainConfig
    from core.jobs.cli import build_parser, resolve_config
    from core.jobs.registry import JobSpec

    spec = JobSpec("train", TrainConfig, "core.train:run", "train")
    args = build_parser(spec).parse_args(["--train_data_dir", "d", "--pretrained_model_name_or_path", "m",
                                          "--output_dir", "o", "--max_token_length", "225",
                                          "--learning_rate", "1e-4", "--set", "clip_skip=2"])
    cfg = resolve_config(spec, args)
    assert (cfg.max_token_length, cfg.learning_rate, cfg.clip_skip) == (225, 1e-4, 2)
    with pytest.raises(SystemExit):
        build_parser(spec).parse_args(["--max_token_length", "100"])
    assert "invalid choice value: '100'" in capsys.readouterr().err


def test_preset_checks_across_fields_wait_for_the_full_config(tmp_path):
    from core.config import BucketConfig

    path = tmp_path / "small.json"
    path.write_text(json.dumps({"job": "bucket", "values": {"max_resolution": "128,128", "min_bucket_reso": 64}}))
    assert load_preset(path, "bucket").values["min_bucket_reso"] == 64
    path.write_text(json.dumps({"job": "bucket", "values": {"max_resolution": "128,128", "min_bucket_reso": 512}}))
    with pytest.raises(ConfigError, match="outside min_bucket_reso..max_bucket_reso"):
        validate(BucketConfig, {"train_data_dir": ["d"], **load_preset(path, "bucket").values}, "run")
