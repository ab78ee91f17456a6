"""The schema: one typed declaration per parameter of every job.

The GUI form, the CLI flags, presets and run configs are all generated from these models.
Each field is declared with `param(...)`: default, help text, a UI group, a basic/advanced
flag and an optional widget hint; bounds via ge/le, choices via Literal types.
"""
from core.config.captioning import (BlipCaptionConfig, CaptionWriteSettings, CleanConfig, TagConfig,  # noqa: F401
                                    UndoCleanConfig)
from core.config.conditions import FACTS, When, when  # noqa: F401
from core.config.dataset import (BucketConfig, BucketSettings, CaptionSettings, DatasetSettings,  # noqa: F401
                                 ScanConfig, parse_resolution)
from core.config.dreambooth import ClassImagesConfig  # noqa: F401
from core.config.fields import FieldKind, driving_fields, field_kind, why_hidden  # noqa: F401
from core.config.merge import MergeLoraConfig  # noqa: F401
from core.config.models import CacheConfig, DemoConfig, LatentSettings, ModelSettings  # noqa: F401
from core.config.schema import (SCHEMA_VERSION, ConfigError, JobConfig, field_meta,  # noqa: F401
                                format_validation_error, param, validate, validate_partial)
from core.config.train import TrainConfig  # noqa: F401
