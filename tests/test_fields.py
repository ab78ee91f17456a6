"""One function (core.config.field_kind) says what input a parameter takes; the form and the command
line both build theirs from it and read a value back the same way."""
import json

import gradio as gr
import pytest
from pydantic import TypeAdapter

from core.config import FieldKind, TrainConfig, field_kind
from core.jobs.flags import build_parser, parse_set, resolve_config
from core.jobs.registry import JOBS
from tabs.form import SchemaForm

FIELDS = [(job, name) for job, spec in JOBS.items() for name in spec.config.model_fields]


@pytest.mark.parametrize("job, name", FIELDS)
def test_every_field_of_every_job_has_a_kind(job, name):
    kind = field_kind(JOBS[job].config, name)
    assert kind.kind in ("bool", "int", "float", "choice", "multi_choice", "list", "table", "path", "text")
    assert bool(kind.choices) == (kind.kind in ("choice", "multi_choice"))
    assert (kind.record is not None) == (kind.kind == "table")


@pytest.mark.parametrize("name, expected", [
    ("learning_rate_te1", FieldKind("float", optional=True)),
    ("learning_rate_te", FieldKind("float", optional=True)),
    ("max_train_steps", FieldKind("int")),
    ("train_lora", FieldKind("bool")),
    ("max_token_length", FieldKind("choice", choices=(75, 150, 225))),
    ("unet_blocks", FieldKind("multi_choice", choices=("down", "mid", "up"))),
    ("lr_drops", FieldKind("list")),
    ("train_data_dir", FieldKind("list", widget="dirs")),
    ("resume", FieldKind("path", widget="dir")),
    ("sample_prompts", FieldKind("path", widget="file")),
    ("keep_tokens_separator", FieldKind("text")),
])
def test_kinds_of_the_trainer_fields(name, expected):
    assert field_kind(TrainConfig, name) == expected


def test_an_empty_optional_number_flag_means_none_as_an_empty_form_field(tmp_path):
    """`--learning_rate_te1 ""` clears a value the config file gives (the form's empty number field)."""
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"job": "train", "values": {
        "pretrained_model_name_or_path": "m", "train_data_dir": ["d"], "output_dir": "o", "train_text_encoder": True,
        "learning_rate_te1": 1e-5}}))
    spec = JOBS["train"]
    assert resolve_config(spec, build_parser(spec).parse_args(["--config", str(config)])).learning_rate_te1 == 1e-5
    args = build_parser(spec).parse_args(["--config", str(config), "--learning_rate_te1", ""])
    assert resolve_config(spec, args).learning_rate_te1 is None
    args = build_parser(spec).parse_args(["--config", str(config), "--learning_rate_te1", "2e-6"])
    assert resolve_config(spec, args).learning_rate_te1 == 2e-6


def within_bounds(field, number) -> bool:
    checks = {"ge": number.__ge__, "gt": number.__gt__, "le": number.__le__, "lt": number.__lt__}
    return all(check(getattr(m, key)) for m in field.metadata for key, check in checks.items()
               if getattr(m, key, None) is not None)


def samples(field, kind: FieldKind) -> list:
    """Values of a kind, as a user gives them (numbers within the field's bounds, a list's items as text)."""
    numbers = {"int": [0, 3, 1024], "float": [0.0, 0.25, 1e-6, 1.5]}.get(kind.kind, [])
    values = [n for n in [field.default, *numbers] if n is not None and within_bounds(field, n)] if numbers else {
        "bool": [True, False], "choice": list(kind.choices),
        "multi_choice": [[], list(kind.choices[:1]), list(kind.choices)], "list": [[], ["1"], ["2", "30"]],
        "path": ["", "some folder/a b"], "text": ["", "a, b ||| c"],
        "table": [[], [{"image_dir": "some folder/a b", "num_repeats": 3, "shuffle_caption": True, "keep_tokens": 0,
                        "caption_dropout_rate": 0.25, "resolution": "64,96"}, {"image_dir": "b", "is_reg": True}]],
    }[kind.kind]
    return values + [None] * kind.optional


def cli_argv(name: str, kind: FieldKind, value) -> list[str]:
    """How the value is written on the command line (an empty list only with --set)."""
    if kind.kind == "bool":
        return [f"--{name}" if value else f"--no-{name}"]
    if kind.kind == "table":
        return [f"--{name}", json.dumps(value)]
    if isinstance(value, list):
        return [f"--{name}", *value] if value else ["--set", f"{name}=[]"]
    return [f"--{name}", "" if value is None else str(value)]


def from_cli(job: str, name: str, argv: list[str]):
    args = build_parser(JOBS[job]).parse_args(argv)
    return parse_set(args.set[0], JOBS[job].config)[1] if args.set else getattr(args, name)


def from_form(form: SchemaForm, name: str, value):
    """Shown in the component, through the browser's round trip (postprocess, preprocess), read back."""
    shown = dict(zip(form.names, form.show({name: value})))
    component = form.components[name]
    return form.read(component.preprocess(component.postprocess(shown[name])))[name]


@pytest.mark.parametrize("job", list(JOBS))
def test_form_and_command_line_read_every_kind_the_same(job):
    model = JOBS[job].config
    with gr.Blocks():
        forms = {name: SchemaForm(model, fields=[name]) for name in model.model_fields}
    for name, field in model.model_fields.items():
        kind, adapter = field_kind(model, name), TypeAdapter(field.annotation)
        for value in samples(field, kind):
            expected = adapter.validate_python(value)
            via_form = adapter.validate_python(from_form(forms[name], name, value))
            via_cli = adapter.validate_python(from_cli(job, name, cli_argv(name, kind, value)))
            assert via_form == via_cli == expected, (name, kind, value)
