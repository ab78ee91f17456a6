"""Dataset subsets: several image folders in one run, each with its own repeats, captions, flip and bucket limits,
some of them regularization (class) images; kohya sd-scripts' `dataset_config` TOML (`[[datasets.subsets]]`).

A subset's empty setting (None) is the run's own setting of that name, as sd-scripts falls back from a subset to
its dataset, `[general]` and the command line. The bucket settings (resolution ... bucket_no_upscale) are a
dataset's in sd-scripts: subsets with the same ones form one dataset (core.train.subsets)."""
from __future__ import annotations

from pydantic import ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from core.config.dataset import DATA, _non_empty_paths, parse_resolution
from core.config.schema import JobConfig, param
from core.filenames import caption_extension_problem

# The run's setting that each subset setting falls back to, where its name differs.
RUN_NAMES = {"resolution": "max_resolution"}
# Settings of an sd-scripts dataset (all its subsets share them); the others are a subset's own.
DATASET_KEYS = ("resolution", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps", "bucket_no_upscale")


class DatasetSubset(JobConfig):
    """One folder of a run's dataset (an sd-scripts `[[datasets.subsets]]` entry)."""
    image_dir: str = param("", "The subset's folder of images (its own images only, not subfolders, as sd-scripts).",
                           label="Folder", widget="dir", min_length=1)
    num_repeats: int = param(1, "How many times each image is trained per epoch.", label="Repeats", ge=1)
    is_reg: bool = param(
        False, "Regularization (class) images for prior preservation: their loss is weighted prior_loss_weight, and "
        "their repeats are set so an epoch holds as many of them as training samples (sd-scripts' DreamBooth "
        "balance).", label="Class images")
    class_tokens: str | None = param(
        None, "Caption of the images without a caption file (empty: instance_prompt, or class_prompt for class "
        "images).", label="Class tokens")
    caption_extension: str | None = param(None, "Extension of the caption files (empty: the run's).",
                                          label="Caption ext.")
    keep_tokens: int | None = param(None, "Tags kept in front when shuffling or dropping (empty: the run's).",
                                    label="Keep tags", ge=0)
    keep_tokens_separator: str | None = param(None, "Marker after the kept tags (empty: the run's).",
                                              label="Keep marker")
    shuffle_caption: bool | None = param(None, "Shuffle the tags (empty: the run's).", label="Shuffle")
    caption_prefix: str | None = param(None, "Text before every caption (empty: the run's).", label="Prefix")
    caption_suffix: str | None = param(None, "Text after every caption (empty: the run's).", label="Suffix")
    caption_dropout_rate: float | None = param(None, "Chance of an empty caption (empty: the run's).",
                                               label="Caption dropout", ge=0, le=1)
    caption_tag_dropout_rate: float | None = param(None, "Chance of dropping each tag (empty: the run's).",
                                                   label="Tag dropout", ge=0, le=1)
    flip_aug: bool | None = param(None, "Horizontal flips (empty: the run's).", label="Flip")
    resolution: str | None = param(None, "Training resolution WIDTH,HEIGHT of its buckets (empty: the run's "
                                   "max_resolution).", label="Resolution")
    min_bucket_reso: int | None = param(None, "Smallest bucket side (empty: the run's).", label="Min side", ge=64)
    max_bucket_reso: int | None = param(None, "Largest bucket side (empty: the run's).", label="Max side", ge=64)
    bucket_reso_steps: int | None = param(None, "Bucket side step (empty: the run's).", label="Side step", ge=8)
    bucket_no_upscale: bool | None = param(None, "Never enlarge its images (empty: the run's).", label="No upscale")
    alpha_mask: bool | None = param(None, "With masked_loss: the alpha channel is the mask (empty: the run's).",
                                    label="Alpha mask")
    conditioning_data_dir: str | None = param(None, "With masked_loss: the subset's folder of mask images (empty: "
                                              "the run's).", label="Mask folder")

    @field_validator("caption_extension")
    @classmethod
    def _caption_extension(cls, value: str | None) -> str | None:
        if value is not None and (problem := caption_extension_problem(value.strip())):
            raise ValueError(problem)
        return None if value is None else value.strip()

    @field_validator("resolution")
    @classmethod
    def _resolution(cls, value: str | None) -> str | None:
        return None if value is None else "{},{}".format(*parse_resolution(value))

    def own(self) -> dict:
        """The settings this subset sets (not the run's), under the run's names, but image_dir, num_repeats,
        is_reg and class_tokens."""
        return {RUN_NAMES.get(key, key): value for key, value in self.model_dump(exclude_none=True).items()
                if key not in ("image_dir", "num_repeats", "is_reg", "class_tokens")}


class SubsetSettings(JobConfig):
    """Where the trainer's images are when they are not (only) train_data_dir."""
    subsets: list[DatasetSubset] = param(
        [], "Several image folders with their own settings (sd-scripts' dataset subsets); each empty cell is the "
        "run's setting. Used instead of train_data_dir when given.", label="Dataset subsets", group=DATA)
    dataset_config: str = param(
        "", "An sd-scripts dataset config (.toml) read when the run starts, instead of train_data_dir and the "
        "subsets table (import it into the table to edit it).", label="Dataset config file", widget="file",
        group=DATA, advanced=True)

    @property
    def uses_subsets(self) -> bool:
        return bool(self.subsets or self.dataset_config.strip())

    # Replaces DatasetSettings' check of train_data_dir (this class comes first in the trainer's bases): with
    # subsets the folder list may be empty; a list of blank lines is still refused.
    @field_validator("train_data_dir", check_fields=False)
    @classmethod
    def _check_dirs(cls, value: list[str]) -> list[str]:
        return _non_empty_paths(value) if value else []

    @model_validator(mode="wrap")
    @classmethod
    def _some_folder(cls, data, handler):
        """No train_data_dir and no subsets: an error on train_data_dir, reported with the other fields' errors (an
        "after" check would wait until they are fixed)."""
        missing = isinstance(data, dict) and not data.get("train_data_dir") and not data.get("subsets") and \
            not str(data.get("dataset_config") or "").strip()
        problem = InitErrorDetails(type=PydanticCustomError("value_error", "Value error, give at least one folder "
                                                            "(or dataset subsets: subsets or dataset_config)"),
                                   loc=("train_data_dir",), input=data.get("train_data_dir", []) if missing else None)
        try:
            model = handler(data)
        except ValidationError as err:
            if missing and not any(e["loc"][:1] == ("train_data_dir",) for e in err.errors()):
                found = [InitErrorDetails(type=e["type"], loc=e["loc"], input=e["input"], ctx=e.get("ctx", {}))
                         for e in err.errors()]
                raise ValidationError.from_exception_data(err.title, [*found, problem]) from None
            raise
        if missing:
            raise ValidationError.from_exception_data(cls.__name__, [problem])
        return model

    @model_validator(mode="after")
    def _one_source(self):
        if self.subsets and self.dataset_config.strip():
            raise ValueError("subsets and dataset_config are both set: use one (import the TOML into the subsets "
                             "table, or clear the table)")
        return self
