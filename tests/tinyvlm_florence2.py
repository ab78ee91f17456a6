"""A tiny random-weight Florence-2 captioner in the layout transformers 5 loads natively (model_type "florence2",
as florence-community/Florence-2-base ships it).

`build_florence2(folder)` writes a complete model folder offline (no Hub): config.json (Florence2ForConditional-
Generation: a DaViT vision tower and a BART encoder-decoder), generation_config.json, model.safetensors, the
Florence2Processor files (a CLIP image processor at 64 px; 2x2 spatial tokens + 1 pooled = 5 image tokens) and a
BART byte-level BPE tokenizer whose vocabulary holds a few English words, the words of the task prompts the
processor writes for <CAPTION>, <DETAILED_CAPTION> and <MORE_DETAILED_CAPTION>, the <loc_0>..<loc_999> tokens
its post-processor reads boxes from, and <image>.

The processor turns a task token into a question ("<CAPTION>" -> "What does the image describe?") after the
image tokens; the decoder starts from </s>, is forced to <s>, and then only ever emits whole words of
CAPTION_WORDS or </s>: its last layer norm holds one hidden dimension at 1 and the (tied) embedding of every
other token is very negative there.
"""
from pathlib import Path

import torch
from tinyvlm_common import INIT_STD, byte_level_vocab

CAPTION_WORDS = ("a an the cat dog red blue green photo of sits on sofa woman man field in with small big white "
                 "black bright dark picture").split()
PROMPT_WORDS = "what does image describe in detail is shown with paragraph".split()
BOS, PAD, EOS, UNK, MASK, IMAGE = "<s>", "<pad>", "</s>", "<unk>", "<mask>", "<image>"
LOCATIONS = [f"<loc_{i}>" for i in range(1000)]
REGION_TOKENS = ["<poly>", "</poly>", "<sep>"]
# What the post-processor may parse (post_process_generation picks one per task); the real processor's too.
POST_PROCESSOR_CONFIG = {
    "ocr": {"AREA_THRESHOLD": 0.0}, "phrase_grounding": {"banned_grounding_tokens": ["it", "this", "the image"]},
    "pure_text": {}, "description_with_bboxes": {}, "description_with_polygons": {}, "polygons": {}, "bboxes": {},
    "description_with_bboxes_or_polygons": {}}
IMAGE_SIZE, HIDDEN = 64, 32
NUM_IMAGE_TOKENS = (IMAGE_SIZE // 32) ** 2 + 1  # DaViT strides 4*2*2*2, plus the pooled token
CONSTANT_DIM, BANNED_VALUE = 0, -30.0


def build_tokenizer():
    """BART's tokenizer (<s> <pad> </s> <unk> first, <mask> after the words), then the location tokens and
    <image>, the tokenizer's `image_token`."""
    from transformers import AddedToken, BartTokenizer

    vocab, merges = byte_level_vocab(CAPTION_WORDS + PROMPT_WORDS, first=(BOS, PAD, EOS, UNK))
    vocab[MASK] = len(vocab)
    tokenizer = BartTokenizer(vocab=vocab, merges=merges, model_max_length=256,
                              extra_special_tokens={"image_token": IMAGE})
    added = LOCATIONS + REGION_TOKENS + [IMAGE]
    tokenizer.add_tokens([AddedToken(token, normalized=False, special=True) for token in added])
    return tokenizer


def build_config(tokenizer):
    from transformers import Florence2Config

    vision = dict(depths=[1, 1, 1, 1], embed_dim=[8, 16, 32, 32], num_heads=[1, 2, 2, 2], num_groups=[1, 2, 2, 2],
                  window_size=2, projection_dim=HIDDEN, drop_path_rate=0.0, max_position_embeddings=8,
                  initializer_range=INIT_STD)
    text = dict(model_type="bart", vocab_size=len(tokenizer), d_model=HIDDEN, encoder_layers=1, decoder_layers=1,
                encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                max_position_embeddings=128, init_std=INIT_STD, bos_token_id=0, pad_token_id=1, eos_token_id=2,
                decoder_start_token_id=2, forced_bos_token_id=0, forced_eos_token_id=2)
    return Florence2Config(vision_config=vision, text_config=text,
                           image_token_id=tokenizer.convert_tokens_to_ids(IMAGE), initializer_range=INIT_STD)


def allowed_ids(tokenizer):
    """The tokens the model may emit: each caption word after a space, and </s>."""
    return [tokenizer.convert_tokens_to_ids("Ġ" + word) for word in CAPTION_WORDS] + [tokenizer.eos_token_id]


def ban_other_tokens(model, tokenizer):
    """The decoder's last layer norm outputs 1 in CONSTANT_DIM; the tied embeddings (the lm_head) hold
    BANNED_VALUE there for every token the model must never emit and 0 for the others."""
    norm = model.model.language_model.decoder.layers[-1].final_layer_norm
    norm.weight[CONSTANT_DIM] = 0
    norm.bias[CONSTANT_DIM] = 1
    embeddings = model.get_input_embeddings().weight
    embeddings[:, CONSTANT_DIM] = BANNED_VALUE
    embeddings[allowed_ids(tokenizer), CONSTANT_DIM] = 0


def build_model(tokenizer):
    from transformers import Florence2ForConditionalGeneration

    torch.manual_seed(0)
    model = Florence2ForConditionalGeneration(build_config(tokenizer)).eval()
    with torch.no_grad():
        ban_other_tokens(model, tokenizer)
    model.generation_config.update(bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2,
                                   forced_bos_token_id=0, forced_eos_token_id=2)
    return model


def build_processor(tokenizer):
    from transformers import CLIPImageProcessorPil, Florence2Processor

    image_processor = CLIPImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_center_crop=False, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
        image_seq_length=NUM_IMAGE_TOKENS)
    return Florence2Processor(image_processor=image_processor, tokenizer=tokenizer,
                              post_processor_config=POST_PROCESSOR_CONFIG)


def build_florence2(folder: Path) -> Path:
    """Save the tiny Florence-2 (model, processor, tokenizer) into `folder`."""
    folder = Path(folder)
    tokenizer = build_tokenizer()
    build_model(tokenizer).save_pretrained(folder)
    build_processor(tokenizer).save_pretrained(folder)
    return folder
