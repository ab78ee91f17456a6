"""A `Problem`: what a start check found, naming the setting to change (core/train/start_checks.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Problem:
    field: str | None  # the setting to change; None when no single one is to blame
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message
