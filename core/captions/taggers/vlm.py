"""Captions from a vision-language model (job `vlm_caption`): any transformers image-text-to-text model folder of
a supported family (Florence-2, Qwen2.5-VL, Qwen3-VL, LLaVA such as JoyCaption, BLIP-2, SmolVLM / Idefics3),
loaded with transformers' own classes (AutoProcessor, AutoModelForImageTextToText); no model code here.

Each family says how it is asked (core/captions/taggers/vlm_families.py): a chat template, Florence-2's task
tokens, or BLIP-2's plain prompt. Images are decoded ahead on worker threads, batched with left padding (a caption
does not depend on its batch), and generated greedily, by beam search or by seeded sampling (each image's own
generator: the same caption on a rerun). The text is cleaned up (openings such as "The image shows", a last
sentence cut by the token limit), given the trigger word, optionally joined with WD14 tags of the same image, and
written by the captioners' rules (skip / overwrite / append, backups, atomic writes).
"""
from __future__ import annotations

import functools
import gc
import json
import os
import re
from pathlib import Path
from typing import NamedTuple

import torch

from core.captions.taggers.common import caption_images, first_decodable, images_to_do, save_sentence
from core.captions.taggers.sampling import NucleusSampler, image_seed
from core.captions.taggers.vlm_families import FAMILIES, NOT_SUPPORTED, Family, supported_text
from core.config import VlmCaptionConfig
from core.dataset.images import open_image
from core.jobs.protocol import JobContext

PROMPTS = {
    "short": "Write a one-sentence caption for this image.",
    "medium": "Describe this image in two or three sentences: the main subject, what it is doing, and the setting.",
    "detailed": "Describe this image in one detailed paragraph: the subjects and their appearance, clothing, "
                "expressions and actions, the setting and background, the lighting, colours and composition, and "
                "the style or medium.",
    "tags": "List what this image shows as comma-separated booru-style tags (such as 1girl, solo, long hair, "
            "smile, outdoors, day), the most important first. Write only the tags.",
    "style": "Describe only the visual style of this image in one or two sentences (medium, technique, colour "
             "palette, lighting, mood), not what it shows.",
}
MODEL_HINT = ("it must hold a transformers vision-language model with its processor (config.json, the weights, "
              "tokenizer and image processor files), e.g. Qwen/Qwen2.5-VL-3B-Instruct downloaded with all its files")
OPENINGS = [re.compile(p, re.IGNORECASE) for p in (
    r"^(?:in )?(?:this|the) (?:image|picture|photo|photograph|illustration|artwork|painting|drawing|scene|shot)\s+"
    r"(?:shows|depicts|features|displays|presents|captures|portrays|showcases|contains|is of)\s+",
    r"^in (?:this|the) (?:image|picture|photo|photograph|illustration|artwork|painting|drawing|scene)\s*,\s*",
    r"^(?:an? )?(?:image|picture|photo|photograph) (?:of|showing)\s+",
)]
SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")


class Vlm(NamedTuple):
    model: object      # an image-text-to-text model, in eval mode
    processor: object  # its AutoProcessor
    family: Family
    model_type: str
    device: torch.device
    dtype: torch.dtype


def model_type_of(folder: Path) -> str:
    """The family key of a model folder (its config.json's model_type); ValueError for a folder that is not a
    supported vision-language model, naming the supported families."""
    if not folder.is_dir():
        raise ValueError(f"model folder not found: {folder}; {MODEL_HINT}")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ValueError(f"no readable config.json in the model folder {folder}; {MODEL_HINT}") from None
    model_type = str(config.get("model_type", ""))
    if model_type not in FAMILIES:
        why = NOT_SUPPORTED.get(model_type, "which this captioner does not know")
        raise ValueError(f"{folder} holds a {model_type or 'unknown'} model, {why}; supported: {supported_text()}")
    return model_type


