"""Tiny random-weight Qwen2.5-VL and Qwen3-VL folders, laid out like a Hub download, for offline tests.

`build_qwen2_5_vl(folder)` (like Qwen/Qwen2.5-VL-3B-Instruct) and `build_qwen3_vl(folder)` (like
Qwen/Qwen3-VL-2B-Instruct) each write into `folder`: config.json, generation_config.json, model.safetensors,
preprocessor_config.json, video_preprocessor_config.json, tokenizer.json, tokenizer_config.json and
chat_template.jinja, for `AutoProcessor.from_pretrained(folder, local_files_only=True)` and
`AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True)`. About 0.5 MB each.

What makes them usable in tests:
- the tokenizer is Qwen's own class (byte-level BPE) over the byte alphabet and a few English words, each one
  token with or without its leading space, plus the special tokens the Qwen processors and chat template use;
- images are resized to between 32x32 and 64x64 pixels (patches of 8, merged 2x2): 4 to 16 image tokens;
- the model only ever generates spaced words (decoded: words separated by spaces, after a leading space) and
  the end token <|im_end|>: every other token (bytes, word pieces, other special tokens) gets a logit far
  below. Qwen's lm_head has no bias, so one is emulated: channel 0 of the text model's residual stream is a
  positive constant (set in every token embedding, written by no layer), which lm_head's column 0 scales.

transformers 5 builds the Qwen processors only with torchvision installed (the video processor needs it, even
for images), so the processor files are saved part by part rather than by `processor.save_pretrained`.
"""
import json
from pathlib import Path

import torch
from tokenizers import AddedToken
from tokenizers.pre_tokenizers import ByteLevel

WORDS = ("a an the of on in with and is cat dog sofa woman man field photo picture image red blue green "
         "white black small large sits stands lies next to describe this").split()
SPACE = "Ġ"  # how byte-level BPE spells a space
END_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = [
    PAD_TOKEN, "<|im_start|>", END_TOKEN, "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
]
PATCH_SIZE = 8
MERGE_SIZE = 2
MIN_PIXELS = 32 * 32
MAX_PIXELS = 64 * 64
HIDDEN = 32
CONSTANT = 0.02  # channel 0 of every token embedding: about the size of the other channels
BLOCKED_LOGIT = -1000.0  # lm_head weight on that channel for the tokens the model must never emit
END_LOGIT = -0.1  # and for <|im_end|>: a little below the words, so that captions are a few words long

# Qwen-style ChatML: an image item becomes <|vision_start|><|image_pad|><|vision_end|>, which the processor
# expands to one <|image_pad|> per merged image patch.
CHAT_TEMPLATE = """{%- if messages[0]['role'] != 'system' and default_system %}
{{- '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
{{- '<|im_start|>' + message['role'] + '\\n' }}
{%- if message['content'] is string %}
{{- message['content'] }}
{%- else %}
{%- for item in message['content'] %}
{%- if item['type'] == 'image' or 'image' in item or 'image_url' in item %}
{{- '<|vision_start|><|image_pad|><|vision_end|>' }}
{%- elif item['type'] == 'video' or 'video' in item %}
{{- '<|vision_start|><|video_pad|><|vision_end|>' }}
{%- elif 'text' in item %}
{{- item['text'] }}
{%- endif %}
{%- endfor %}
{%- endif %}
{{- '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""


def chat_template(default_system: str = "") -> str:
    """The ChatML template, opening with `default_system` as system message when the chat has none."""
    return "{%- set default_system = " + repr(default_system) + " %}\n" + CHAT_TEMPLATE


def word_pieces() -> tuple[list[str], list[tuple[str, str]]]:
    """Every prefix of every word (with and without its leading space) and the merges that build them.

    Merges only ever extend a word's first piece by one character, and the spaced ones rank first, so
    BPE turns each listed word into exactly one token."""
    pieces, merges = [], []
    for spelling in [SPACE + word for word in WORDS] + WORDS:
        for end in range(2, len(spelling) + 1):
            if spelling[:end] not in pieces:
                pieces.append(spelling[:end])
                merges.append((spelling[:end - 1], spelling[end - 1]))
    return pieces, merges


def build_tokenizer():
    """Qwen's tokenizer class over the byte alphabet, the word pieces and the special tokens."""
    from transformers import Qwen2Tokenizer

    pieces, merges = word_pieces()
    alphabet = sorted(ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(alphabet + pieces + SPECIAL_TOKENS)}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, eos_token=END_TOKEN,
                               pad_token=PAD_TOKEN, model_max_length=4096, errors="replace")
    tokenizer.add_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS],
                         special_tokens=True)
    return tokenizer


def emittable_ids(tokenizer) -> list[int]:
    """The tokens the model may generate: spaced words and the end token."""
    return [tokenizer.convert_tokens_to_ids(SPACE + word) for word in WORDS] + [
        tokenizer.convert_tokens_to_ids(END_TOKEN)]


def vision_token_ids(tokenizer) -> dict[str, int]:
    """The model config's ids of the image, video and vision start/end tokens."""
    names = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
             "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>"}
    return {key: tokenizer.convert_tokens_to_ids(token) for key, token in names.items()}


def text_ids(tokenizer) -> dict[str, int]:
    """The text config's vocabulary size and special token ids (Qwen: no BOS token is prepended)."""
    pad = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    return dict(vocab_size=len(tokenizer), bos_token_id=pad, eos_token_id=tokenizer.convert_tokens_to_ids(END_TOKEN),
                pad_token_id=pad)


