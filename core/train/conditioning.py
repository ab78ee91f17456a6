"""Text-encoder states for a batch of captions: encoded each step, or looked up in a cache.

With `cache_text_encoder_outputs` every caption the run can produce is encoded once before
training (captions are then static: no shuffling, no tag dropout, a frozen text encoder; caption
dropout only adds the empty caption), and the text encoder can leave the GPU.
"""
from __future__ import annotations

import random
from contextlib import nullcontext

import torch

from core.models.text import encode_prompts, encode_prompts_sdxl, process_caption, tokenize_prompts


def static_captions(raw_captions: list[str], caption_prefix: str, caption_suffix: str,
                    with_empty: bool) -> list[str]:
    """Every caption a run with static captions trains on (sorted, unique), given the raw ones."""
    captions = {process_caption(text, False, 0, random.Random(0), caption_prefix=caption_prefix,
                                caption_suffix=caption_suffix) for text in raw_captions}
    if with_empty:
        captions.add("")
    return sorted(captions)


class PromptEncoder:
    """Captions -> (encoder states, pooled state or None) on `device`, as `settings` (PromptSettings:
    clip_skip, max_token_length) say.

    SD 1.x / 2.x: one text encoder at clip_skip, no pooled state. SDXL: both encoders as in
    core.models.text.encode_prompts_sdxl (clip_skip does not apply, as in kohya). `text_encoders`:
    the modules to run (default: the model's; the accelerate-wrapped ones while they train);
    `trains`: gradients on; `cache`: the states of every caption, from `with_cache` (then the text
    encoders are not run)."""

    def __init__(self, model, settings, device, *, text_encoders: list | None = None, trains: bool = False,
                 cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] | None = None):
        self.sdxl = model.arch == "sdxl"
        self.tokenizers = [model.tokenizer, model.tokenizer_2] if self.sdxl else [model.tokenizer]
        self.text_encoders = text_encoders or ([model.text_encoder, model.text_encoder_2] if self.sdxl
                                               else [model.text_encoder])
        self.clip_skip, self.max_token_length, self.device = settings.clip_skip, settings.max_token_length, device
        self.trains, self.cache = trains, cache
        self._model, self._settings = model, settings

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """States from the text encoder(s) (no gradients unless they train)."""
        ids = [tokenize_prompts(tokenizer, captions, self.max_token_length) for tokenizer in self.tokenizers]
        with nullcontext() if self.trains else torch.no_grad():
            if self.sdxl:
                states, pooled = encode_prompts_sdxl(self.text_encoders, ids)
                return states.to(self.device), pooled.to(self.device)
            return encode_prompts(self.text_encoders[0], ids[0], self.clip_skip).to(self.device), None

    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.cache is None:
            return self.encode(captions)
        missing = [c for c in captions if c not in self.cache]
        if missing:
            raise KeyError(f"caption not in the text-encoder cache: {missing[0]!r}")
        states, pooled = zip(*(self.cache[c] for c in captions))
        return (torch.stack(states).to(self.device),
                torch.stack(pooled).to(self.device) if self.sdxl else None)

    def with_cache(self, captions: list[str], dtype: torch.dtype, batch_size: int = 16, ctx=None) -> PromptEncoder:
        """An encoder like this one that serves `captions` from a cache, encoded once now and kept on
        the CPU in `dtype`."""
        cache = {}
        for start in range(0, len(captions), batch_size):
            chunk = captions[start:start + batch_size]
            states, pooled = self.encode(chunk)
            states = states.to("cpu", dtype)
            pooled = pooled.to("cpu", dtype) if pooled is not None else [None] * len(chunk)
            cache.update(zip(chunk, zip(states, pooled)))
            if ctx is not None:
                ctx.check_stop()
        return PromptEncoder(self._model, self._settings, self.device, text_encoders=self.text_encoders,
                             trains=self.trains, cache=cache)

    def running(self, text_encoders: list, trains: bool) -> PromptEncoder:
        """An encoder with the same settings and cache that runs `text_encoders` (gradients on with `trains`)."""
        return PromptEncoder(self._model, self._settings, self.device, text_encoders=text_encoders, trains=trains,
                             cache=self.cache)