def choose_dtype(choice: str, cuda: bool) -> torch.dtype:
    if choice == "auto":
        return (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[choice]


def load_vlm(model_dir: str, dtype: str = "auto", quantization: str = "none") -> Vlm:
    """The model of a local folder with its processor. The last model loaded is kept, so previews and a run
    after them do not load it again. ValueError for a wrong folder or settings this machine cannot run."""
    return _load_vlm(os.path.abspath(os.path.expanduser(model_dir.strip())), dtype, quantization)


@functools.lru_cache(maxsize=1)
def _load_vlm(folder: str, dtype_choice: str, quantization: str) -> Vlm:
    from transformers import AutoModelForImageTextToText

    model_type = model_type_of(Path(folder))
    cuda = torch.cuda.is_available()
    if quantization != "none" and not cuda:
        raise ValueError(f"quantization {quantization} (bitsandbytes) needs an NVIDIA GPU; none is in use here: "
                         "choose quantization none")
    dtype = choose_dtype(dtype_choice, cuda)
    options = {"dtype": dtype, "local_files_only": True}
    if quantization != "none":
        from transformers import BitsAndBytesConfig

        options["quantization_config"] = (BitsAndBytesConfig(load_in_8bit=True) if quantization == "8bit" else
                                          BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                             bnb_4bit_compute_dtype=dtype))
        options["device_map"] = {"": 0}
    try:
        processor = load_processor(folder, model_type)
        model = AutoModelForImageTextToText.from_pretrained(folder, **options)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"cannot load the model in {folder} ({exc}); {MODEL_HINT}") from exc
    device = torch.device("cuda" if cuda else "cpu")
    if quantization == "none":
        model = model.to(device)
    return Vlm(model.eval(), processor, FAMILIES[model_type], model_type, device, dtype)


def release_model() -> None:
    """Free the model kept for previews: a run loads its own, in its own process (the GUI calls this when one
    starts or is queued, so a large model does not hold the GPU twice)."""
    _load_vlm.cache_clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_processor(folder: str, model_type: str):
    """The folder's processor (AutoProcessor). transformers builds some (Qwen-VL's) only with torchvision, for their
    video part, and the studio does not install torchvision (no build of it matches every torch it installs): then
    the same processor class is built without its video part, which captioning images does not use."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(folder, local_files_only=True)
    except ImportError as exc:
        if "torchvision" not in str(exc).lower():
            raise
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    class ImagesOnly(getattr(transformers, PROCESSOR_MAPPING_NAMES[model_type])):
        @classmethod
        def get_attributes(cls) -> list[str]:
            return [name for name in super().get_attributes() if name != "video_processor"]

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return ImagesOnly(image_processor=AutoImageProcessor.from_pretrained(folder, local_files_only=True),
                      tokenizer=tokenizer, chat_template=_chat_template(Path(folder)) or tokenizer.chat_template)


def _chat_template(folder: Path) -> str | None:
    """The processor's chat template as saved (chat_template.jinja, or chat_template.json of older saves)."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if (folder / "chat_template.json").is_file():
        return json.loads((folder / "chat_template.json").read_text(encoding="utf-8")).get("chat_template")
    return None


# --- what the model is asked ------------------------------------------------------------------------------------

def instruction(cfg: VlmCaptionConfig, family: Family) -> str:
    """The request in words, or Florence-2's task token."""
    if cfg.prompt_preset == "custom":
        return cfg.prompt.strip()
    if cfg.prompt_preset in family.unprompted:
        return ""
    if family.task_tokens:
        task = family.task_tokens.get(cfg.prompt_preset)
        if task is None:
            raise ValueError(f"{family.name} answers task tokens, not instructions: choose the prompt short, medium "
                             f"or detailed ({', '.join(family.task_tokens.values())}), or a custom task token")
        return task
    text = PROMPTS[cfg.prompt_preset]
    if cfg.trigger_word.strip() and family.chat:
        text += f' Call the main subject "{cfg.trigger_word.strip()}".'
    return text


