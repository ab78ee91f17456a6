"""Parameters of the captioning jobs: WD14 tagging (`tag`) and BLIP captioning (`caption`)."""
from __future__ import annotations

from typing import Literal

from pydantic import field_validator, model_validator

from core.captions.rules import parse_rules
from core.captions.tags import parse_replacements
from core.config.conditions import when
from core.config.dataset import DATA, CaptionSettings, DatasetSettings, LoaderSettings
from core.config.schema import JobConfig, param


class CaptionWriteSettings(LoaderSettings, CaptionSettings, DatasetSettings):  # bases in reverse display order
    """Which images get a caption file and what happens to one that exists."""
    existing_captions: Literal["skip", "overwrite", "append"] = param(
        "skip", "When an image has a caption file already: skip it, overwrite it (the old one is backed up and can "
        "be restored), or append the new tags/text that are not in it yet.", label="Existing captions", group=DATA)
    batch_size: int = param(8, "Images run through the model at once (1 when the model fixes it).",
                            label="Batch size", group="Model", ge=1, le=512)


class TagConfig(CaptionWriteSettings):
    """Tag images with a WD14 tagger (ONNX, SmilingWolf's v2/v3 layout) from a local folder."""
    model_dir: str = param(
        "", "Folder with the tagger's model.onnx and selected_tags.csv (download both from a SmilingWolf WD "
        "tagger repository on Hugging Face, e.g. wd-vit-tagger-v3).", label="Tagger model folder", widget="dir",
        min_length=1, group="Model")
    general_threshold: float = param(0.35, "Confidence needed for a general tag.", label="General threshold",
                                     group="Tags", ge=0, le=1)
    character_threshold: float = param(0.85, "Confidence needed for a character tag.", label="Character threshold",
                                       group="Tags", ge=0, le=1)
    use_rating_tags: bool = param(False, "Add the most likely rating tag (general, sensitive, ...).",
                                  label="Add rating tag", group="Tags")
    character_tags_first: bool = param(True, "Put character tags before general tags.",
                                       label="Character tags first", group="Tags")
    always_first_tags: list[str] = param(
        [], "Tags always put first when present, one per line (e.g. your trigger word, 1girl).",
        label="Tags always first", group="Tags")
    undesired_tags: list[str] = param([], "Tags never written, one per line.", label="Excluded tags", group="Tags")
    remove_underscore: bool = param(
        True, "Write tags with spaces instead of underscores (emoticons like ^_^ are kept).",
        label="Spaces for underscores", group="Tags")
    tag_replacement: list[str] = param(
        [], "Replacements, one `old,new` pair per line (after underscores are removed).", label="Tag replacements",
        group="Tags", advanced=True)
    caption_separator: str = param(", ", "Text between tags.", label="Tag separator", group="Tags", advanced=True,
                                   min_length=1)

    @field_validator("tag_replacement")
    @classmethod
    def _replacement_pairs(cls, items: list[str]) -> list[str]:
        parse_replacements(items)  # a ValueError names the bad line
        return items


class BlipCaptionConfig(CaptionWriteSettings):
    """Caption images in sentences with a BLIP model (transformers) from a local folder."""
    model_dir: str = param(
        "", "Folder of a BLIP captioning model saved by transformers (BlipForConditionalGeneration with its "
        "processor, e.g. Salesforce/blip-image-captioning-large).", label="BLIP model folder", widget="dir",
        min_length=1, group="Model")
    beam_search: bool = param(
        True, "Beam search (steady captions); off: nucleus sampling (more varied).", label="Beam search",
        group="Generation")
    num_beams: int = param(3, "Beams for beam search.", label="Beams", group="Generation",
                           applies=when("beam_search", True), ge=1, le=16)
    top_p: float = param(0.9, "Nucleus sampling: keep the smallest set of words with this total probability.",
                         label="Top-p", group="Generation", applies=when("beam_search", False), gt=0, le=1)
    min_length: int = param(5, "Shortest caption in tokens.", label="Min length", group="Generation", ge=0, le=500)
    max_length: int = param(75, "Longest caption in tokens.", label="Max length", group="Generation", ge=1, le=500)
    prefix: str = param("", "Text written before every caption (e.g. a trigger word).", label="Text before",
                        group="Generation")
    postfix: str = param("", "Text written after every caption.", label="Text after", group="Generation")
    seed: int = param(42, "Random seed (nucleus sampling).", label="Seed", group="Generation", advanced=True,
                      applies=when("beam_search", False))

    @model_validator(mode="after")
    def _lengths(self):
        if self.min_length > self.max_length:
            raise ValueError(f"min_length ({self.min_length}) is above max_length ({self.max_length})")
        return self


class CleanConfig(CaptionSettings, DatasetSettings):  # bases in reverse display order
    """Clean caption files with an ordered list of rules; a snapshot taken first makes it undoable."""
    rules: list[str] = param(
        ["underscores", "whitespace", "dedupe"],
        "Rules applied in order, one per line: underscores, whitespace, dedupe, lowercase, drop_ratings, "
        "drop_subsumed, sd_normalize, `remove: tag1, tag2`, `remove_regex: PATTERN`, `replace: old -> new`, "
        "`replace_regex: PATTERN -> REPLACEMENT`, `prefix: tag` (kept first), `suffix: tag` (kept last), "
        "`max_tags: N`.", label="Rules", widget="textarea", group="Rules")
    only_with_tag: str = param(
        "", "Apply the rules only to captions that contain this tag (bulk edit of a search result; empty: all).",
        label="Only captions with tag", group="Rules")
    dry_run: bool = param(False, "Only count the files that would change; write nothing.", label="Dry run",
                          group="Rules")

    @field_validator("rules")
    @classmethod
    def _known_rules(cls, lines: list[str]) -> list[str]:
        parse_rules(lines)  # a ValueError names the line and what is wrong
        return lines


class UndoCleanConfig(JobConfig):
    """Restore the caption files of a cleaning snapshot byte for byte (itself undoable)."""
    snapshot: str = param("", "Snapshot to restore (its id, as listed by the Cleaning tab).", label="Snapshot",
                          group="Snapshot", min_length=1)
