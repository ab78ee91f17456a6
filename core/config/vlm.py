"""Parameters of captioning with a vision-language model (job `vlm_caption`)."""
from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from core.config.captioning import CaptionWriteSettings
from core.config.conditions import when
from core.config.schema import param

PromptPreset = Literal["short", "medium", "detailed", "tags", "style", "custom"]


class VlmCaptionConfig(CaptionWriteSettings):
    """Caption images with a vision-language model (transformers) from a local folder: Florence-2, Qwen2.5-VL,
    Qwen3-VL, JoyCaption and other LLaVA models, BLIP-2, SmolVLM, Idefics3."""
    model_dir: str = param(
        "", "Folder of a vision-language model saved by transformers with its processor (config.json, weights, "
        "tokenizer and image processor files), e.g. Qwen/Qwen2.5-VL-3B-Instruct or florence-community/"
        "Florence-2-large; the family is read from its config.json.", label="Model folder", widget="dir",
        min_length=1, group="Model")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = param(
        "auto", "Precision of the weights: auto is bf16 on a GPU that has it (else fp16) and fp32 on the CPU.",
        label="Precision", group="Model")
    quantization: Literal["none", "8bit", "4bit"] = param(
        "none", "Load a large model in 8 or 4 bits (bitsandbytes, NVIDIA GPU only): about a half or a quarter of "
        "the memory, slightly different captions.", label="Quantization", group="Model", advanced=True)
    prompt_preset: PromptPreset = param(
        "medium", "What to ask: short (one sentence), medium (a few sentences), detailed (a paragraph), tags "
        "(booru-style tags), style (only the style), or custom (the prompt below). Florence-2 takes task tokens: "
        "short, medium and detailed ask <CAPTION>, <DETAILED_CAPTION> and <MORE_DETAILED_CAPTION>.",
        label="Prompt", group="Prompt")
    prompt: str = param(
        "", "Your own instruction to the model (for Florence-2 a task token such as <MORE_DETAILED_CAPTION>).",
        label="Custom prompt", widget="textarea", group="Prompt", applies=when("prompt_preset", "custom"))
    trigger_word: str = param(
        "", "A trigger word or name the caption must contain: the model is asked to use it, and it is put first "
        "where the caption lacks it.", label="Trigger word", group="Prompt")
    max_new_tokens: int = param(160, "Longest caption, in tokens of the model.", label="Max new tokens",
                                group="Generation", ge=1, le=2048)
    do_sample: bool = param(False, "Sample the words (varied captions; the same again for the same seed); off: the "
                                   "most likely words (greedy or beam search).", label="Sampling", group="Generation")
    num_beams: int = param(1, "Beams for beam search (1: greedy).", label="Beams", group="Generation",
                           applies=when("do_sample", False), ge=1, le=16)
    temperature: float = param(0.7, "Sampling temperature: lower is steadier.", label="Temperature",
                               group="Generation", applies=when("do_sample", True), gt=0, le=5)
    top_p: float = param(0.9, "Nucleus sampling: keep the smallest set of words with this total probability.",
                         label="Top-p", group="Generation", applies=when("do_sample", True), gt=0, le=1)
    seed: int = param(42, "Seed of the sampling; each image draws from its own generator (seed and file), so a "
                          "rerun writes the same caption in any batch.", label="Seed", group="Generation",
                      applies=when("do_sample", True))
    repetition_penalty: float = param(1.0, "Above 1 discourages repeated words (1: off).",
                                      label="Repetition penalty", group="Generation", ge=1, le=3)
    clean_output: bool = param(
        True, "Remove openings such as \"The image shows\" and a last sentence or tag cut off by the token limit.",
        label="Clean up the text", group="Generation")
    wd14_model_dir: str = param(
        "", "WD14 tags + sentence in one pass: a WD14 tagger folder (model.onnx, selected_tags.csv) whose tags are "
        "written with the model's text (empty: the text only).", label="WD14 tagger folder", widget="dir",
        group="WD14 tags too", advanced=True)
    wd14_threshold: float = param(0.35, "Confidence needed for a WD14 tag.", label="WD14 threshold",
                                  group="WD14 tags too", applies=when("wd14_model_dir"), ge=0, le=1,
                                  advanced=True)
    wd14_position: Literal["before", "after"] = param(
        "before", "Where the tags go: before the text or after it (separated by a comma).", label="Tags go",
        group="WD14 tags too", applies=when("wd14_model_dir"), advanced=True)

    @model_validator(mode="after")
    def _custom_prompt(self):
        if self.prompt_preset == "custom" and not self.prompt.strip():
            raise ValueError("prompt_preset is custom: write the prompt (or choose a preset)")
        return self
