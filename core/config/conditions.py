"""When a parameter applies: conditions declared next to it (`param(..., applies=when(...))`).

The form hides a field whose conditions do not hold (its value is kept) and says why; the
conditions read the other fields' values and a few facts about the workspace that are not
parameters (FACTS, e.g. the architecture of the chosen model). A fact that is not known
(no model chosen yet) hides nothing."""
from __future__ import annotations

from dataclasses import dataclass

# Facts a condition may read besides the job's own fields: name -> what it means.
FACTS = {"model_arch": "the architecture of the chosen model (sd1, sd2, sdxl)"}


@dataclass(frozen=True)
class When:
    """Holds when `field` has one of `values`; with no values, when it is set (true, non-zero, non-empty)."""
    field: str
    values: tuple = ()

    def holds(self, values: dict) -> bool:
        if self.field not in values or values[self.field] is None and self.field in FACTS:
            return True  # an unknown fact hides nothing
        value = values[self.field]
        if not self.values:
            return bool(value.strip() if isinstance(value, str) else value)
        return value in self.values

    def describe(self) -> str:
        if not self.values:
            return f"{self.field} is set"
        shown = [("on" if v else "off") if isinstance(v, bool) else str(v) for v in self.values]
        return f"{self.field} is {' or '.join(shown)}"


def when(field: str, *values) -> When:
    """`when("loss_type", "huber", "smooth_l1")`; `when("class_data_dir")`: when it is set."""
    return When(field, tuple(values))


def why_not(conditions: tuple[When, ...], values: dict) -> str | None:
    """None when every condition holds for `values` (a job's values plus FACTS); else why not."""
    failed = [c.describe() for c in conditions if not c.holds(values)]
    return f"applies only when {' and '.join(failed)}" if failed else None
