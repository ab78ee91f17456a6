"""The settings of each dataset subset of a run: the run's, with the subset's own on top (core.train.subsets reads
the images with them; the start checks look at them too)."""
from __future__ import annotations

from pydantic import ValidationError

from core.config import ConfigError, TrainConfig, format_validation_error
from core.config.dataset_toml import read_dataset_config
from core.config.subsets import DatasetSubset


def dataset_subsets(cfg: TrainConfig) -> list[DatasetSubset]:
    """The run's subsets: the table's, or those of its dataset_config TOML ([] when it has neither)."""
    if cfg.dataset_config.strip():
        return read_dataset_config(cfg.dataset_config).subsets
    return list(cfg.subsets)


def subset_config(cfg: TrainConfig, subset: DatasetSubset) -> TrainConfig:
    """The run's settings with the subset's own on top, its folder (not its subfolders) as the dataset;
    ConfigError naming the subset when the combination is invalid (a resolution outside its bucket sides)."""
    values = {**cfg.model_dump(), **subset.own(), "train_data_dir": [subset.image_dir], "recursive": False,
              "subsets": [], "dataset_config": ""}
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, f"subset {subset.image_dir}")) from None
