"""What kind of input a parameter takes: the one place that reads field annotations for the
form (tabs/form.py) and the command line (core/jobs/cli.py)."""
from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from core.config.conditions import FACTS, why_not
from core.config.schema import field_meta

Kind = Literal["bool", "int", "float", "choice", "multi_choice", "list", "table", "path", "text"]
PATH_WIDGETS = ("dir", "file")


@dataclass(frozen=True)
class FieldKind:
    """`kind`: bool, int, float, choice (one of `choices`), multi_choice (some of `choices`), list
    (of text or numbers, one per line), table (a list of `record`s, one a row), path (a folder or file: `widget`
    says which), text. `optional`: the annotation is `X | None`, and an empty input means None."""
    kind: Kind
    optional: bool = False
    choices: tuple = ()
    widget: str | None = None
    record: type[BaseModel] | None = None


def _without_none(annotation) -> tuple[object, bool]:
    """`X | None` -> (X, True); any other annotation -> (it, False)."""
    args = typing.get_args(annotation)
    if type(None) in args and len(args) == 2:
        return next(a for a in args if a is not type(None)), True
    return annotation, False


def _literal_choices(annotation) -> tuple:
    return typing.get_args(annotation) if typing.get_origin(annotation) is Literal else ()


def field_kind(model: type[BaseModel], name: str) -> FieldKind:
    """The kind of input of `model`'s field `name`; TypeError for an annotation no input can give."""
    annotation, optional = _without_none(model.model_fields[name].annotation)
    widget = field_meta(model, name)["widget"]
    if annotation is bool:
        return FieldKind("bool", optional)
    if annotation in (int, float):
        return FieldKind(annotation.__name__, optional)
    if choices := _literal_choices(annotation):
        return FieldKind("choice", optional, choices)
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        if choices := _literal_choices(item):
            return FieldKind("multi_choice", optional, choices)
        if item in (str, int, float):
            return FieldKind("list", optional, widget=widget)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return FieldKind("table", optional, record=item)
    if annotation is str:
        return FieldKind("path" if widget in PATH_WIDGETS else "text", optional, widget=widget)
    raise TypeError(f"{model.__name__}.{name}: no input kind for the annotation {annotation!r}")


def why_hidden(model: type[BaseModel], name: str, values: dict) -> str | None:
    """None when field `name` applies to `values` (the job's values plus conditions.FACTS); else why not."""
    return why_not(field_meta(model, name)["applies"], values)


def driving_fields(model: type[BaseModel]) -> dict[str, list[str]]:
    """Field of `model` or fact -> the fields whose conditions read it (the form checks those again on a
    change). A condition reading a field `model` does not have (a shared setting) drives nothing here."""
    driving: dict[str, list[str]] = {}
    for name in model.model_fields:
        for condition in field_meta(model, name)["applies"]:
            for field in condition.fields:
                if (field in model.model_fields or field in FACTS) and name not in driving.get(field, []):
                    driving.setdefault(field, []).append(name)
    return driving
