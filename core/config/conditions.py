"""When a parameter applies: conditions declared next to it (`param(..., applies=when(...))`).

Each condition says "the job ignores this field unless ...". The form hides a field whose
conditions do not hold (its value is kept) and says why; the conditions read the other fields'
values and a few facts about the workspace that are not parameters (FACTS, e.g. the architecture
of the chosen model). A fact that is not known (no model chosen yet, or not recognised) hides
nothing, and so does a field the job does not have (a setting shared with a job that lacks the
field its condition reads, e.g. the latent-cache settings the `cache` job shares with the trainer,
whose `cache_latents` only the trainer has).

Conditions are frozen dataclasses (hashable, comparable) that describe themselves in words:
`when("loss_type", "huber", "smooth_l1")`, `when("class_data_dir")` (when it is set),
`when_not("lr_scheduler", "constant")`, `above("num_machines", 1)`,
`any_of(when("sample_prompt"), when("sample_prompts"))`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

# Facts a condition may read besides the job's own fields: name -> what it means.
FACTS = {"model_arch": "the architecture of the chosen model: sd1, sd2 or sdxl (core.models.loading.model_arch); "
                       "None or \"unknown\" when no model is chosen or it is not recognised, which hides nothing"}
UNKNOWN_FACT = (None, "unknown")

Test = Literal["is", "is not", "above"]


def is_set(value) -> bool:
    """True, non-zero, non-empty (a text of spaces is empty)."""
    return bool(value.strip() if isinstance(value, str) else value)


def _shown(value) -> str:
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class When:
    """One field (or fact) against values. `test` "is": it has one of `values` (with no values: it
    is set); "is not": it has none of them (with no values: it is not set); "above": it is a number
    above `values[0]`."""
    field: str
    values: tuple = ()
    test: Test = "is"

    @property
    def fields(self) -> tuple[str, ...]:
        return (self.field,)

    def holds(self, values: dict) -> bool:
        if self.field not in values or self.field in FACTS and values[self.field] in UNKNOWN_FACT:
            return True  # a field this job does not have, or an unknown fact, hides nothing
        value = values[self.field]
        if self.test == "above":
            return isinstance(value, (int, float)) and value > self.values[0]
        found = value in self.values if self.values else is_set(value)
        return found if self.test == "is" else not found

    def describe(self) -> str:
        if self.test == "above":
            return f"{self.field} is above {_shown(self.values[0])}"
        negation = " not" if self.test == "is not" else ""
        if not self.values:
            return f"{self.field} is{negation} set"
        return f"{self.field} is{negation} {' or '.join(_shown(v) for v in self.values)}"


@dataclass(frozen=True)
class AnyOf:
    """Holds when one of `conditions` holds."""
    conditions: tuple[When, ...]

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f for c in self.conditions for f in c.fields))

    def holds(self, values: dict) -> bool:
        return any(c.holds(values) for c in self.conditions)

    def describe(self) -> str:
        if all(c.test == "is" and not c.values for c in self.conditions):  # "a or b is set"
            return f"{' or '.join(c.field for c in self.conditions)} is set"
        return " or ".join(c.describe() for c in self.conditions)


Condition = Union[When, AnyOf]


def when(field: str, *values) -> When:
    """`when("loss_type", "huber", "smooth_l1")`; `when("class_data_dir")`: when it is set."""
    return When(field, tuple(values))


def when_not(field: str, *values) -> When:
    """`when_not("lr_scheduler", "constant")`; `when_not("max_train_epochs")`: when it is not set."""
    return When(field, tuple(values), "is not")


def above(field: str, number: float) -> When:
    """`above("num_machines", 1)`: when the field is a number above `number`."""
    return When(field, (number,), "above")


def any_of(*conditions: When) -> AnyOf:
    """`any_of(when("validation_split"), when("validation_data_dir"))`: when one of them holds."""
    return AnyOf(tuple(conditions))


def why_not(conditions: tuple[Condition, ...], values: dict) -> str | None:
    """None when every condition holds for `values` (a job's values plus FACTS); else why not."""
    failed = [c.describe() for c in conditions if not c.holds(values)]
    return f"applies only when {' and '.join(failed)}" if failed else None
