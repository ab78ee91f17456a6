"""Caption shuffling, 75-token chunking and chunked encoding behave as kohya sd-scripts'."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import random  # noqa: E402
from collections import Counter  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from core.models.text import encode_prompts, final_layer_norm, process_caption, tokenize_prompts  # noqa: E402
from core.models.tokenizer import load_clip_tokenizer  # noqa: E402

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


# ---- caption options: dropout, tag dropout, prefix/suffix, keep_tokens_separator -------------

def kohya_caption(caption, shuffle=False, keep=0, dropout=0.0, tag_dropout=0.0, prefix="", suffix="", sep=""):
    """kohya's BaseDataset.process_caption (single-line captions, no wildcards, warm-up or
    secondary separator), on the process-wide `random` as kohya draws: the reference."""
    if prefix:
        caption = prefix + " " + caption
    if suffix:
        caption = caption + " " + suffix
    if dropout > 0 and random.random() < dropout:
        return ""
    if not (shuffle or tag_dropout > 0):
        return caption
    fixed, flex, end = [], [], []
    if sep and sep in caption:
        head, rest = caption.split(sep, 1)
        if sep in rest:
            rest, tail = rest.split(sep, 1)
            end = [t.strip() for t in tail.split(",") if t.strip()]
        fixed = [t.strip() for t in head.split(",") if t.strip()]
        flex = [t.strip() for t in rest.split(",") if t.strip()]
    else:
        tokens = [t.strip() for t in caption.strip().split(",")]
        flex = tokens[:]
        if keep > 0:
            fixed, flex = tokens[:keep], tokens[keep:]
    if shuffle:
        random.shuffle(flex)
    if tag_dropout > 0:
        flex = [t for t in flex if random.random() >= tag_dropout]
    return ", ".join(fixed + flex + end)


def caption_with(caption, seed, shuffle=False, keep=0, dropout=0.0, tag_dropout=0.0, prefix="",
                 suffix="", sep=""):
    return process_caption(caption, shuffle, keep, random.Random(seed), caption_dropout_rate=dropout,
                           caption_tag_dropout_rate=tag_dropout, caption_prefix=prefix,
                           caption_suffix=suffix, keep_tokens_separator=sep)


SEP_TAGS = "masterpiece, 1girl ||| long hair, blue eyes,, smile, sky ||| by artist, 2024"
OPTIONS = [dict(shuffle=True, keep=1), dict(dropout=0.3), dict(tag_dropout=0.4, keep=2),
           dict(shuffle=True, keep=1, dropout=0.5, tag_dropout=0.3, prefix="pre", suffix="suf"),
           dict(shuffle=True, keep=3, sep="|||", tag_dropout=0.25),
           dict(sep="|||", prefix="pre", suffix="suf"), dict(sep="|||", dropout=0.5, tag_dropout=0.5)]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_caption_options_match_kohya_draw_for_draw(options):
    for caption in (TAGS, SEP_TAGS, "a,, b ,", "one sentence. no tags"):
        for seed in range(25):
            random.seed(seed)
            expected = kohya_caption(caption, **options)
            rng = random.Random(seed)
            assert process_caption(caption, options.get("shuffle", False), options.get("keep", 0), rng,
                                   caption_dropout_rate=options.get("dropout", 0.0),
                                   caption_tag_dropout_rate=options.get("tag_dropout", 0.0),
                                   caption_prefix=options.get("prefix", ""),
                                   caption_suffix=options.get("suffix", ""),
                                   keep_tokens_separator=options.get("sep", "")) == expected
            assert rng.random() == random.random()  # same number of draws as kohya


def test_defaults_are_todays_behaviour_and_draw_nothing_extra():
    for caption in (TAGS, SEP_TAGS):
        for shuffle, keep in ((False, 0), (True, 1)):
            a, b = random.Random(5), random.Random(5)
            explicit = process_caption(caption, shuffle, keep, b, caption_dropout_rate=0.0,
                                       caption_tag_dropout_rate=0.0, caption_prefix="",
                                       caption_suffix="", keep_tokens_separator="")
            assert process_caption(caption, shuffle, keep, a) == explicit
            assert a.random() == b.random()
    rng = random.Random(9)
    process_caption(TAGS, False, 0, rng, caption_dropout_rate=0.0)
    assert rng.random() == random.Random(9).random()  # rate 0: no draw


def test_caption_dropout_extremes():
    for seed in range(30):
        assert caption_with(TAGS, seed, dropout=0.0) == TAGS
        assert caption_with(TAGS, seed, dropout=1.0, shuffle=True, prefix="pre", suffix="suf") == ""
    # Random(0).random() = 0.844..: kept at 0.8, dropped at 0.9
    assert caption_with("a, b", 0, dropout=0.8) == "a, b"
    assert caption_with("a, b", 0, dropout=0.9) == ""
    dropped = sum(caption_with(TAGS, seed, dropout=0.25) == "" for seed in range(2000))
    assert 400 < dropped < 600


def test_tag_dropout_exact_and_keeps_the_kept_tags():
    # Random(0) draws 0.844, 0.758, 0.421, 0.259: b, c survive, d and e are dropped at 0.5
    assert caption_with("a, b, c, d, e", 0, keep=1, tag_dropout=0.5) == "a, b, c"
    # without shuffle_caption the tags are still split, stripped and re-joined
    assert caption_with(" a ,b,c ", 0, tag_dropout=0.1) == "a, b, c"
    for seed in range(20):
        assert caption_with(TAGS, seed, keep=2, tag_dropout=1.0) == "1girl, solo"
        assert caption_with(TAGS, seed, keep=2, shuffle=True, tag_dropout=1.0) == "1girl, solo"
        assert caption_with(SEP_TAGS, seed, keep=5, tag_dropout=1.0, sep="|||") == \
            "masterpiece, 1girl, by artist, 2024"
        assert caption_with(TAGS, seed, tag_dropout=1.0) == ""
        assert caption_with(TAGS, seed, keep=2, tag_dropout=0.0) == TAGS  # nothing to do: untouched
    tags = [t.strip() for t in TAGS.split(",")]
    for seed in range(20):  # dropping keeps the order of the survivors
        out = caption_with(TAGS, seed, keep=1, tag_dropout=0.5).split(", ")
        assert out[0] == "1girl" and out == [t for t in tags if t in out]


def test_keep_tokens_separator_like_kohya():
    for seed in range(20):
        out = caption_with(SEP_TAGS, seed, shuffle=True, keep=4, sep="|||").split(", ")
        assert out[:2] == ["masterpiece", "1girl"]  # keep_tokens is ignored when the separator is there
        assert out[-2:] == ["by artist", "2024"]
        assert sorted(out[2:-2]) == sorted(["long hair", "blue eyes", "smile", "sky"])  # empty tag gone
    one = "a, b ||| c, d, e"
    assert {tuple(caption_with(one, s, shuffle=True, sep="|||").split(", ")[:2]) for s in range(10)} == {("a", "b")}
    # no shuffle, no tag dropout: kohya leaves the caption, separators included, as it is
    assert caption_with(SEP_TAGS, 0, sep="|||") == SEP_TAGS
    # a caption without the separator falls back to keep_tokens
    assert caption_with("x, y, z", 0, shuffle=True, keep=1, sep="|||").startswith("x, ")
    # separator exactly: Random(1) shuffles [c, d, e] to [e, c, d] (checked against random.shuffle)
    flex = ["c", "d", "e"]
    random.Random(1).shuffle(flex)
    assert caption_with("a ||| c, d, e ||| z", 1, shuffle=True, sep="|||") == ", ".join(["a", *flex, "z"])


def test_prefix_and_suffix_are_glued_on_before_shuffling_like_kohya():
    assert caption_with("a, b, c", 0, prefix="pre", suffix="suf") == "pre a, b, c suf"
    assert caption_with("", 0, prefix="pre") == "pre "  # kohya joins with a space regardless
    for seed in range(20):
        out = caption_with("a, b, c", seed, shuffle=True, keep=1, prefix="pre", suffix="suf").split(", ")
        assert out[0] == "pre a" and sorted(out[1:]) == ["b", "c suf"]  # the suffix moves with "c"
        out = caption_with("a ||| b, c ||| d", seed, shuffle=True, sep="|||", prefix="pre", suffix="suf")
        assert out.startswith("pre a, ") and out.endswith(", d suf")
    # prefix first, then dropout: a dropped caption loses its prefix too
    assert caption_with("a", 0, prefix="pre", dropout=1.0) == ""
    # tag dropout happens after the prefix is glued on: "pre a" is one tag and can be dropped
    assert caption_with("a, b", 0, prefix="pre", tag_dropout=1.0) == ""


def test_composition_order_dropout_then_shuffle_then_tag_dropout():
    # One draw for caption dropout comes first, then the shuffle, then one draw per flexible tag.
    caption = "k, a, b, c, d"
    for seed in range(20):
        rng = random.Random(seed)
        dropped = rng.random() < 0.5
        flex = ["a", "b", "c", "d"]
        rng.shuffle(flex)
        flex = [t for t in flex if rng.random() >= 0.5]
        expected = "" if dropped else ", ".join(["k", *flex])
        assert caption_with(caption, seed, shuffle=True, keep=1, dropout=0.5, tag_dropout=0.5) == expected


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
