"""Tiny random-weight SmolVLM and Idefics3 vision-language models, built offline for captioning tests.

`build_smolvlm(folder)` saves a folder laid out like HuggingFaceTB/SmolVLM-256M-Instruct and
`build_idefics3(folder)` one like HuggingFaceM4/Idefics3-8B-Llama3: config.json, generation_config.json,
model.safetensors, tokenizer.json and tokenizer_config.json, preprocessor_config.json, processor_config.json
and chat_template.json, the processor files in the layout those Hub repositories use. Both load with
`AutoProcessor.from_pretrained(folder)` and `AutoModelForImageTextToText.from_pretrained(folder)`.

Note that SmolVLM (version 1, as SmolVLM-256M-Instruct) is an Idefics3 model on the Hub: its config.json says
`"model_type": "idefics3"` and its processor is `Idefics3Processor`; the two builders differ in their tokenizer
(SmolLM2 vs Llama 3 special tokens), chat template start and image geometry, as the real models do.
(SmolVLM2, `"model_type": "smolvlm"`, is not built: its processor needs the num2words and torchvision packages,
which the studio does not install.)

The tokenizer is a word-level model over a few dozen ordinary English words plus the special tokens the
processors and chat templates use, so decoded captions are plain words separated by spaces. The model can
only emit caption words and the end-of-utterance token: every other token's logit is pushed far below (see
`_allow_only`). An image becomes a handful of tokens: a crop is 4 tokens, and an image is split into at
most 2x2 crops plus the global view.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

CAPTION_WORDS = ("a an the cat dog red blue green white black photo of sits on sofa woman man field in with "
                 "and small big grass tree sky").split()
PROMPT_WORDS = ("user assistant system describe caption write give short long detailed brief one sentence "
                "this that image picture what is are you please").split()
PUNCTUATION = list(":.,;!?'\"-()")
FAKE_TOKEN, IMAGE_TOKEN, GLOBAL_TOKEN = "<fake_token_around_image>", "<image>", "<global-img>"
END_OF_UTTERANCE = "<end_of_utterance>"
ROW_COL_TOKENS = [f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7)]
# the multimodal special tokens, after the ordinary vocabulary as in the Hub tokenizers
ADDED_TOKENS = [GLOBAL_TOKEN, *ROW_COL_TOKENS, FAKE_TOKEN, IMAGE_TOKEN, END_OF_UTTERANCE]
SILENCED = -1000.0  # lm_head weight on the constant hidden unit for tokens the model must never emit


@dataclass(frozen=True)
class Family:
    """What distinguishes one Hub model family's folder: special tokens, architecture and image geometry."""

    model_type: str
    architecture: str
    processor_class: str
    image_processor_type: str
    first_tokens: tuple[str, ...]  # specials at ids 0, 1, 2, ...
    bos: str
    eos: str
    pad: str
    unk: str
    generation_eos: tuple[str, ...]
    image_size: int  # vision encoder input = max_image_size longest_edge
    patch_size: int
    scale_factor: int

    @property
    def image_seq_len(self) -> int:
        """Tokens per crop after the vision encoder and the pixel shuffle."""
        return (self.image_size // self.patch_size) ** 2 // self.scale_factor ** 2


SMOLVLM = Family(
    model_type="idefics3", architecture="Idefics3ForConditionalGeneration", processor_class="Idefics3Processor",
    image_processor_type="Idefics3ImageProcessor", first_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
    bos="<|im_start|>", eos=END_OF_UTTERANCE, pad="<|im_end|>", unk="<|endoftext|>",
    generation_eos=(END_OF_UTTERANCE,), image_size=32, patch_size=4, scale_factor=4)
IDEFICS3 = Family(
    model_type="idefics3", architecture="Idefics3ForConditionalGeneration", processor_class="Idefics3Processor",
    image_processor_type="Idefics3ImageProcessor",
    first_tokens=("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<unk>"),
    bos="<|begin_of_text|>", eos="<|end_of_text|>", pad="<|reserved_special_token_0|>", unk="<unk>",
    generation_eos=(END_OF_UTTERANCE, "<|end_of_text|>"), image_size=28, patch_size=7, scale_factor=2)


def build_smolvlm(folder: Path) -> Path:
    """Save a tiny HuggingFaceTB/SmolVLM-256M-Instruct look-alike (an Idefics3 model) into `folder`."""
    return _build(SMOLVLM, Path(folder))


def build_idefics3(folder: Path) -> Path:
    """Save a tiny HuggingFaceM4/Idefics3-8B-Llama3 look-alike into `folder`."""
    return _build(IDEFICS3, Path(folder))


def _build(family: Family, folder: Path) -> Path:
    """Model, tokenizer and processor files of `family`, saved into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(family)
    model = _model(family, tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    _write_processor_files(family, folder)
    return folder


def _tokenizer(family: Family):
    """A word-level tokenizer (lower-cased, split on whitespace and punctuation) wrapped for transformers."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [*family.first_tokens, *PUNCTUATION, *PROMPT_WORDS, *CAPTION_WORDS]
    assert len(set(words)) == len(words), "a word listed twice would lose its id"
    backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token=family.unk))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens([*family.first_tokens, *ADDED_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=family.bos, eos_token=family.eos, pad_token=family.pad,
        unk_token=family.unk, additional_special_tokens=[FAKE_TOKEN, IMAGE_TOKEN, END_OF_UTTERANCE],
        model_max_length=8192, padding_side="right")


def _model(family: Family, tokenizer):
    """The random model; it can only emit caption words and the end of utterance."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in (family.bos, family.eos, family.pad)}
    text_config = {
        "model_type": "llama", "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
        "tie_word_embeddings": False, "bos_token_id": ids[family.bos], "eos_token_id": ids[family.eos],
        "pad_token_id": ids[family.pad]}
    vision_config = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "image_size": family.image_size, "patch_size": family.patch_size}
    config = AutoConfig.for_model(
        family.model_type, text_config=text_config, vision_config=vision_config, scale_factor=family.scale_factor,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), tie_word_embeddings=False,
        pad_token_id=ids[family.pad], architectures=[family.architecture])
    with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's random state
        torch.manual_seed(0)
        model = AutoModelForImageTextToText.from_config(config)
    allowed = [tokenizer.convert_tokens_to_ids(word) for word in CAPTION_WORDS]
    _allow_only(model, allowed, tokenizer.convert_tokens_to_ids(END_OF_UTTERANCE))
    _set_generation_ids(model.generation_config, family, tokenizer)
    return model


def _set_generation_ids(generation, family: Family, tokenizer) -> None:
    """bos, pad and the end token(s) in generation_config.json, an int for one end token as on the Hub."""
    ends = [tokenizer.convert_tokens_to_ids(token) for token in family.generation_eos]
    generation.bos_token_id = tokenizer.convert_tokens_to_ids(family.bos)
    generation.eos_token_id = ends[0] if len(ends) == 1 else ends
    generation.pad_token_id = tokenizer.convert_tokens_to_ids(family.pad)
    generation._from_model_config = False  # this file, not the model config, is the generation default


@torch.no_grad()
def _allow_only(model, allowed: list[int], end: int) -> None:
    """Give every token outside `allowed` + `end` a logit of about -1000 x 5, whatever the input.

    The last hidden unit of the language model is made a constant: every token embedding holds 1 there, no
    layer reads it (its norm weights are 0) or writes it (its output rows are 0), so after the final norm it
    is positive (about sqrt(hidden_size)). The lm_head column on that unit then acts as a per-token bias.
    """
    text = model.model.text_model
    unit = text.config.hidden_size - 1
    text.embed_tokens.weight[:, unit] = 1.0
    for layer in text.layers:
        layer.input_layernorm.weight[unit] = 0.0
        layer.post_attention_layernorm.weight[unit] = 0.0
        layer.self_attn.o_proj.weight[unit] = 0.0
        layer.mlp.down_proj.weight[unit] = 0.0
    text.norm.weight[unit] = 1.0
    head = model.lm_head.weight
    head[:, :unit] *= 20.0  # make the caption words' logits well apart, so greedy decoding has no near-ties
    head[:, unit] = SILENCED
    head[allowed, unit] = 0.0
    head[end, unit] = -2.0  # allowed, but below the words: captions run to max_new_tokens


def _write_processor_files(family: Family, folder: Path) -> None:
    """preprocessor_config.json, processor_config.json and chat_template.json as the Hub repositories have them."""
    image_processor = {
        "image_processor_type": family.image_processor_type, "processor_class": family.processor_class,
        "do_convert_rgb": True, "do_resize": True, "size": {"longest_edge": 2 * family.image_size},
        "resample": 1, "do_image_splitting": True, "max_image_size": {"longest_edge": family.image_size},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5], "do_pad": True}
    _write_json(folder / "preprocessor_config.json", image_processor)
    _write_json(folder / "processor_config.json",
                {"image_seq_len": family.image_seq_len, "processor_class": family.processor_class})
    _write_json(folder / "chat_template.json", {"chat_template": chat_template(family.bos)})


def chat_template(start: str) -> str:
    """The Idefics3/SmolVLM chat format: `<start>User:<image>Describe.<end_of_utterance>\\nAssistant:`."""
    return (
        start + "{% for message in messages %}"
        "{{ message['role'] | capitalize }}"
        "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
        "{% for part in message['content'] %}"
        "{% if part['type'] == 'text' %}{{ part['text'] }}"
        "{% elif part['type'] == 'image' %}{{ '" + IMAGE_TOKEN + "' }}{% endif %}"
        "{% endfor %}" + END_OF_UTTERANCE + "\n{% endfor %}"
        "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
