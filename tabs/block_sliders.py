"""Under a down/mid/up_lr_weight field (widget "block_weights"): a row of sliders, one per U-Net block of the
workspace model's architecture (12 / 1 / 12 for SD 1.x/2.x, 9 / 3 / 9 for SDXL). The text field stays the setting
(what presets, the run's config and the command line hold: numbers or a named curve such as sine+0.5): moving a
slider writes the sliders' numbers into it; a changed text (typed, a preset or kohya config loaded) and a change
of model move the sliders."""
from __future__ import annotations

import gradio as gr

from core.config.block_weights import LR_WEIGHT_PARTS, SD_LAYOUT, SDXL_LAYOUT, block_labels, layout_of, parse_lr_weight

MAXIMUM = 2.0  # the sliders' range (0 to 2); a larger weight is typed in the field


def _arch(facts: dict | None) -> str:
    return (facts or {}).get("model_arch") or "sd1"


def slider_updates(text: str, part: str, facts: dict | None) -> list:
    """The sliders for the field's `text` on the workspace model: the first N shown (N blocks), each with its
    block's name and weight (1 when the field is empty); the field unchanged when it does not parse."""
    arch = _arch(facts)
    count = getattr(layout_of(arch), part)
    try:
        weights = parse_lr_weight(text or "", count) or [1.0] * count
    except ValueError:
        return [gr.skip()] * _slots(part)
    labels = block_labels(part, arch)
    return [gr.update(value=round(min(max(weights[i], 0.0), MAXIMUM), 3), label=labels[i], visible=True) if i < count
            else gr.update(visible=False) for i in range(_slots(part))]


def field_text(part: str, facts: dict | None, *values: float) -> str:
    """The field's text for the shown sliders' values: comma-separated numbers, as sd-scripts reads them."""
    count = getattr(layout_of(_arch(facts)), part)
    return ",".join(f"{float(v):g}" for v in values[:count])


def _slots(part: str) -> int:
    return max(getattr(SD_LAYOUT, part), getattr(SDXL_LAYOUT, part))


class BlockSliders:
    """The sliders of one field; `row` holds them (its visibility follows the field's)."""

    def __init__(self, field: gr.Textbox, name: str, facts: gr.State, visible: bool):
        part = LR_WEIGHT_PARTS[name]
        initial = slider_updates(field.value, part, None)
        with gr.Row(elem_classes=["sf-wide", "sf-block-sliders"], elem_id=f"{field.elem_id}-sliders",
                    visible=visible) as self.row:
            self.sliders = [gr.Slider(0, MAXIMUM, step=0.05, min_width=64, elem_id=f"{field.elem_id}-{i}",
                                      **_initial(update))
                            for i, update in enumerate(initial)]
        for slider in self.sliders:
            slider.release(lambda facts_value, *values: field_text(part, facts_value, *values),
                           inputs=[facts, *self.sliders], outputs=field, show_progress="hidden", queue=False)
        gr.on([field.change, facts.change], lambda text, facts_value: slider_updates(text, part, facts_value),
              inputs=[field, facts], outputs=self.sliders, show_progress="hidden", trigger_mode="always_last",
              queue=False)


def _initial(update) -> dict:
    """A slider's first value, label and visibility from its update (SD 1.x blocks until a model is known)."""
    if not isinstance(update, dict):
        return {"value": 1.0, "visible": False}
    return {key: update[key] for key in ("value", "label", "visible") if key in update}