def prompt_text(vlm: Vlm, cfg: VlmCaptionConfig) -> str:
    """What goes to the processor as the text of each image."""
    family, asked = vlm.family, instruction(cfg, vlm.family)
    if not family.chat:
        return family.plain_prompt.format(prompt=asked) if asked else ""
    turn = asked if family.text_turn else [{"type": "image"}, {"type": "text", "text": asked}]
    messages = [*([{"role": "system", "content": family.system}] if family.system else []),
                {"role": "user", "content": turn}]
    return vlm.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


# --- generation ---------------------------------------------------------------------------------------------------

def model_inputs(vlm: Vlm, prompt: str, images: list) -> dict:
    """The processor's tensors for a batch (the image alone where the prompt is empty), on the model's device."""
    images_arg = [[image] for image in images] if vlm.family.nested_images else list(images)
    text = {"text": [prompt] * len(images), "padding": True} if prompt else {}
    if prompt and not vlm.family.encoder_decoder:
        text["padding_side"] = "left"  # new tokens follow every prompt directly: a batch captions as one by one
    batch = vlm.processor(images=images_arg, return_tensors="pt", **text)
    return {key: value.to(vlm.device, vlm.dtype) if value.is_floating_point() else value.to(vlm.device)
            for key, value in batch.items() if isinstance(value, torch.Tensor)}


def _end_ids(vlm: Vlm) -> set[int]:
    ids = vlm.model.generation_config.eos_token_id
    return set(ids if isinstance(ids, list) else [] if ids is None else [ids])


def generate_texts(vlm: Vlm, cfg: VlmCaptionConfig, paths: list[Path], images: list) -> list[tuple[str, bool]]:
    """(the model's text, whether the token limit cut it) for each image."""
    inputs = model_inputs(vlm, prompt_text(vlm, cfg), images)
    options = dict(max_new_tokens=cfg.max_new_tokens, do_sample=False, repetition_penalty=cfg.repetition_penalty)
    if cfg.do_sample:
        sampler = NucleusSampler(cfg.top_p, [image_seed(cfg.seed, path) for path in paths], cfg.temperature)
        options.update(num_beams=1, logits_processor=[sampler])
    else:
        options["num_beams"] = cfg.num_beams
    with torch.inference_mode():
        out = vlm.model.generate(**inputs, **options)
    new = out if vlm.family.encoder_decoder or "input_ids" not in inputs else out[:, inputs["input_ids"].shape[1]:]
    ends = _end_ids(vlm)
    texts = vlm.processor.batch_decode(new, skip_special_tokens=True)
    return [(text, len(row) >= cfg.max_new_tokens and not ends.intersection(row.tolist()))
            for text, row in zip(texts, new)]


# --- the text written -------------------------------------------------------------------------------------------

def without_opening(text: str) -> str:
    """The text without an opening such as "The image shows" (its first letter kept in case)."""
    for opening in OPENINGS:
        match = opening.match(text)
        if match and match.end() < len(text):
            rest = text[match.end():]
            return rest[0].upper() + rest[1:] if text[0].isupper() else rest
    return text


def without_cut_end(text: str) -> str:
    """The text without its last sentence (or tag) when the token limit cut it mid-way."""
    ends = list(SENTENCE_END.finditer(text))
    if ends and ends[-1].end() < len(text):
        return text[:ends[-1].end()]
    if not ends and "," in text:
        return text[:text.rindex(",")]
    return text


def final_text(cfg: VlmCaptionConfig, text: str, cut: bool, tags: list[str] | None = None) -> str:
    """The caption written for one image: one line, cleaned up, with the trigger word and the WD14 tags."""
    text = " ".join(text.split())
    if cfg.clean_output:
        text = without_opening(without_cut_end(text) if cut else text).strip(" ,;")
    trigger = cfg.trigger_word.strip()
    if trigger and trigger.casefold() not in text.casefold():
        text = f"{trigger}, {text}" if text else trigger
    if tags:
        joined = ", ".join(tags)
        after = " " if SENTENCE_END.search(text[-3:]) else ", "  # "A woman. 1girl, red hair"
        text = f"{joined}, {text}" if cfg.wd14_position == "before" else f"{text}{after}{joined}"
    return text


