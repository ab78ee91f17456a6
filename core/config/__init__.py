"""The schema: one typed declaration per parameter of every job.

The GUI form, the CLI flags, presets and run configs are all generated from these models.
Each field is declared with `param(...)`: default, help text, a human label, its section (group),
a basic/advanced flag, an optional widget hint, the conditions under which it applies
(core/config/conditions.py), whether it is on the first screen (essential) and which workspace
choice fills it; bounds via ge/le, choices via Literal types. core/config/search.py searches them.
"""
from core.config.captioning import (BlipCaptionConfig, CaptionWriteSettings, CleanConfig, TagConfig,  # noqa: F401
                                    UndoCleanConfig)
from core.config.conditions import FACTS, AnyOf, When, above, any_of, when, when_not  # noqa: F401
from core.config.dataset import (BucketConfig, BucketSettings, CaptionSettings, DatasetSettings,  # noqa: F401
                                 MaskSettings, MaskSourceSettings, ScanConfig, parse_resolution)
from core.config.download import DownloadConfig  # noqa: F401
from core.config.dreambooth import ClassImagesConfig  # noqa: F401
from core.config.fields import FieldKind, driving_fields, field_kind, why_hidden  # noqa: F401
from core.config.merge import MergeLoraConfig  # noqa: F401
from core.config.models import CacheConfig, DemoConfig, LatentSettings, ModelSettings  # noqa: F401
from core.config.schema import (SCHEMA_VERSION, ConfigError, JobConfig, field_meta,  # noqa: F401
                                format_validation_error, param, validate, validate_partial)
from core.config.train import TrainConfig  # noqa: F401
from core.config.vlm import VlmCaptionConfig  # noqa: F401
