"""A tiny random-weight BLIP-2 captioner saved like Salesforce/blip2-opt-2.7b.

`build_blip_2(folder)` writes a complete model folder offline (no Hub): config.json (model_type "blip-2",
Blip2ForConditionalGeneration with an OPT language model, 4 query tokens), generation_config.json,
model.safetensors, the Blip2Processor files (a BLIP image processor at 32 px, num_query_tokens) and an
OPT-style byte-level BPE tokenizer (GPT2Tokenizer: <s> <pad> </s> <unk> first, </s> as bos and eos, added
in front of every text) whose vocabulary holds a few English words and the added <image> token.

The processor puts 4 <image> tokens in front of the text; the model swaps them for the Q-Former's outputs.
The language model only ever emits whole words of CAPTION_WORDS or </s>: OPT's last layer norm holds one
hidden dimension at 1 and the (tied) embedding of every other token is very negative there.
"""
from pathlib import Path

import torch
from tinyvlm_common import INIT_STD, byte_level_vocab

CAPTION_WORDS = ("a an the cat dog red blue green photo of sits on sofa woman man field in with small big white "
                 "black bright dark picture").split()
PROMPT_WORDS = "question what is this image answer".split()
BOS, PAD, EOS, UNK, IMAGE = "<s>", "<pad>", "</s>", "<unk>", "<image>"
IMAGE_SIZE, PATCH_SIZE, HIDDEN, NUM_QUERY_TOKENS = 32, 8, 32, 4
CONSTANT_DIM, BANNED_VALUE = 0, -30.0


def build_tokenizer():
    """OPT's tokenizer: byte-level BPE, </s> in front of every text (its bos), <image> added at the end."""
    from transformers import AddedToken, GPT2Tokenizer

    vocab, merges = byte_level_vocab(CAPTION_WORDS + PROMPT_WORDS, first=(BOS, PAD, EOS, UNK))
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=merges, unk_token=EOS, bos_token=EOS, eos_token=EOS,
                              pad_token=PAD, add_bos_token=True, model_max_length=256)
    tokenizer.add_tokens([AddedToken(IMAGE, normalized=False, special=True)], special_tokens=True)
    return tokenizer


def build_config(tokenizer):
    from transformers import Blip2Config

    ids = tokenizer.convert_tokens_to_ids
    vision = dict(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, initializer_range=INIT_STD)
    qformer = dict(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                   encoder_hidden_size=HIDDEN, cross_attention_frequency=1, max_position_embeddings=64,
                   initializer_range=INIT_STD)
    text = dict(model_type="opt", vocab_size=len(tokenizer), hidden_size=HIDDEN, word_embed_proj_dim=HIDDEN,
                ffn_dim=64, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=256,
                bos_token_id=ids(EOS), eos_token_id=ids(EOS), pad_token_id=ids(PAD), init_std=INIT_STD)
    return Blip2Config(vision_config=vision, qformer_config=qformer, text_config=text,
                       num_query_tokens=NUM_QUERY_TOKENS, image_token_index=ids(IMAGE), initializer_range=INIT_STD)


def allowed_ids(tokenizer):
    """The tokens the model may emit: each caption word after a space, and </s>."""
    return [tokenizer.convert_tokens_to_ids("Ġ" + word) for word in CAPTION_WORDS] + [tokenizer.eos_token_id]


def ban_other_tokens(model, tokenizer):
    """OPT's final layer norm outputs 1 in CONSTANT_DIM; the tied embeddings (the lm_head) hold BANNED_VALUE
    there for every token the model must never emit and 0 for the others."""
    norm = model.language_model.model.decoder.final_layer_norm
    norm.weight[CONSTANT_DIM] = 0
    norm.bias[CONSTANT_DIM] = 1
    embeddings = model.language_model.get_input_embeddings().weight
    embeddings[:, CONSTANT_DIM] = BANNED_VALUE
    embeddings[allowed_ids(tokenizer), CONSTANT_DIM] = 0


def build_model(tokenizer):
    from transformers import Blip2ForConditionalGeneration

    torch.manual_seed(0)
    model = Blip2ForConditionalGeneration(build_config(tokenizer)).eval()
    with torch.no_grad():
        model.query_tokens.normal_(std=INIT_STD)  # zeros when initialised; trained in the real model
        ban_other_tokens(model, tokenizer)
    ids = tokenizer.convert_tokens_to_ids
    model.generation_config.update(bos_token_id=ids(EOS), eos_token_id=ids(EOS), pad_token_id=ids(PAD))
    return model


def build_processor(tokenizer):
    from transformers import Blip2Processor, BlipImageProcessorPil

    image_processor = BlipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return Blip2Processor(image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=NUM_QUERY_TOKENS)


def build_blip_2(folder: Path) -> Path:
    """Save the tiny blip2-opt-like BLIP-2 (model, processor, tokenizer) into `folder`."""
    folder = Path(folder)
    tokenizer = build_tokenizer()
    build_model(tokenizer).save_pretrained(folder)
    build_processor(tokenizer).save_pretrained(folder)
    return folder
