"""A chain (pipeline): one dataset's preparation and training queued in one go, each step after the one before
(tag -> clean -> cache -> train by default). A step that fails, is stopped or skipped skips every step after it.

Each step's settings: its job's defaults < the preset chosen for it, or else the settings given as its base (the
GUI gives those of the job's form, as set on its tab) < the dataset, base model and output folder of the chain
(filled into the fields the schema marks with those workspace slots) < the values given for it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from core.config.presets import find_preset, list_presets
from core.jobs.registry import JOBS
from core.queue.entries import Entry, workspace_fields
from core.queue.store import QueueError, append, editing, make_entry

CHAIN_STEPS = ("tag", "clean", "cache", "train")  # a dataset's preparation, then its training


@dataclass
class Step:
    job: str
    preset: str = ""  # the name of one of the job's presets (built-in or user)
    values: dict = field(default_factory=dict)  # settings over the preset's and the chain's
    base: dict = field(default_factory=dict)  # settings in place of a preset's, when no preset is named


def preset_values(job: str, name: str) -> dict:
    """The values of the job's preset called `name` (its name, or its file's name without .json)."""
    preset = find_preset(job, name) or next((p for p in list_presets(job)[0] if p.path and p.path.stem == name), None)
    if preset is None:
        raise QueueError(f"no {job} preset named {name!r}")
    return preset.values


def step_values(step: Step, dataset: list[str], model: str = "", output: str = "") -> dict:
    """The settings of one step (see the module's doc for the layers)."""
    if step.job not in JOBS:
        raise QueueError(f"unknown job {step.job!r} (jobs: {', '.join(JOBS)})")
    values = preset_values(step.job, step.preset) if step.preset else dict(step.base)
    chosen = {"dataset": list(dataset), "model": model, "output": output}
    for slot, name in workspace_fields(JOBS[step.job].config).items():
        if chosen[slot]:
            values[name] = chosen[slot]
    return {**values, **step.values}


def add_chain(steps: list[Step], dataset: list[str], model: str = "", output: str = "",
              after: str | None = None) -> list[Entry]:
    """Queue the steps on `dataset`, each after the one before (the first after `after`, when given). Every
    step is validated before any is queued: an invalid one (ConfigError, naming the step) queues nothing."""
    if not steps:
        raise QueueError("a chain needs at least one step")
    entries = [make_entry(step.job, step_values(step, dataset, model, output),
                          f"chain step {i} ({step.job}{', preset ' + repr(step.preset) if step.preset else ''})")
               for i, step in enumerate(steps, 1)]
    with editing() as queue:
        for entry in entries:
            append(queue, entry, after)
            after = entry.id
    return entries
