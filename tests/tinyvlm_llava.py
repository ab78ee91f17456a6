"""A tiny random-weight LLaVA captioner saved like fancyfeast/llama-joycaption-beta-one-hf-llava.

`build_llava(folder)` writes a complete model folder offline (no Hub): config.json (model_type "llava",
LlavaForConditionalGeneration, a SigLIP vision tower and a Llama text model), generation_config.json,
model.safetensors, the LlavaProcessor files (a SigLIP image processor at 32 px, so 16 image tokens), a
Llama-3-style byte-level BPE tokenizer whose vocabulary holds a few English words and the Llama 3 special
tokens, and a Llama 3.1 chat template with system and user turns that puts the image token in the first
user turn (as JoyCaption's does).

The language model only ever emits whole words of CAPTION_WORDS or <|eot_id|>: every other row of the lm_head
reads a hidden dimension held constant through the whole network and is made very negative there, so
greedy captions decode to words separated by spaces.
"""
from pathlib import Path

import torch
from tinyvlm_common import INIT_STD, byte_level_vocab
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

CAPTION_WORDS = ("a an the cat dog red blue green photo of sits on sofa woman man field in with small big white "
                 "black bright dark picture").split()
PROMPT_WORDS = "write caption descriptive for this image you are helpful captioner system user assistant".split()
BOS, EOS, EOT, PAD, IMAGE = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>", "<image>"
SPECIALS = [BOS, EOS, "<|start_header_id|>", "<|end_header_id|>", EOT, PAD, IMAGE]
IMAGE_SIZE, PATCH_SIZE, HIDDEN = 32, 8, 32
CONSTANT_DIM, CONSTANT, BANNED_WEIGHT = 0, 1.0, -1e3

# Llama 3.1 turns; a user turn given as a plain string gets the image first (once), as JoyCaption's template
# does; a user turn given as a list of parts puts the image where its {"type": "image"} part is.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(image_done=false) -%}"
    "{%- for message in messages -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{%- if message['role'] == 'user' and not ns.image_done -%}"
    "{{- '<image>\\n' -}}{%- set ns.image_done = true -%}"
    "{%- endif -%}"
    "{{- message['content'] | trim -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<image>\\n' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] | trim -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)


def build_tokenizer():
    """A Llama-3-style tokenizer: byte-level BPE, <|begin_of_text|> added in front, specials at the end."""
    from transformers import PreTrainedTokenizerFast

    vocab, merges = byte_level_vocab(CAPTION_WORDS + PROMPT_WORDS)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(SPECIALS)
    bos_id = backend.token_to_id(BOS)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B:1", special_tokens=[(BOS, bos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=EOT, pad_token=PAD,
                                   model_max_length=4096)


def build_config(tokenizer, hidden: int = HIDDEN, layers: int = 2, image_size: int = IMAGE_SIZE):
    from transformers import LlavaConfig

    ids = tokenizer.convert_tokens_to_ids
    text = dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                bos_token_id=ids(BOS), eos_token_id=[ids(EOS), ids(EOT)], pad_token_id=ids(PAD),
                tie_word_embeddings=False, initializer_range=INIT_STD)
    vision = dict(model_type="siglip_vision_model", hidden_size=hidden, intermediate_size=2 * hidden,
                  num_hidden_layers=layers, num_attention_heads=2, image_size=image_size, patch_size=PATCH_SIZE,
                  initializer_range=INIT_STD)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=ids(IMAGE),
                       image_seq_length=(image_size // PATCH_SIZE) ** 2, vision_feature_layer=-2,
                       vision_feature_select_strategy="full", projector_hidden_act="gelu",
                       pad_token_id=ids(PAD), initializer_range=INIT_STD)


def allowed_ids(tokenizer):
    """The tokens the model may emit: each caption word after a space, and the end of the turn."""
    words = [tokenizer.convert_tokens_to_ids("Ġ" + word) for word in CAPTION_WORDS]
    return words + [tokenizer.convert_tokens_to_ids(EOT)]


def pin_constant_dim(model):
    """Keep hidden dimension CONSTANT_DIM at CONSTANT in the residual stream of every position: all token
    embeddings and the projected image features hold it, no attention or MLP block writes to it or reads it."""
    language = model.model.language_model
    language.embed_tokens.weight[:, CONSTANT_DIM] = CONSTANT
    projector = model.model.multi_modal_projector.linear_2
    projector.weight[CONSTANT_DIM] = 0
    projector.bias[CONSTANT_DIM] = CONSTANT
    for layer in language.layers:
        layer.self_attn.o_proj.weight[CONSTANT_DIM] = 0
        layer.mlp.down_proj.weight[CONSTANT_DIM] = 0
        for reader in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                       layer.mlp.gate_proj, layer.mlp.up_proj):
            reader.weight[:, CONSTANT_DIM] = 0


def ban_other_tokens(model, tokenizer):
    """The lm_head reads the constant dimension only for tokens the model must never emit."""
    lm_head = model.lm_head.weight
    lm_head[:, CONSTANT_DIM] = BANNED_WEIGHT
    lm_head[allowed_ids(tokenizer), CONSTANT_DIM] = 0


def build_model(tokenizer, **size):
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(build_config(tokenizer, **size)).eval()
    with torch.no_grad():
        pin_constant_dim(model)
        ban_other_tokens(model, tokenizer)
    ids = tokenizer.convert_tokens_to_ids
    model.generation_config.update(bos_token_id=ids(BOS), eos_token_id=[ids(EOS), ids(EOT)], pad_token_id=ids(PAD))
    return model


def build_processor(tokenizer, image_size: int = IMAGE_SIZE):
    from transformers import LlavaProcessor, SiglipImageProcessorPil

    image_processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
                          vision_feature_select_strategy="full", chat_template=CHAT_TEMPLATE, image_token=IMAGE,
                          num_additional_image_tokens=0)


def build_llava(folder: Path, hidden: int = HIDDEN, layers: int = 2, image_size: int = IMAGE_SIZE) -> Path:
    """Save the tiny JoyCaption-like LLaVA (model, processor, tokenizer, chat template) into `folder`; larger
    sizes for the benchmark (bench/bench_vlm.py)."""
    folder = Path(folder)
    tokenizer = build_tokenizer()
    build_model(tokenizer, hidden=hidden, layers=layers, image_size=image_size).save_pretrained(folder)
    build_processor(tokenizer, image_size).save_pretrained(folder)
    return folder
