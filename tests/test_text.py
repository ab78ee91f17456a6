"""Caption shuffling, 75-token chunking and chunked encoding behave as kohya sd-scripts'."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import random  # noqa: E402
from collections import Counter  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from core.text import encode_prompts, final_layer_norm, process_caption, tokenize_prompts  # noqa: E402
from core.tokenizer import load_clip_tokenizer  # noqa: E402

BOS, EOS, BANG = 49406, 49407, 0  # "!" is SD2's pad token, id 0
TAGS = "1girl, solo,  long hair ,blue eyes, smile,   outdoors, sky, tree, dress, hat"


# ---- process_caption -------------------------------------------------------------------------

def test_no_shuffle_returns_the_caption_untouched():
    rng = random.Random(0)
    for caption in (TAGS, "  a ,b,, c ,  ", "one sentence. no tags"):
        for keep in (0, 2):
            assert process_caption(caption, False, keep, rng) == caption


def test_shuffle_keeps_the_first_tags_and_the_multiset():
    tags = [t.strip() for t in TAGS.split(",")]
    orders = set()
    for seed in range(20):
        out = process_caption(TAGS, True, 2, random.Random(seed)).split(", ")
        assert out[:2] == ["1girl", "solo"]
        assert Counter(out) == Counter(tags)
        orders.add(tuple(out[2:]))
    assert len(orders) > 10  # really shuffled


def test_shuffle_is_reproducible_and_draws_like_kohyas_global_random():
    first = process_caption(TAGS, True, 1, random.Random(42))
    assert first == process_caption(TAGS, True, 1, random.Random(42))
    # kohya: random.shuffle(flex_tokens) on the process-wide generator seeded the same way
    flex = [t.strip() for t in TAGS.split(",")][1:]
    random.seed(42)
    random.shuffle(flex)
    assert first == ", ".join(["1girl"] + flex)
    assert first != process_caption(TAGS, True, 1, random.Random(43))


def test_shuffle_normalises_whitespace_and_keeps_empty_tags_like_kohya():
    out = process_caption("  a ,b,, c ,  ", True, 0, random.Random(1)).split(", ")
    assert Counter(out) == Counter(["a", "b", "", "c", ""])
    assert process_caption("  x ,  y  ", True, 5, random.Random(1)) == "x, y"  # all kept: order fixed
    assert process_caption("  only tag  ", True, 0, random.Random(1)) == "only tag"


def test_keep_tokens_zero_moves_the_first_tag():
    firsts = {process_caption(TAGS, True, 0, random.Random(s)).split(", ")[0] for s in range(20)}
    assert len(firsts) > 3


# ---- tokenize_prompts ------------------------------------------------------------------------

def single_token_words(tokenizer, n: int) -> list[str]:
    """n distinct words that each tokenize to exactly one id (so a text of k words is k ids)."""
    candidates = [t[:-4] for t in tokenizer.get_vocab()
                  if t.endswith("</w>") and t[:-4].isalpha() and t[:-4].islower() and len(t) > 7]
    candidates = sorted(candidates)[:4 * n]
    ids = tokenizer(candidates, add_special_tokens=False).input_ids
    words = [w for w, i in zip(candidates, ids) if len(i) == 1][:n]
    assert len(words) == n
    return words


@pytest.fixture(scope="module")
def words():
    return single_token_words(load_clip_tokenizer(), 260)


def body_of(tokenizer, text: str) -> list[int]:
    """The ids of `text` without BOS/EOS, untruncated."""
    ids = tokenizer(text).input_ids
    assert ids[0] == BOS and ids[-1] == EOS
    return ids[1:-1]


@pytest.mark.parametrize("pad_token", ["<|endoftext|>", "!"])
def test_225_token_prompt_fills_three_chunks(words, pad_token):
    tok = load_clip_tokenizer(pad_token)
    text = " ".join(words[:250])  # longer than 225: truncated, EOS kept at the very end
    body = body_of(tok, text)
    assert len(body) == 250
    ids = tokenize_prompts(tok, [text], 225)
    assert ids.shape == (1, 3, 77) and ids.dtype == torch.long
    expected = [[BOS] + body[0:75] + [EOS], [BOS] + body[75:150] + [EOS], [BOS] + body[150:225] + [EOS]]
    assert ids[0].tolist() == expected


def test_sd1_chunks_pad_with_eos(words):
    tok = load_clip_tokenizer()
    text = " ".join(words[:100])
    body = body_of(tok, text)
    ids = tokenize_prompts(tok, [text], 225)
    assert ids[0].tolist() == [
        [BOS] + body[0:75] + [EOS],
        [BOS] + body[75:100] + [EOS] * 51,
        [BOS] + [EOS] * 76,
    ]


def test_sd2_chunks_end_text_with_eos_and_open_empty_chunks_with_eos(words):
    tok = load_clip_tokenizer("!")
    assert tok.pad_token_id == BANG
    text = " ".join(words[:100])
    body = body_of(tok, text)
    ids = tokenize_prompts(tok, [text], 225)
    assert ids[0].tolist() == [
        [BOS] + body[0:75] + [EOS],  # last id was pad: text at 75 makes it EOS
        [BOS] + body[75:100] + [EOS] + [BANG] * 50,
        [BOS, EOS] + [BANG] * 75,  # empty chunk: BOS pad ... -> BOS EOS pad ...
    ]


def test_sd2_prompt_of_exactly_75_tokens(words):
    tok = load_clip_tokenizer("!")
    text = " ".join(words[:75])
    body = body_of(tok, text)
    ids = tokenize_prompts(tok, [text], 150)
    assert ids[0].tolist() == [[BOS] + body + [EOS], [BOS, EOS] + [BANG] * 75]


@pytest.mark.parametrize("pad_token, pad_id", [("<|endoftext|>", EOS), ("!", BANG)])
def test_short_prompt_one_chunk_and_batching(words, pad_token, pad_id):
    tok = load_clip_tokenizer(pad_token)
    short, long_ = "a photo of a cat", " ".join(words[:230])
    ids = tokenize_prompts(tok, [short, long_], 75)
    assert ids.shape == (2, 1, 77)
    assert ids[0, 0].tolist() == [BOS, 320, 1125, 539, 320, 2368, EOS] + [pad_id] * 70
    assert ids[1, 0].tolist() == [BOS] + body_of(tok, long_)[:75] + [EOS]
    batch = tokenize_prompts(tok, [short, long_], 150)
    for row, caption in enumerate([short, long_]):
        assert torch.equal(batch[row], tokenize_prompts(tok, [caption], 150)[0])
    assert tokenize_prompts(tok, [short], None).shape == (1, 1, 77)


@pytest.mark.parametrize("bad", [0, 77, 100, -75])
def test_bad_max_token_length(bad):
    with pytest.raises(ValueError, match="max_token_length"):
        tokenize_prompts(load_clip_tokenizer(), ["x"], bad)


# ---- encode_prompts --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = CLIPTextConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                            num_hidden_layers=3, vocab_size=49408, max_position_embeddings=77)
    return CLIPTextModel(config).eval()


def last_states(encoder, ids: torch.Tensor) -> torch.Tensor:
    return encoder(ids).last_hidden_state


@torch.no_grad()
def test_one_chunk_clip_skip_1_is_the_last_hidden_state(encoder):
    ids = tokenize_prompts(load_clip_tokenizer(), ["a photo of a cat", "blue sky, tree"], 75)
    out = encode_prompts(encoder, ids, 1)
    assert out.shape == (2, 77, 32)
    torch.testing.assert_close(out, last_states(encoder, ids[:, 0]), rtol=0, atol=0)
    torch.testing.assert_close(encode_prompts(encoder, ids, None), out, rtol=0, atol=0)
    hidden = encoder(ids[:, 0], output_hidden_states=True).hidden_states  # kohya's clip_skip 1 path
    torch.testing.assert_close(out, final_layer_norm(encoder)(hidden[-1]), rtol=0, atol=0)


@torch.no_grad()
def test_clip_skip_2_is_the_normed_penultimate_layer(encoder):
    ids = tokenize_prompts(load_clip_tokenizer(), ["a photo of a cat"], 75)
    out = encode_prompts(encoder, ids, 2)
    hidden = encoder(ids[:, 0], output_hidden_states=True).hidden_states
    expected = final_layer_norm(encoder)(hidden[-2])
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert not torch.allclose(out, encode_prompts(encoder, ids, 1))
    assert not torch.allclose(out, encode_prompts(encoder, ids, 3))
    with pytest.raises(ValueError, match="clip_skip 4"):
        encode_prompts(encoder, ids, 4)


@pytest.mark.parametrize("pad_token", ["<|endoftext|>", "!"])
@pytest.mark.parametrize("clip_skip", [1, 2])
@torch.no_grad()
def test_chunks_concatenate_as_kohya(encoder, words, pad_token, clip_skip):
    ids = tokenize_prompts(load_clip_tokenizer(pad_token), [" ".join(words[:100]), "cat"], 225)
    out = encode_prompts(encoder, ids, clip_skip)
    assert out.shape == (2, 227, 32)

    def states(chunk):
        if clip_skip == 1:
            return last_states(encoder, chunk)
        hidden = encoder(chunk, output_hidden_states=True).hidden_states[-clip_skip]
        return final_layer_norm(encoder)(hidden)

    per_chunk = [states(ids[:, k]) for k in range(3)]
    expected = torch.cat([per_chunk[0][:, :1]] + [s[:, 1:76] for s in per_chunk]
                         + [per_chunk[2][:, 76:]], dim=1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    # the empty third chunk's EOS state stays (kohya's SD2 copy-the-pad fix never fires)
    torch.testing.assert_close(out[:, 151], per_chunk[2][:, 1], rtol=0, atol=1e-6)


@torch.no_grad()
def test_follows_the_encoders_dtype(encoder):
    import copy

    double = copy.deepcopy(encoder).double()
    ids = tokenize_prompts(load_clip_tokenizer(), ["a photo of a cat"], 150)
    out = encode_prompts(double, ids.int(), 2)
    assert out.dtype == torch.float64 and out.shape == (1, 152, 32)
    torch.testing.assert_close(out.float(), encode_prompts(encoder, ids, 2), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="input_ids"):
        encode_prompts(encoder, ids[:, 0], 1)