# --- the job ------------------------------------------------------------------------------------------------------

class Captioner(NamedTuple):
    """The loaded models of a run and how one image is decoded and a batch captioned."""
    vlm: Vlm
    cfg: VlmCaptionConfig
    tagger: object = None  # the WD14 tagger and its rules, for tags with the text
    rules: object = None

    @classmethod
    def load(cls, cfg: VlmCaptionConfig) -> Captioner:
        vlm = load_vlm(cfg.model_dir, cfg.dtype, cfg.quantization)
        instruction(cfg, vlm.family)  # a prompt the model cannot take is refused before any image
        if not cfg.wd14_model_dir.strip():
            return cls(vlm, cfg)
        from core.captions.taggers.wd14 import TagRules, load_tagger
        from core.config import TagConfig

        tagger = load_tagger(cfg.wd14_model_dir)
        tag_cfg = TagConfig.model_construct(model_dir=cfg.wd14_model_dir, general_threshold=cfg.wd14_threshold)
        return cls(vlm, cfg, tagger, TagRules.build(tag_cfg, tagger))

    def decode(self, path: Path) -> tuple[Path, object, object]:
        """One image, decoded (on the worker threads): the path, the image, the tagger's input."""
        image = open_image(path, self.cfg.max_image_pixels)
        tagger_input = None
        if self.tagger is not None:
            from core.captions.taggers.wd14 import preprocess

            tagger_input = preprocess(image, self.tagger.size)
        return path, image, tagger_input

    def caption(self, items: list[tuple[Path, object, object]]) -> list[str]:
        paths, images, tagger_inputs = zip(*items)
        texts = generate_texts(self.vlm, self.cfg, list(paths), list(images))
        tags = [None] * len(items)
        if self.tagger is not None:
            from core.captions.taggers.wd14 import predict

            tags = [self.rules.select(scores) for scores in predict(self.tagger, list(tagger_inputs))]
        return [final_text(self.cfg, text, cut, found) for (text, cut), found in zip(texts, tags)]

    def describe(self) -> str:
        vlm, cfg = self.vlm, self.cfg
        method = (f"sampling (temperature {cfg.temperature}, top_p {cfg.top_p}, seed {cfg.seed})" if cfg.do_sample
                  else f"beam search ({cfg.num_beams} beams)" if cfg.num_beams > 1 else "greedy")
        quantized = f", {cfg.quantization}" if cfg.quantization != "none" else ""
        tags = f"; WD14 tags from {cfg.wd14_model_dir} {cfg.wd14_position} the text" if self.tagger else ""
        return (f"{vlm.family.name} ({vlm.model_type}) from {cfg.model_dir} on {vlm.device} in "
                f"{str(vlm.dtype).removeprefix('torch.')}{quantized}; prompt {cfg.prompt_preset}: "
                f"{instruction(cfg, vlm.family)!r}; {method}, up to {cfg.max_new_tokens} tokens{tags}")


def run(cfg: VlmCaptionConfig, ctx: JobContext) -> dict:
    """The `vlm_caption` job: write the model's caption to the caption file of every image."""
    captioner = Captioner.load(cfg)
    ctx.log(captioner.describe())
    return caption_images(cfg, ctx, "caption", cfg.batch_size, captioner.decode, captioner.caption,
                          lambda target, text: save_sentence(target, text, cfg.existing_captions))


def preview_captions(cfg: VlmCaptionConfig, limit: int = 4) -> list[tuple[str, str]]:
    """(image path, the caption the run would write, or append) for the first `limit` readable images the run
    would caption. Writes nothing."""
    captioner = Captioner.load(cfg)
    todo, _ = images_to_do(cfg)
    chosen = [decoded for _, decoded in first_decodable(todo, captioner.decode, limit)]
    if not chosen:
        return []
    return [(str(item[0]), caption) for item, caption in zip(chosen, captioner.caption(chosen))]
