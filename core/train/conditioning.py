"""Text-encoder states for a batch of captions: encoded each step, or looked up in a cache.

With `cache_text_encoder_outputs` every caption the run can produce is encoded once before
training (captions are then static: no shuffling, no tag dropout, a frozen text encoder; caption
dropout only adds the empty caption), and the text encoder can leave the GPU.
"""
from __future__ import annotations

import random
from contextlib import nullcontext

import torch

from core.text import encode_prompts, process_caption, tokenize_prompts


def static_captions(raw_captions: list[str], caption_prefix: str, caption_suffix: str,
                    with_empty: bool) -> list[str]:
    """Every caption a run with static captions trains on (sorted, unique), given the raw ones."""
    captions = {process_caption(text, False, 0, random.Random(0), caption_prefix=caption_prefix,
                                caption_suffix=caption_suffix) for text in raw_captions}
    if with_empty:
        captions.add("")
    return sorted(captions)


class PromptEncoder:
    """Captions -> encoder states on `device`. `text_encoder` is the module to run (the
    accelerate-wrapped one while it trains); `trains` turns gradients on for it."""

    def __init__(self, tokenizer, text_encoder, clip_skip: int, max_token_length: int, device):
        self.tokenizer, self.text_encoder = tokenizer, text_encoder
        self.clip_skip, self.max_token_length, self.device = clip_skip, max_token_length, device
        self.trains = False
        self.cache: dict[str, torch.Tensor] | None = None

    def encode(self, captions: list[str]) -> torch.Tensor:
        """States from the text encoder (no gradients unless it trains)."""
        ids = tokenize_prompts(self.tokenizer, captions, self.max_token_length)
        with nullcontext() if self.trains else torch.no_grad():
            return encode_prompts(self.text_encoder, ids, self.clip_skip).to(self.device)

    def __call__(self, captions: list[str]) -> torch.Tensor:
        if self.cache is None:
            return self.encode(captions)
        missing = [c for c in captions if c not in self.cache]
        if missing:
            raise KeyError(f"caption not in the text-encoder cache: {missing[0]!r}")
        return torch.stack([self.cache[c] for c in captions]).to(self.device)

    def fill_cache(self, captions: list[str], dtype: torch.dtype, batch_size: int = 16, ctx=None) -> None:
        """Encode `captions` once, kept on the CPU in `dtype`."""
        cache = {}
        for start in range(0, len(captions), batch_size):
            chunk = captions[start:start + batch_size]
            states = self.encode(chunk).to("cpu", dtype)
            cache.update(zip(chunk, states))
            if ctx is not None:
                ctx.check_stop()
        self.cache = cache
