"""What the queue file holds: its entries in order and the queue's settings.

An entry is one job with its settings frozen when it was added (validated with the job's schema and stored as
JSON, so a later change of the form or of a preset does not change it), a one-line summary of what it will do,
its status, its run folder once started, and optionally the entry it runs after (a chain).
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.config import JobConfig, field_meta
from core.jobs.locks import folder_key, overlap
from core.jobs.registry import JOBS

Status = Literal["waiting", "running", "done", "failed", "stopped", "skipped", "interrupted"]
ENDED = ("done", "failed", "stopped", "skipped", "interrupted")
UNSUCCESSFUL = ("failed", "stopped", "skipped", "interrupted")  # what the entries after it cannot run after
FAILURES = ("failed", "interrupted")  # what "on failure: stop the queue" pauses the queue for
OnFailure = Literal["skip", "stop"]
QUEUE_VERSION = 1


class Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    id: str = Field(min_length=1)
    job: str
    values: dict          # the job's full settings, validated and frozen when added
    summary: str = ""     # what it will do, in one line
    status: Status = "waiting"
    after: str | None = None  # the id of the entry it runs after (a chain): it is skipped if that one fails
    run_dir: str | None = None  # the run folder of its current (or last) run
    previous_runs: list[str] = []  # run folders of earlier tries (interrupted, refused at start, re-queued)
    resume_from: str = ""  # a training interrupted mid-run: the saved state its next run resumes from
    reason: str = ""       # why it waits, failed, was skipped or interrupted
    added: float
    started: float | None = None
    ended: float | None = None

    @field_validator("job")
    @classmethod
    def _known_job(cls, job: str) -> str:
        if job not in JOBS:
            raise ValueError(f"unknown job {job!r} (jobs: {', '.join(JOBS)})")
        return job

    def run_values(self) -> dict:
        """The settings its next run starts with: the frozen ones (resuming a saved state, after an interruption)."""
        return {**self.values, "resume": self.resume_from} if self.resume_from else dict(self.values)

    def label(self) -> str:
        return f"entry {self.id} ({self.job})"


class QueueState(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    version: Literal[1] = QUEUE_VERSION
    paused: bool = False
    pause_reason: str = ""
    on_failure: OnFailure = "skip"  # skip: go on with the next entry; stop: pause the queue
    notice: str = ""  # what the user should know about the file itself (it was unreadable and set aside)
    entries: list[Entry] = []

    @model_validator(mode="after")
    def _consistent(self):
        ids = [entry.id for entry in self.entries]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"entry id(s) {', '.join(repeated)} appear more than once")
        for entry in self.entries:
            if entry.after == entry.id:
                raise ValueError(f"entry {entry.id} runs after itself")
        return self

    def find(self, entry_id: str) -> Entry | None:
        return next((entry for entry in self.entries if entry.id == entry_id), None)

    def running(self) -> list[Entry]:
        return [entry for entry in self.entries if entry.status == "running"]

    def dependents(self, entry_id: str) -> list[Entry]:
        """The entries that run after `entry_id`, directly or through others, in queue order."""
        found, frontier = set(), {entry_id}
        while frontier:
            frontier = {e.id for e in self.entries if e.after in frontier and e.id not in found}
            found |= frontier
        return [entry for entry in self.entries if entry.id in found]


def job_config(job: str, values: dict) -> JobConfig:
    """Settings validated before (a queued entry's, a run's config.json) as the job's model, not validated again."""
    return JOBS[job].config.model_construct(**values)


def frozen_config(entry: Entry) -> JobConfig:
    return job_config(entry.job, entry.run_values())


def workspace_fields(model: type[JobConfig]) -> dict[str, str]:
    """{workspace slot (dataset, model, output): the field it fills} of a job's model (the schema says)."""
    return {meta["workspace"]: name for name in model.model_fields if (meta := field_meta(model, name))["workspace"]}


def _paths(value) -> list[str]:
    return [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str) and v.strip()]


def describe(job: str, cfg: JobConfig) -> str:
    """What the job will do in one line: the job, its dataset and base model, what it writes where and under which
    name ("train: /data/cats with /models/sd15.safetensors -> model output in /out; latent cache (output name:
    cats)")."""
    slots = {slot: _paths(getattr(cfg, name)) for slot, name in workspace_fields(type(cfg)).items()}
    dataset, model = slots.get("dataset", []), slots.get("model", [])
    parts = [f"{job}:", *([", ".join(dataset)] if dataset else []), *([f"with {model[0]}"] if model else [])]
    shown = {folder_key(p) for p in dataset + model}
    written = [t.kind if t.key() in shown else f"{t.kind} in {t.folder}" for t in JOBS[job].writes(cfg)]
    if not written and slots.get("output"):
        written = [f"into {slots['output'][0]}"]
    if written:
        parts.append("-> " + "; ".join(dict.fromkeys(written)))
    if getattr(cfg, "output_name", ""):  # two trainings into one folder differ by it
        parts.append(f"(output name: {cfg.output_name})")
    return " ".join(parts)


def touched_folders(job: str, cfg: JobConfig) -> list[str]:
    """The folders a job reads or writes (its dataset, model, output and locked targets), as `folder_key` gives
    them: two jobs that share one never run side by side."""
    paths = [p for name in workspace_fields(type(cfg)).values() for p in _paths(getattr(cfg, name))]
    paths += [t.folder for t in JOBS[job].writes(cfg) if t.folder.strip()]
    return list(dict.fromkeys(folder_key(p) for p in paths))


def shared_folder(a: list[str], b: list[str]) -> str | None:
    """A folder of `a` that is, holds or lies in a folder of `b` (None: they touch nothing in common)."""
    return next((x for x in a for y in b if overlap(x, y)), None)
