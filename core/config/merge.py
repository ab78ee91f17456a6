"""Parameters of the `merge_lora` job: LoRA files added into a base model, saved as a new model."""
from __future__ import annotations

from pydantic import field_validator, model_validator

from core.config.models import ModelSettings, SaveSettings
from core.config.schema import param


class MergeLoraConfig(SaveSettings, ModelSettings):  # bases in reverse display order
    """Merge one or more LoRA or LyCORIS files (kohya, sd-scripts SDXL, diffusers, LyCORIS) into a base model."""
    lora_models: list[str] = param(
        [], "LoRA .safetensors files to merge, one per line, in order (kohya / AUTOMATIC1111 files, "
        "sd-scripts SDXL files, diffusers files, or LyCORIS files: LoCon, LoHa, LoKr, (IA)^3, DoRA).",
        label="LoRA files", widget="files", group="LoRA")
    ratios: list[float] = param(
        [], "Multiplier of each LoRA, one per line in the same order (empty: 1 for each). 0.5 adds half its "
        "effect, a negative value subtracts it.", label="LoRA strengths", group="LoRA")

    @field_validator("lora_models")
    @classmethod
    def _some_files(cls, value: list[str]) -> list[str]:
        cleaned = [v.strip() for v in value if v.strip()]
        if not cleaned:
            raise ValueError("give at least one LoRA file")
        return cleaned

    @model_validator(mode="after")
    def _one_ratio_per_lora(self):
        if self.ratios and len(self.ratios) != len(self.lora_models):
            raise ValueError(f"ratios: {len(self.ratios)} given for {len(self.lora_models)} LoRA file(s); give "
                             "one per file in the same order, or none (1 for each)")
        return self

    def multipliers(self) -> list[float]:
        return list(self.ratios) or [1.0] * len(self.lora_models)
