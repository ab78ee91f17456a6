"""How parameters are declared and validated (see core/config/__init__.py)."""
from __future__ import annotations

from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import SchemaValidator

from core.config.conditions import Condition

SCHEMA_VERSION = 2  # presets and run configs of older versions are migrated (core/config/presets.py)

Widget = Literal["dir", "dirs", "file", "files", "text", "textarea", "block_weights"]


WorkspaceSlot = Literal["dataset", "model", "output"]


def param(default: Any, help: str, *, label: str | None = None, group: str = "Basic", advanced: bool = False,
          widget: Widget | None = None, applies: Condition | tuple[Condition, ...] = (), essential: bool = False,
          workspace: WorkspaceSlot | None = None, **constraints: Any) -> Any:
    """Declare a parameter: its default and help text, and what the GUI needs to show it well.

    `label`: a short human name ("Learning rate"; the parameter's own name is shown beside it).
    `group`: its section; `advanced`: folded away; `widget`: a path or text input hint.
    `applies`: conditions (core/config/conditions.py) under which it applies; hidden otherwise.
    `essential`: on the first screen of its page. `workspace`: which workspace choice (dataset
    folder(s), base model, output folder) fills it by default."""
    extra = {"group": group, "advanced": advanced, "essential": essential}
    for key, value in (("label", label), ("widget", widget), ("workspace", workspace)):
        if value:
            extra[key] = value
    if applies:
        extra["applies"] = applies if isinstance(applies, tuple) else (applies,)
    if isinstance(default, (list, dict)):
        return Field(default_factory=lambda d=default: type(d)(d), description=help,
                     json_schema_extra=extra, **constraints)
    return Field(default, description=help, json_schema_extra=extra, **constraints)


def default_label(name: str) -> str:
    """"max_train_steps" -> "Max train steps": the label of a parameter declared without one."""
    return name.replace("_", " ").strip().capitalize()


def field_meta(model: type[BaseModel], name: str) -> dict:
    """UI metadata of one field (defaults filled in): label, group, advanced, widget, applies,
    essential, workspace."""
    extra = model.model_fields[name].json_schema_extra or {}
    return {"label": extra.get("label") or default_label(name), "group": extra.get("group", "Basic"),
            "advanced": extra.get("advanced", False), "widget": extra.get("widget"),
            "applies": extra.get("applies", ()), "essential": extra.get("essential", False),
            "workspace": extra.get("workspace")}


class JobConfig(BaseModel):
    """Base of every job's arguments: unknown keys are errors, never silently dropped.

    A job's model combines settings classes shared between jobs; pydantic lists the fields of
    the last base first, so bases are written in reverse display order."""
    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True)


class ConfigError(Exception):
    """An invalid config: the message names the file or field and the problem."""


def format_validation_error(err: ValidationError, source: str, fields_only: bool = False) -> str:
    """One line per problem, naming the source and the field; `fields_only` leaves out checks
    across fields (their loc is empty)."""
    lines = []
    for e in err.errors():
        if fields_only and not e["loc"]:
            continue
        field = ".".join(str(p) for p in e["loc"])
        message = " ".join(e["msg"].removeprefix("Value error, ").splitlines())  # one line per problem
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key {field!r} (not a parameter of this job)")
        elif not field:  # a check across fields: its message names them
            lines.append(f"{source}: {message}")
        else:
            lines.append(f"{source}: field '{field}': {message} (got {e.get('input')!r})")
    return "\n".join(lines)


def validate(model: type[JobConfig], values: dict, source: str) -> JobConfig:
    try:
        return model.model_validate(values)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


@cache
def fields_validator(model: type[JobConfig]) -> SchemaValidator:
    """`model`'s field checks alone (types, bounds, field validators) over a dict of field values: its
    model validators, the checks across fields, are left out (the optimizer_args one imports torch)."""
    schema, config = model.__pydantic_core_schema__, None
    while schema["type"] != "model-fields":  # model validators wrap the model, which wraps its fields
        if schema["type"] not in ("function-after", "function-before", "function-wrap", "model"):
            raise TypeError(f"{model.__name__}: unexpected pydantic core schema {schema['type']!r}")
        config = schema.get("config", config)
        schema = schema["schema"]
    return SchemaValidator(schema, config)


def validate_partial(model: type[JobConfig], values: dict, source: str) -> None:
    """Check some values (a preset's overrides) field by field: types, bounds, unknown keys.

    Unlike `validate`, fields that are not given are not required here, and checks across
    fields wait for the full config (a preset may set min_bucket_reso and max_resolution both): they
    are not run, so listing presets stays cheap (no torch import before the first page)."""
    blank, problems, validator = dict(model.model_construct().__dict__), [], fields_validator(model)
    for key, value in values.items():
        if key not in model.model_fields:
            problems.append(f"{source}: unknown key {key!r} (not a parameter of this job)")
            continue
        try:
            validator.validate_assignment(blank, key, value)
        except ValidationError as err:
            if message := format_validation_error(err, source, fields_only=True):
                problems.append(message)
    if problems:
        raise ConfigError("\n".join(problems))
