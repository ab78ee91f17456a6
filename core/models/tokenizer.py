"""The CLIP tokenizer of every Stable Diffusion text encoder, built offline from shipped data.

The vocabulary is constructed the way CLIP's `simple_tokenizer.py` does it from the BPE merges
list in `core/data/clip/` (see the LICENSE there): the 256 byte symbols, the same with the
end-of-word marker `</w>`, one token per merge, then `<|startoftext|>` and `<|endoftext|>`.
The result equals openai/clip-vit-large-patch14's tokenizer (SD 1.x, SDXL's first encoder);
SD 2.x and SDXL's second encoder use the same vocabulary with `!` as pad token.
"""
from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

BPE_PATH = Path(__file__).resolve().parent.parent / "data" / "clip" / "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2
MODEL_MAX_LENGTH = 77
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible map from bytes to printable unicode characters."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


@lru_cache(maxsize=1)
def clip_merges() -> tuple[tuple[str, str], ...]:
    """The merges CLIP uses: lines 1..48894 of the shipped file (line 0 is a version header)."""
    with gzip.open(BPE_PATH, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")[1:NUM_MERGES + 1]
    return tuple(tuple(line.split()) for line in lines)


@lru_cache(maxsize=1)
def clip_vocab() -> dict[str, int]:
    """Token -> id for the 49408-token CLIP vocabulary."""
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(pair) for pair in clip_merges()]
    tokens += [BOS, EOS]
    return {token: i for i, token in enumerate(tokens)}


def load_clip_tokenizer(pad_token: str = EOS):
    """A transformers CLIPTokenizer equal to SD's, with `pad_token` ("!" for SD2/SDXL's second).

    Cached: the same object is returned for the same pad token, so do not mutate it.
    """
    return _build_tokenizer(pad_token)


@lru_cache(maxsize=4)
def _build_tokenizer(pad_token: str):
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=dict(clip_vocab()), merges=list(clip_merges()),
                         pad_token=pad_token, model_max_length=MODEL_MAX_LENGTH)
