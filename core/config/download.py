"""Parameters of the `download` job: files of a Hugging Face Hub repository (or a catalogue model) into a folder."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import field_validator, model_validator

from core.config.conditions import when_not
from core.config.schema import JobConfig, param
from core.fsutil import models_root
from core.models.catalogue import CATALOGUE_IDS, default_folder, get_entry

SOURCE = "Download"
# owner/name as the Hub allows them: letters, digits, - _ . ; no "--" or ".." (huggingface_hub's own rule)
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")


class DownloadConfig(JobConfig):
    """Fetch model files from the Hugging Face Hub: resumable, checked against the Hub's hashes, never
    overwriting a file of yours. The only job that goes online."""
    catalogue: Literal[("", *CATALOGUE_IDS)] = param(
        "", "A model of the studio's catalogue (core/models/catalogue.py); empty: the repository and files below.",
        label="Catalogue model", group=SOURCE, essential=True)
    repo_id: str = param(
        "", "Hub repository to download from, owner/name (e.g. SmilingWolf/wd-vit-tagger-v3).",
        label="Repository", group=SOURCE, essential=True, applies=when_not("catalogue"))
    files: list[str] = param(
        [], "Files of the repository to fetch, one per line: names or patterns with * and ? (e.g. *.safetensors); "
        "a name ending in / takes a whole folder.", label="Files", group=SOURCE, essential=True,
        applies=when_not("catalogue"))
    revision: str = param("main", "Branch, tag or commit of the repository.", label="Revision", group=SOURCE,
                          advanced=True, min_length=1)
    local_dir: str = param(
        "", "Folder the files go to (the repository's subfolders are kept), as `hf download --local-dir`. Empty: "
        "the studio's models/ folder, models/<kind>/<catalogue model>/ or models/downloads/<owner>--<name>/.",
        label="Download folder",
        widget="dir", group=SOURCE)

    @field_validator("repo_id")
    @classmethod
    def _repo_id(cls, value: str) -> str:
        value = value.strip()
        if value and (not REPO_ID.fullmatch(value) or "--" in value or ".." in value):
            raise ValueError("give the repository as owner/name, e.g. SmilingWolf/wd-vit-tagger-v3")
        return value

    @field_validator("files")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        return [v.strip() for v in value if v.strip()]

    @model_validator(mode="after")
    def _source(self):
        if not self.catalogue and not (self.repo_id and self.files):
            raise ValueError("choose a catalogue model, or give repo_id (owner/name) and the files to fetch")
        return self

    @classmethod
    def for_catalogue(cls, entry_id: str, local_dir: str = "") -> DownloadConfig:
        """The config that downloads catalogue entry `entry_id` (into its default folder, or `local_dir`)."""
        get_entry(entry_id)
        return cls(catalogue=entry_id, local_dir=local_dir)

    def source(self) -> tuple[str, list[str]]:
        """The repository and file patterns to fetch: the catalogue entry's, or repo_id and files."""
        if self.catalogue:
            entry = get_entry(self.catalogue)
            return entry.repo_id, list(entry.files)
        return self.repo_id, list(self.files)

    def folder(self) -> Path:
        """Where the files go: local_dir, else the catalogue entry's folder under models/, else
        models/downloads/<owner>--<name>."""
        if self.local_dir.strip():
            return Path(self.local_dir.strip())
        if self.catalogue:
            return default_folder(get_entry(self.catalogue))
        return models_root() / "downloads" / self.repo_id.replace("/", "--")