@torch.no_grad()
def restrict_outputs(model, allowed: list[int], end: int) -> None:
    """Make every token outside `allowed` unreachable by generation, whatever the decoding strategy.

    Channel 0 of the text model's residual stream is held at CONSTANT: every token embedding has it there and
    no attention or MLP output writes to it, so after the final RMSNorm it stays positive at every text
    position. lm_head's column 0 then acts as a bias: 0 for allowed tokens, very negative for the rest."""
    text = model.model.language_model
    text.embed_tokens.weight[:, 0] = CONSTANT
    for layer in text.layers:
        layer.self_attn.o_proj.weight[0] = 0.0
        layer.mlp.down_proj.weight[0] = 0.0
    blocked = torch.ones(model.lm_head.weight.shape[0], dtype=torch.bool)
    blocked[allowed] = False
    model.lm_head.weight[:, 0] = 0.0
    model.lm_head.weight[blocked] = 0.0
    model.lm_head.weight[blocked, 0] = BLOCKED_LOGIT
    model.lm_head.weight[end, 0] = END_LOGIT


def set_generation_ids(model, tokenizer) -> None:
    """Stop at <|im_end|> (or <|endoftext|>), pad with <|endoftext|>, as the Qwen instruct models do."""
    end, pad = (tokenizer.convert_tokens_to_ids(token) for token in (END_TOKEN, PAD_TOKEN))
    model.generation_config.bos_token_id = pad
    model.generation_config.eos_token_id = [end, pad]
    model.generation_config.pad_token_id = pad


def image_processor(**settings):
    """Qwen's image processor (the PIL one: it needs no torchvision) sized for a few image tokens."""
    from transformers import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(patch_size=PATCH_SIZE, merge_size=MERGE_SIZE, temporal_patch_size=2,
                                    size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}, **settings)


def video_processor_config(class_name: str, processor_class: str, images) -> dict:
    """video_preprocessor_config.json, written by hand: the video processor classes need torchvision."""
    return {"video_processor_type": class_name, "processor_class": processor_class, "patch_size": PATCH_SIZE,
            "temporal_patch_size": 2, "merge_size": MERGE_SIZE,
            "size": {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
            "image_mean": list(images.image_mean), "image_std": list(images.image_std)}


def save_folder(folder: Path, model, tokenizer, images, video_config: dict, template: str) -> Path:
    """Save the model and the processor's parts, each in its own file as in the Hub repositories.

    The chat template goes to chat_template.jinja, which the processor and the tokenizer both read."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer._set_processor_class(video_config["processor_class"])
    images.save_pretrained(folder)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(folder)
    (folder / "video_preprocessor_config.json").write_text(json.dumps(video_config, indent=2) + "\n")
    (folder / "chat_template.jinja").write_text(template)
    return folder


def build_qwen2_5_vl(folder: Path) -> Path:
    """A tiny Qwen2_5_VLForConditionalGeneration folder shaped like Qwen/Qwen2.5-VL-3B-Instruct."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    config = Qwen2_5_VLConfig(
        text_config=dict(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=4096, rope_theta=1000000.0,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}, **text_ids(tokenizer)),
        vision_config=dict(depth=2, hidden_size=HIDDEN, intermediate_size=64, num_heads=2, patch_size=PATCH_SIZE,
                           spatial_merge_size=MERGE_SIZE, temporal_patch_size=2,
                           window_size=2 * PATCH_SIZE * MERGE_SIZE,
                           fullatt_block_indexes=[1], out_hidden_size=HIDDEN, tokens_per_second=2),
        tie_word_embeddings=False, dtype="float32", **vision_token_ids(tokenizer))
    model = Qwen2_5_VLForConditionalGeneration(config)
    restrict_outputs(model, emittable_ids(tokenizer), tokenizer.convert_tokens_to_ids(END_TOKEN))
    set_generation_ids(model, tokenizer)
    images = image_processor()
    videos = video_processor_config("Qwen2VLVideoProcessor", "Qwen2_5_VLProcessor", images)
    return save_folder(folder, model, tokenizer, images, videos, chat_template("You are a helpful assistant."))


def build_qwen3_vl(folder: Path) -> Path:
    """A tiny Qwen3VLForConditionalGeneration folder shaped like Qwen/Qwen3-VL-2B-Instruct."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    config = Qwen3VLConfig(
        text_config=dict(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=16, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                                          "mrope_section": [2, 3, 3], "mrope_interleaved": True},
                         **text_ids(tokenizer)),
        vision_config=dict(depth=2, hidden_size=HIDDEN, intermediate_size=64, num_heads=2, patch_size=PATCH_SIZE,
                           spatial_merge_size=MERGE_SIZE, temporal_patch_size=2, out_hidden_size=HIDDEN,
                           num_position_embeddings=16, deepstack_visual_indexes=[0]),
        tie_word_embeddings=False, dtype="float32", **vision_token_ids(tokenizer))
    model = Qwen3VLForConditionalGeneration(config)
    restrict_outputs(model, emittable_ids(tokenizer), tokenizer.convert_tokens_to_ids(END_TOKEN))
    set_generation_ids(model, tokenizer)
    images = image_processor(image_mean=[0.5] * 3, image_std=[0.5] * 3)
    videos = video_processor_config("Qwen3VLVideoProcessor", "Qwen3VLProcessor", images)
    return save_folder(folder, model, tokenizer, images, videos, chat_template())
