"""The shipped CLIP tokenizer equals Stable Diffusion's (openai/clip-vit-large-patch14)."""
import hashlib
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest

from core.models.tokenizer import BPE_PATH, bytes_to_unicode, clip_vocab, load_clip_tokenizer

BOS, EOS = 49406, 49407


def test_shipped_vocabulary_is_the_open_clip_file():
    digest = hashlib.sha256(BPE_PATH.read_bytes()).hexdigest()
    assert digest == "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
    assert (BPE_PATH.parent / "LICENSE").read_text(encoding="utf-8").count("MIT") >= 1


def test_vocabulary_layout():
    vocab = clip_vocab()
    byte_chars = list(bytes_to_unicode().values())
    assert len(vocab) == 49408
    assert [vocab[c] for c in byte_chars] == list(range(256))
    assert [vocab[c + "</w>"] for c in byte_chars] == list(range(256, 512))
    assert vocab["in"] == 512  # the first merge, "i n"
    assert vocab["<|startoftext|>"] == BOS and vocab["<|endoftext|>"] == EOS


@pytest.mark.parametrize("text, ids", [
    ("a photo of a cat", [BOS, 320, 1125, 539, 320, 2368, EOS]),
    ("A photo of an astronaut riding a horse on Mars",
     [BOS, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 525, 7496, EOS]),
    ("masterpiece, best quality, 1girl",
     [BOS, 12066, 267, 949, 3027, 267, 272, 1611, EOS]),
])
def test_known_encodings(text, ids):
    assert load_clip_tokenizer()(text).input_ids == ids


def test_tokens_carry_end_of_word_marker():
    tokenizer = load_clip_tokenizer()
    ids = tokenizer("Hello, world!").input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == [
        "<|startoftext|>", "hello</w>", ",</w>", "world</w>", "!</w>", "<|endoftext|>"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "hello , world !"


@pytest.mark.parametrize("pad_token, pad_id", [("<|endoftext|>", EOS), ("!", 0)])
def test_padding_to_77(pad_token, pad_id):
    tokenizer = load_clip_tokenizer(pad_token)
    assert tokenizer.model_max_length == 77 and tokenizer.pad_token_id == pad_id
    ids = tokenizer("a cat", padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert ids == [BOS, 320, 2368, EOS] + [pad_id] * 73


def test_truncation_keeps_end_token():
    tokenizer = load_clip_tokenizer()
    ids = tokenizer("cat " * 200, truncation=True, max_length=77).input_ids
    assert len(ids) == 77 and ids[0] == BOS and ids[-1] == EOS and ids[1:-1] == [2368] * 75


def test_cached_per_pad_token():
    assert load_clip_tokenizer() is load_clip_tokenizer("<|endoftext|>")
    assert load_clip_tokenizer("!") is not load_clip_tokenizer()


def test_save_and_reload(tmp_path):
    from transformers import CLIPTokenizer

    load_clip_tokenizer("!").save_pretrained(tmp_path)
    reloaded = CLIPTokenizer.from_pretrained(tmp_path)
    assert len(reloaded) == 49408 and reloaded.pad_token == "!" and reloaded.model_max_length == 77
    assert reloaded("a photo of a cat").input_ids == [BOS, 320, 1125, 539, 320, 2368, EOS]
