"""Search a job's settings by parameter name, human label or help text (the form's settings search box)."""
from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from core.config.schema import field_meta


@dataclass(frozen=True)
class FieldMatch:
    name: str
    label: str
    group: str
    help: str
    advanced: bool


def initials(name: str) -> str:
    """"learning_rate" -> "lr": a parameter's short form, matched as part of its name."""
    parts = [p for p in name.split("_") if p]
    return "".join(p[0] for p in parts) if len(parts) > 1 else ""


def display_order(model: type[BaseModel]) -> list[str]:
    """The fields as the form shows them: by section (in the order sections first appear), the basic
    settings of a section before its advanced ones."""
    metas = {name: field_meta(model, name) for name in model.model_fields}
    sections = list(dict.fromkeys(meta["group"] for meta in metas.values()))
    return sorted(metas, key=lambda n: (sections.index(metas[n]["group"]), metas[n]["advanced"]))


def search_fields(model: type[BaseModel], query: str, limit: int = 20) -> list[FieldMatch]:
    """The fields of `model` where every word of `query` (any case) appears in the name (or its
    initials), the label or the help text. Fields whose name or label hold every word come first, then
    those found through their help; each in display order."""
    words = query.lower().split()
    if not words:
        return []
    ranked = []
    for position, name in enumerate(display_order(model)):
        meta, help_text = field_meta(model, name), model.model_fields[name].description or ""
        title = f"{name} {initials(name)} {meta['label']}".lower()
        if not all(word in title or word in help_text.lower() for word in words):
            continue
        tier = 0 if all(word in title for word in words) else 1
        ranked.append((tier, position, FieldMatch(name, meta["label"], meta["group"], help_text, meta["advanced"])))
    return [match for _, _, match in sorted(ranked, key=lambda r: r[:2])][:limit]
