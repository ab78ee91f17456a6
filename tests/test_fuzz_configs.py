"""Fuzzed (hypothesis) job configs, presets, command lines and kohya imports: whatever a user, a
hand-edited preset or a kohya import feeds in, the answer is a valid config or a ConfigError whose every
line names its source and the field; never another exception (which the GUI would show as a traceback)."""
from __future__ import annotations

import json
import shlex
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.config import ConfigError, TrainConfig, validate, validate_partial
from core.config.kohya_import import (
    GUI_RULES,
    IGNORED,
    MAX_DEPTH,
    RULES,
    UNUSED_NOISE,
    _is_zero,
    import_kohya_values,
    read_kohya_config,
)
from core.config.presets import PresetError, load_preset, parse_preset
from core.jobs.cli import build_parser, resolve_config
from core.jobs.registry import JOBS

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=30))
ANY_JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)


def typed(annotation) -> st.SearchStrategy:
    """Values of about the right type: near the bounds, odd strings, choices and their misspellings."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union or type(None) in args:
        return st.one_of(*(typed(a) for a in args if a is not type(None)), st.none())
    if origin is typing.Literal:
        return st.sampled_from(args) | st.text(max_size=10)
    if origin is list:
        return st.lists(typed(args[0]) if args else ANY_JSON, max_size=3)
    if annotation is bool:
        return st.booleans() | st.sampled_from(["yes", "0", 2])
    if annotation is int:
        return st.integers(-10**9, 10**9) | st.sampled_from([0, -1, 1, 2**31, 2**63]) | st.floats()
    if annotation is float:
        return st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10**6, 10**6)
    return st.text(max_size=40) | st.sampled_from(["", " ", "../..", "a\nb", "C:\\x", "~/data", "64,64",
                                                   "0,0", "-8,64", "1e9,1"])


def job_values(job: str) -> st.SearchStrategy:
    fields = JOBS[job].config.model_fields
    known = {name: typed(field.annotation) | ANY_JSON for name, field in fields.items()}
    return st.fixed_dictionaries({}, optional=known) | st.dictionaries(st.text(max_size=12), ANY_JSON, max_size=3)


def assert_clear(err: ConfigError, source: str) -> None:
    message = str(err)
    assert message.strip() and "Traceback" not in message
    for line in message.splitlines():
        assert line.startswith(f"{source}:"), line


@pytest.mark.parametrize("job", list(JOBS))
def test_fuzzed_values_validate_or_give_a_clear_error(job):
    @FUZZ
    @given(job_values(job))
    def check(values):
        try:
            cfg = validate(JOBS[job].config, values, "fuzz")
        except ConfigError as err:
            assert_clear(err, "fuzz")
        else:
            json.dumps(cfg.model_dump(mode="json"))  # what goes into the run's config.json

    check()


@FUZZ
@given(st.fixed_dictionaries({}, optional={"job": st.sampled_from(list(JOBS)) | ANY_JSON,
                                           "schema_version": st.integers(-2, 3) | ANY_JSON,
                                           "name": st.text(max_size=10) | ANY_JSON,
                                           "description": ANY_JSON,
                                           "values": job_values("train") | ANY_JSON}) | ANY_JSON)
def test_fuzzed_preset_documents_load_or_give_a_clear_error(data):
    try:
        parse_preset(data, "my.json")
    except PresetError as err:
        assert_clear(err, "my.json")


@FUZZ
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_fuzzed_preset_files_load_or_give_a_clear_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("preset") / "fuzz.json"
    path.write_bytes(data)
    try:
        load_preset(path, "train")
    except PresetError as err:
        assert_clear(err, str(path))


@FUZZ
@given(st.lists(st.sampled_from(sorted(JOBS["train"].config.model_fields)), min_size=1, max_size=3),
       st.lists(st.text(max_size=20), min_size=3, max_size=3))
def test_fuzzed_command_lines_give_a_clear_error(keys, raw_values):
    """`--set key=value` and `--<field> value` flags as a shell would pass them (never starts a job)."""
    spec = JOBS["train"]
    parser = build_parser(spec)
    argv = [arg for key, value in zip(keys, raw_values) for arg in ("--set", f"{key}={value}")]
    argv += [f"--{keys[0]}", raw_values[0]] if not raw_values[0].startswith("-") else []
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse's own usage error, printed for the user
        assert exit_.code == 2, shlex.join(argv)
        return
    try:
        resolve_config(spec, args)
    except ConfigError as err:
        message = str(err)
        assert message.strip() and "Traceback" not in message


KOHYA_KEYS = sorted(set(RULES) | set(GUI_RULES) | set(IGNORED) | set(TrainConfig.model_fields) | {"noise_offset_type"})
# any JSON value (none, true/false, numbers, text, lists, tables, nested), and some that kohya's keys take
KOHYA_VALUES = ANY_JSON | st.sampled_from(["10", "0", "512,768", "networks.lora", "weight_decay=0.01 eps=1e-8",
                                           "/data/prompts.txt", "Original", "Multires", "True", "1e-4", 10**400])


def unreported(pairs: list[tuple[str, typing.Any]], imported) -> list[str]:
    """Keys whose value was neither imported nor named in the report. Unset values (empty, 0), flags that do
    not matter here and the noise settings that noise_offset_type leaves unused may go without a word."""
    lines = imported.unknown + imported.notes
    quiet = set(IGNORED)
    if any(key == "noise_offset_type" for key, _ in pairs):
        quiet |= {"noise_offset_type", *(key for keys in UNUSED_NOISE.values() for key in keys)}
    rules = RULES | GUI_RULES
    return [key for key, value in pairs
            if key not in quiet and value is not None and str(value).strip() and not _is_zero(value)
            and (rules[key].target if key in rules else key) not in imported.values
            and not any(line == key or line.startswith((f"{key}=", f"{key} ", f"{key}:")) for line in lines)]


@FUZZ
@given(st.fixed_dictionaries({}, optional=dict.fromkeys(KOHYA_KEYS, KOHYA_VALUES))
       | st.dictionaries(st.sampled_from(KOHYA_KEYS) | st.text(max_size=12), KOHYA_VALUES, max_size=8), st.booleans())
def test_fuzzed_kohya_values_are_imported_valid_or_reported(raw, gui):
    """Every key the import knows, with a value of any type: imported as a value the form can show, or
    listed with why; never another exception (which the GUI would show as a traceback)."""
    try:
        imported = import_kohya_values(raw, gui=gui)
    except ConfigError as err:  # only values nested too deep
        assert_clear(err, "kohya config")
        return
    validate_partial(TrainConfig, imported.values, "kohya")
    assert all(isinstance(entry, str) for entry in imported.unknown + imported.notes)
    assert unreported(list(raw.items()), imported) == []


@FUZZ
@given(st.lists(st.sampled_from(KOHYA_KEYS), min_size=1, max_size=3).flatmap(
    lambda keys: st.lists(st.tuples(st.sampled_from(keys), KOHYA_VALUES), max_size=6)))
def test_fuzzed_kohya_files_with_a_key_given_twice_keep_or_report_each_value(tmp_path_factory, pairs):
    """A hand-edited kohya_ss .json may repeat a key (an sd-scripts .toml: in several tables); each value is
    imported or reported, none dropped without a word."""
    path = tmp_path_factory.mktemp("kohya") / "config.json"
    path.write_text("{" + ", ".join(f"{json.dumps(key)}: {json.dumps(value)}" for key, value in pairs) + "}")
    try:
        imported = read_kohya_config(path)
    except ConfigError as err:
        assert_clear(err, str(path))
        return
    validate_partial(TrainConfig, imported.values, "kohya")
    assert unreported(pairs, imported) == []


@FUZZ
@given(st.sampled_from(KOHYA_KEYS), st.integers(0, 2 * MAX_DEPTH) | st.sampled_from([1000, 100_000]),
       st.sampled_from(["json list", "json table", "toml list"]))
def test_fuzzed_nesting_depth_gives_a_clear_error_past_the_limit(tmp_path_factory, key, depth, kind):
    opening, closing = {"json list": ("[", "]"), "json table": ('{"a": ', "}"), "toml list": ("[", "]")}[kind]
    value = opening * depth + "1" + closing * depth
    path = tmp_path_factory.mktemp("kohya") / ("config.toml" if kind == "toml list" else "config.json")
    path.write_text(f"{key} = {value}" if kind == "toml list" else f"{{{json.dumps(key)}: {value}}}")
    try:
        read_kohya_config(path)
    except ConfigError as err:
        assert_clear(err, str(path))
        assert depth >= MAX_DEPTH, str(err)  # the config is one level, its value `depth` more
    else:
        assert depth < MAX_DEPTH
