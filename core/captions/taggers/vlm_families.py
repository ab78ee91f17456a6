"""The vision-language model families the `vlm_caption` job knows, by their config.json `model_type`, and how each
is asked: a chat template (the processor's own; JoyCaption's way for LLaVA: a system turn and a text turn), Florence-2's
task tokens, or BLIP-2's plain prompt (none for a plain caption); whether the processor takes a list of images per
prompt; whether the output repeats the prompt (decoder-only models) or holds
only the answer (encoder-decoder models)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Family:
    name: str
    chat: bool = True               # the prompt is the processor's chat template around an image and the request
    nested_images: bool = False     # the processor takes one list of images per prompt
    encoder_decoder: bool = False   # generate returns only the answer (no prompt to slice off)
    task_tokens: dict = field(default_factory=dict)  # Florence-2: prompt preset -> task token
    plain_prompt: str = "{prompt}"  # without a chat template: the text around the request
    unprompted: tuple[str, ...] = ()  # prompt presets asked with the image alone (BLIP-2's plain caption)
    system: str = ""                # a system turn before the request (chat)
    text_turn: bool = False         # the request is a plain text turn, the template puts the image before it


FLORENCE_TASKS = {"short": "<CAPTION>", "medium": "<DETAILED_CAPTION>", "detailed": "<MORE_DETAILED_CAPTION>"}

FAMILIES: dict[str, Family] = {
    "florence2": Family("Florence-2", chat=False, encoder_decoder=True, task_tokens=FLORENCE_TASKS),
    "qwen2_5_vl": Family("Qwen2.5-VL"),
    "qwen3_vl": Family("Qwen3-VL"),
    "llava": Family("LLaVA (JoyCaption)", system="You are a helpful image captioner.", text_turn=True),
    "blip-2": Family("BLIP-2", chat=False, plain_prompt="Question: {prompt} Answer:", unprompted=("short",)),
    "idefics3": Family("SmolVLM / Idefics3", nested_images=True),  # SmolVLM (v1) folders say idefics3
}
NOT_SUPPORTED = {  # families transformers has that the studio cannot run, and why
    "smolvlm": "SmolVLM2 folders need the num2words and torchvision packages, which the studio does not install "
               "(SmolVLM, whose config.json says idefics3, works)",
}


def supported_text() -> str:
    """"Florence-2 (florence2), Qwen2.5-VL (qwen2_5_vl), ...": for messages."""
    return ", ".join(f"{family.name} ({key})" for key, family in FAMILIES.items())
