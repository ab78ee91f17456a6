"""The names the trainer's choice settings accept, declared once: the schema's fields use these
Literals and core/train/ derives its tables from them (a leaf module: the trainer's modules import
it without the schema, which checks optimizer_args with the trainer's optimizers)."""
from typing import Literal

OptimizerName = Literal["AdamW", "AdamW8bit", "Lion", "Lion8bit", "Adafactor", "SGDNesterov", "Prodigy"]
LrSchedulerName = Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"]
HuberSchedule = Literal["constant", "exponential", "snr"]
